"""Standby-aware placement (contract section 11): a partition whose owner left the group goes to
the worker keeping its warm standby copy, which takes it over without a rebuild.

Pure: the group leader's assignor (faust_ext/assignor.py) applies ``place`` to the assignment
Faust's co-partitioned assignor proposes. Standby copies sit where ``standby.holders`` puts
them, computed by every worker from the previous assignment, so the leader knows where they
are without asking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from streams.runtime.standby import holders


def takeovers(previous: Mapping[str, Iterable[int]], members: Iterable[str],
              replicas: int) -> dict[int, str]:
    """Partition -> the member to take it over: for each partition whose previous owner is not
    among ``members``, the first of the workers that kept its standby copy that still is.
    ``previous``: every worker of the previous assignment (URL) -> its partitions."""
    present = set(members)
    placed = holders(previous, replicas)
    out: dict[int, str] = {}
    for url, partitions in previous.items():
        if url in present:
            continue
        for p in partitions:
            holder = next((h for h in placed.get(p, []) if h in present), None)
            if holder is not None:
                out[p] = holder
    return out


def place(proposed: Mapping[str, Iterable[int]], previous: Mapping[str, Iterable[int]],
          replicas: int) -> dict[str, set[int]]:
    """``proposed`` (member URL -> its partitions, every partition once) with each partition of
    a departed owner moved to the holder of its copy (``takeovers``). A holder that ends up
    above the balanced share (ceil(partitions / members)) gives the member it took the
    partition from one of its own in exchange: one that is new to it (a rebuild there as
    anywhere), else its highest; never one it takes over."""
    result = {url: set(partitions) for url, partitions in proposed.items()}
    if not result:
        return result
    owner = {p: url for url, partitions in result.items() for p in partitions}
    limit = math.ceil(len(owner) / len(result))
    moves = takeovers(previous, result, replicas)
    before = {url: set(partitions) for url, partitions in previous.items()}
    for p, holder in sorted(moves.items()):
        giver = owner.get(p)
        if giver is None or giver == holder:
            continue
        result[giver].discard(p)
        result[holder].add(p)
        owner[p] = holder
        if len(result[holder]) > limit:
            taken = {q for q, h in moves.items() if h == holder}
            spare = result[holder] - taken
            new = spare - before.get(holder, set())
            if not spare:
                continue
            q = max(new or spare)
            result[holder].discard(q)
            result[giver].add(q)
            owner[q] = giver
    return result
