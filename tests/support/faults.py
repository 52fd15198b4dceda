"""Helpers of the fault-injection tests (tests/integration/test_faults.py): hostile input
records, a program renamer for a "frozen" data set, HTTP load clients that classify every
answer, and an RSS sampler."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from streams.codec.keys import family_key
from streams.tools.produce import Record
from tests.support.harness import Worker, rss, walk_pages
from tests.support.oracle import THRESHOLDS, TYPES, Oracle


def rename_program(records: Iterable[Record], program: str) -> list[Record]:
    """The valid ``records`` with every program_id replaced by ``program`` (and re-keyed by
    segment family), e.g. to load a data set that nothing else writes to."""
    out = []
    for r in records:
        if not r.valid:
            continue
        doc = orjson.loads(r.value)
        doc["program_id"] = program
        key = family_key((program, doc["segment_basis"], doc["basis_id"], doc["action_type"]))
        out.append(Record(key, orjson.dumps(doc), r.timestamp_ms, True))
    return out


HUGE = 880_000  # bytes of a huge string: under the broker's ~1 MB message limit with the rest


def nasty_records(rng: random.Random, samples: list[dict[str, Any]], n: int, *,
                  huge: int = 12, base_ts: int) -> list[Record]:
    """``n`` hostile records (about a tenth of them valid edge cases) built from ``samples`` (valid
    event documents). Invalid ones: random bytes, truncated JSON, wrong types, NaN/Infinity,
    out-of-range numbers, over-long and ``huge`` ~900 KB strings, deep nesting, bad UTF-8.
    Valid ones: boundary lengths, unicode, extra (even huge) ignored fields, integer and
    subnormal weights, weights one ulp around the thresholds."""

    def doc() -> dict[str, Any]:
        d = dict(rng.choice(samples))
        d["ts"] = base_ts + rng.randrange(1_000_000)
        return d

    def dumps(d: dict[str, Any]) -> bytes:
        return orjson.dumps(d)

    def raw_with(field_name: str, literal: bytes) -> bytes:
        d = doc()
        d[field_name] = "@@X@@"
        return dumps(d).replace(b'"@@X@@"', literal, 1)

    def without(name: str) -> bytes:
        return dumps({k: v for k, v in doc().items() if k != name})

    def valid(d: dict[str, Any]) -> tuple[bytes, bool]:
        return dumps(d), True

    invalid_makers: list[Callable[[], bytes]] = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
        lambda: dumps(doc())[: rng.randint(1, 60)],
        lambda: b"{" * rng.randint(1, 10),
        lambda: b"[" * 5000 + b"]" * 5000,
        lambda: b'{"a":' * 3000 + b"1" + b"}" * 3000,
        lambda: b"\xef\xbb\xbf" + dumps(doc()),  # a BOM is not JSON
        lambda: dumps(doc()).replace(b'"', b"'"),
        lambda: dumps(doc())[:-1] + b",}",
        lambda: dumps(doc()) + b"garbage",
        lambda: dumps(doc()) + dumps(doc()),
        lambda: b"\x00" * rng.randint(1, 50),
        lambda: b'"\\ud800"',
        lambda: raw_with("user_id", b'"\\ud800"'),
        lambda: raw_with("weight", b"NaN"),
        lambda: raw_with("weight", b"-Infinity"),
        lambda: raw_with("weight", b"1e400"),
        lambda: raw_with("weight", b"1.0000000000000002"),
        lambda: raw_with("weight", b"-1e-300"),
        lambda: raw_with("weight", b'"NaN"'),
        lambda: raw_with("weight", b"[0.5]"),
        lambda: raw_with("weight", b"{}"),
        lambda: raw_with("in_history", b"null"),
        lambda: raw_with("in_history", b"0"),
        lambda: raw_with("ts", b"18446744073709551616"),  # parses as a float: not an integer
        lambda: raw_with("ts", b"1e3"),
        lambda: raw_with("ts", b"true"),
        lambda: raw_with("program_id", b"7"),
        lambda: raw_with("user_id", b"[]"),
        lambda: raw_with("segment_basis", b'"LABEL"'),
        lambda: raw_with("name", b"17"),
        lambda: dumps({**doc(), "program_id": "p" * 129}),
        lambda: dumps({**doc(), "user_id": "é" * 257}),
        lambda: dumps({**doc(), "action_type": "a" * 65}),
        lambda: without(rng.choice(["program_id", "user_id", "segment_basis", "basis_id",
                                    "action_type", "weight", "in_history"])),
        lambda: dumps({"weight": 0.5}),
        lambda: b"{}",
        lambda: b"true",
        lambda: b"12345",
    ]
    huge_makers: list[Callable[[], bytes]] = [
        lambda: dumps({**doc(), "user_id": "u" * HUGE}),
        lambda: dumps({**doc(), "name": "n" * HUGE}),
        lambda: dumps({**doc(), "basis_id": "b" * HUGE}),
    ]

    def valid_edge() -> tuple[bytes, bool]:
        d = doc()
        kind = rng.randrange(9)
        if kind == 0:
            d["user_id"] = "ü" * 256
        elif kind == 1:
            d["name"] = "名前✓" * 170  # 510 characters
        elif kind == 2:
            d["padding"] = "x" * 200_000  # other fields are ignored, whatever their size
        elif kind == 3:
            d["weight"] = rng.choice([0, 1])  # integers are numbers
        elif kind == 4:
            d["weight"] = rng.choice([5e-324, 1e-300, math.nextafter(0.731, 0),
                                      math.nextafter(0.5, 0), math.nextafter(0.25, 1)])
        elif kind == 5:
            d["user_id"] = f"user \u0000 \U0001f600 {rng.randrange(100)}"
        elif kind == 6:
            d["extra"] = {"nested": [1, 2, {"deep": None}]}
        elif kind == 7:
            d.pop("name", None)  # name defaults to basis_id
        else:
            d["weight"] = None
        return valid(d)

    out: list[Record] = []
    for i in range(n):
        if i < huge:
            value, ok = rng.choice(huge_makers)(), False
        elif rng.random() < 0.1:
            value, ok = valid_edge()
        else:
            value, ok = rng.choice(invalid_makers)(), False
        key = None
        if ok:
            d = orjson.loads(value)
            key = family_key((d["program_id"], d["segment_basis"], d["basis_id"],
                              d["action_type"]))
        out.append(Record(key, value, base_ts + i, ok))
    return out


def interleave(rng: random.Random, main: list[Record], extra: list[Record]) -> list[Record]:
    """``extra`` spread at random positions through ``main`` (each list keeps its order)."""
    slots = sorted(rng.sample(range(len(main) + len(extra)), len(extra)))
    out: list[Record] = []
    it_main, it_extra = iter(main), iter(extra)
    taken = 0
    for pos in range(len(main) + len(extra)):
        if taken < len(slots) and slots[taken] == pos:
            out.append(next(it_extra))
            taken += 1
        else:
            out.append(next(it_main))
    return out


# -- HTTP load clients -----------------------------------------------------------------------

@dataclass
class LiveWorkers:
    """The workers a load client may ask, and which of them have answered at least once
    (a connection error is tolerated only before that: right at a worker's startup)."""

    workers: list[Worker] = field(default_factory=list)
    established: set[int] = field(default_factory=set)  # ports

    def add(self, w: Worker) -> None:
        self.workers.append(w)

    def remove(self, w: Worker) -> None:
        self.workers = [x for x in self.workers if x.port != w.port]
        self.established.discard(w.port)

    def live(self, w: Worker) -> bool:
        return any(x.port == w.port for x in self.workers)


@dataclass
class LoadStats:
    statuses: Counter[int] = field(default_factory=Counter)
    startup_errors: int = 0
    ignored_errors: int = 0  # on workers that were being stopped
    triples: int = 0  # growth/base/discovery all 200 in a row
    exact_checks: int = 0  # answers compared exactly to the oracle
    live_identity_checked: int = 0
    live_identity_off: int = 0  # growth != base + discovery on a program still receiving input
    latencies: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def violate(self, msg: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(msg)


def check_rows_sane(rows: list[tuple[Any, ...]], m: float) -> str:
    for r in rows:
        if not (isinstance(r[5], int) and r[5] > 0):
            return f"user_count {r[5]!r} in {r}"
        if not (m - 1e-12 <= r[6] <= 1.0 + 1e-12):
            return f"strength {r[6]!r} outside [{m}, 1] in {r}"
    return ""


async def segment_poller(live: LiveWorkers, stats: LoadStats, stop: asyncio.Event, *,
                         frozen: dict[str, Oracle], streaming: list[str], seed: int,
                         pause_s: float = 0.05) -> None:
    """Loop until ``stop``: pick a live worker, a program, a basis and a threshold; GET the
    growth, base and discovery segments (force_refresh, all pages). Every answer must be a 200
    or a 503 with Retry-After; a connection error is a violation unless the worker has not
    answered yet since it started or is being stopped. When all three are 200:
    - a ``frozen`` program (no input arrives for it) must equal its oracle exactly (so also
      growth == base + discovery per segment);
    - a ``streaming`` program must have positive counts and strengths in [m, 1]; its
      growth == base + discovery identity is only counted (input moves between the calls)."""
    rng = random.Random(seed)
    programs = [*frozen, *streaming]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        turn = 0
        while not stop.is_set():
            if not live.workers:
                await asyncio.sleep(0.1)
                continue
            w = live.workers[turn % len(live.workers)]
            turn += 1
            program = rng.choice(programs)
            basis = rng.choice(("label", "asset"))
            m = rng.choice(THRESHOLDS)
            answers: dict[str, list[tuple[Any, ...]]] = {}
            for t in TYPES:
                started = time.monotonic()
                try:
                    ans = await walk_pages(session, w.url, program, t, basis, m)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if not live.live(w):
                        stats.ignored_errors += 1
                    elif w.port not in live.established:
                        stats.startup_errors += 1
                    else:
                        stats.violate(f"{w.port}: {exc!r} on {program}/{t}/{basis}/{m}")
                    await asyncio.sleep(0.2)
                    break
                stats.latencies.append(time.monotonic() - started)
                if live.live(w):
                    live.established.add(w.port)
                stats.statuses[ans.status] += 1
                if ans.status == 503:
                    if not ans.retry_after:
                        stats.violate(f"{w.port}: 503 without Retry-After: {ans.body}")
                    await asyncio.sleep(0.1)
                    break
                if ans.status != 200:
                    stats.violate(f"{w.port}: {ans.status} {ans.body} on "
                                  f"{program}/{t}/{basis}/{m}")
                    break
                problem = check_rows_sane(ans.rows, m)
                if problem:
                    stats.violate(f"{w.port} {program}/{t}/{basis}/{m}: {problem}")
                if program in frozen:
                    problem = exact_problem(ans.rows, frozen[program].segments(
                        program, t, basis, m))
                    stats.exact_checks += 1
                    if problem:
                        stats.violate(f"{w.port} {program}/{t}/{basis}/{m}: {problem}")
                answers[t] = ans.rows
            if len(answers) == 3:
                stats.triples += 1
                if program not in frozen:
                    stats.live_identity_checked += 1
                    if identity_problem(answers):
                        stats.live_identity_off += 1
            await asyncio.sleep(pause_s)


def exact_problem(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> str:
    if len(got) != len(want):
        return f"{len(got)} segments, oracle has {len(want)}"
    for g, w in zip(got, want, strict=True):
        if tuple(g[:6]) != tuple(w[:6]) or not math.isclose(g[6], w[6], rel_tol=1e-9):
            return f"{g} != {w}"
    return ""


def identity_problem(answers: dict[str, list[tuple[Any, ...]]]) -> str:
    """growth user_count == base + discovery for every family listed in growth."""
    def counts(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], int]:
        return {(r[2], r[3]): r[5] for r in rows}

    growth, base, disc = (counts(answers[t]) for t in TYPES)
    for fam, n in growth.items():
        if n != base.get(fam, 0) + disc.get(fam, 0):
            return f"{fam}: growth {n} != base {base.get(fam, 0)} + discovery {disc.get(fam, 0)}"
    return ""


@dataclass
class RssSampler:
    """Samples the RSS of the given workers every ``every_s`` seconds."""

    workers: list[Worker]
    every_s: float = 1.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, port, rss)

    _stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> RssSampler:
        """Sample in a background task until :meth:`stop`."""
        self._task = asyncio.create_task(self.run(self._stop))
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def run(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            for w in self.workers:
                value = rss(w)
                if value:
                    self.samples.append((time.monotonic() - started, w.port, value))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    def peak(self) -> int:
        return max((s[2] for s in self.samples), default=0)

    def at(self, fraction: float, port: int) -> int:
        """The sample of ``port`` nearest to ``fraction`` of the sampled period."""
        own = [s for s in self.samples if s[1] == port]
        if not own:
            return 0
        target = own[-1][0] * fraction
        return min(own, key=lambda s: abs(s[0] - target))[2]


def rss_summary(sampler: RssSampler) -> str:
    peaks: dict[int, int] = {}
    for _t, port, value in sampler.samples:
        peaks[port] = max(peaks.get(port, 0), value)
    per = ", ".join(f"{port}: {value / (1 << 20):.0f}" for port, value in sorted(peaks.items()))
    return f"RSS peak {sampler.peak() / (1 << 20):.0f} MB ({per})"
