"""Where standby copies go through rebalances: copies read again from offset 0 and partitions
rebuilt cold over a rolling restart beyond the session timeout (each worker leaves, then joins
again), for the copy placement in ``runtime/standby.py`` against the URL-successor placement it
replaced, and the copies each worker keeps.

    python benchmarks/bench_copy_placement.py [--workers 6] [--partitions 48] [--replicas 2]

A simulation, no broker: each rebalance keeps what present members owned and spreads the rest
to the least loaded (as Faust's sticky assignor does), then ``placement.place`` moves a departed
owner's partitions to their copies' holders, as the group leader does. A copy or an owner is
warm when that worker owned the partition or kept its copy before the rebalance.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from unittest import mock

from streams.runtime import placement
from streams.runtime.standby import holders

Holders = Callable[[Mapping[str, Iterable[int]], int], dict[int, list[str]]]


def url_successors(owners: Mapping[str, Iterable[int]], replicas: int) -> dict[int, list[str]]:
    """The placement before rendezvous: the members after the owner in URL order."""
    members = sorted(owners)
    out: dict[int, list[str]] = {}
    for i, url in enumerate(members):
        after = [members[(i + k) % len(members)] for k in range(1, min(len(members), replicas + 1))]
        for p in owners[url]:
            out[p] = after
    return out


def sticky(previous: Mapping[str, set[int]], members: list[str]) -> dict[str, set[int]]:
    result = {m: sorted(previous.get(m, ())) for m in members}
    loose = sorted(p for m, ps in previous.items() if m not in result for p in ps)
    total = sum(len(ps) for ps in previous.values())
    for m in members:
        while len(result[m]) > math.ceil(total / len(members)):
            loose.append(result[m].pop())
    for p in loose:
        min(result.values(), key=len).append(p)
    for m in members:  # a member that joins gets its share
        while len(result[m]) < total // len(members):
            result[m].append(max(result.values(), key=len).pop())
    return {m: set(ps) for m, ps in result.items()}


def rolling_restart(place_copies: Holders, workers: int, partitions: int,
                    replicas: int) -> tuple[int, int]:
    urls = [f"http://127.0.0.1:{8100 + i}" for i in range(workers)]
    owners = {u: set(range(i, partitions, workers)) for i, u in enumerate(urls)}
    copies_cold = rebuilt_cold = 0
    with mock.patch.object(placement, "holders", place_copies):
        for leaving in urls:
            for members in ([u for u in urls if u != leaving], urls):
                new = placement.place(sticky(owners, members), owners, replicas)
                before = place_copies(owners, replicas)
                owner = {p: u for u, ps in owners.items() for p in ps}

                def warm(p: int, url: str) -> bool:
                    return url == owner.get(p) or url in before.get(p, [])  # noqa: B023

                copies_cold += sum(not warm(p, u) for p, us in place_copies(new, replicas).items()
                                   for u in us)
                rebuilt_cold += sum(not warm(p, u) for u, ps in new.items() for p in ps)
                owners = new
    return copies_cold, rebuilt_cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    owners = {f"http://127.0.0.1:{8100 + i}": list(range(i, args.partitions, args.workers))
              for i in range(args.workers)}
    print(f"{args.workers} workers, {args.partitions} partitions, {args.replicas} copies; "
          f"a rolling restart ({2 * args.workers} rebalances)")
    for name, rule in (("url successors", url_successors), ("rendezvous, bounded", holders)):
        copies, rebuilt = rolling_restart(rule, args.workers, args.partitions, args.replicas)
        kept = Counter(u for us in rule(owners, args.replicas).values() for u in us)
        print(f"  {name:20} copies read from offset 0: {copies:4}  partitions rebuilt cold: "
              f"{rebuilt:3}  copies per worker: {min(kept.values())}-{max(kept.values())}")


if __name__ == "__main__":
    main()
