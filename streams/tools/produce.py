"""`segments produce`: a deterministic synthetic load of recommendation-weight events.

Realistic skew: Zipf-like popularity of labels and assets and of action types, many users,
several programs; updates of existing recommendations, removals (``weight: null``), history
flips, exact duplicates, out-of-order timestamps, events without ``ts`` (the record timestamp
counts), late events (an older event of a recommendation sent after a newer one, withdrawals
of recommendations never seen among them), and optionally a share of invalid records of every
kind the contract names. Records are keyed by segment family, so one family's events keep
their order in a partition.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streams.codec.exact import encode_exact
from streams.codec.keys import family_key

ACTIONS = ("view", "click", "purchase", "add_to_cart", "share")
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
EVENT_SPACING_MS = 10  # the generator's clock advances this much per event


def base_ts_ending_now(events: int) -> int:
    """A ``base_ts`` for ``generate`` whose last event is now: brokers reject record
    timestamps too far in the future (Kafka's log.message.timestamp.after.max.ms, one hour
    by default), and a run of 400,000 events 10 ms apart spans more than an hour."""
    return int(time.time() * 1000) - events * EVENT_SPACING_MS


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes | None
    value: bytes
    timestamp_ms: int
    valid: bool


def _zipf_cum(n: int, s: float = 1.1) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))


def _invalid_values(rng: random.Random, good: dict[str, object]) -> list[bytes]:
    """One example of every kind of invalid record (contract section 1)."""
    def with_(**changes: object) -> bytes:
        doc = dict(good)
        doc.update(changes)
        return orjson.dumps(doc)

    def without(field: str) -> bytes:
        return orjson.dumps({k: v for k, v in good.items() if k != field})

    raw = orjson.dumps(good)
    return [
        b"",
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))) + b"\xff",
        raw[: max(1, len(raw) // 2)],
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        raw.replace(b'"weight":', b'"weight":NaN,"w0":', 1),
        raw.replace(b'"weight":', b'"weight":Infinity,"w0":', 1),
        without("program_id"),
        without("user_id"),
        without("segment_basis"),
        without("basis_id"),
        without("action_type"),
        without("weight"),
        without("in_history"),
        with_(weight=1.5),
        with_(weight=-0.25),
        with_(weight="0.5"),
        with_(weight=True),
        with_(in_history="yes"),
        with_(in_history=1),
        with_(segment_basis="labels"),
        with_(program_id=""),
        with_(program_id="p" * 129),
        with_(user_id="u" * 257),
        with_(basis_id=""),
        with_(basis_id=12345),
        with_(name="n" * 513),
        with_(action_type=""),
        with_(action_type="a" * 65),
        with_(ts=1.5),
        with_(ts="1767225600000"),
        with_(user_id=None),
    ]


def generate(events: int, *, seed: int = 1, programs: int = 3, users: int = 2000,
             labels: int = 200, assets: int = 500, invalid_ratio: float = 0.0,
             duplicate_ratio: float = 0.02, out_of_order_ratio: float = 0.1,
             removal_ratio: float = 0.05, update_ratio: float = 0.35,
             no_ts_ratio: float = 0.05, late_ratio: float = 0.02,
             base_ts: int = BASE_TS) -> Iterator[Record]:
    """Yield ``events`` records (valid and, at ``invalid_ratio``, invalid); deterministic for
    a given seed and ``base_ts`` (epoch ms of the first event; events are 10 ms apart).

    At ``late_ratio``, an event is followed 1 to 200 records later by an older event (by up to
    5 s of ``ts``) of the same recommendation, which contract §2 ignores. Half of them start
    with a withdrawal of a recommendation never seen (a new user's), the other half with an
    update or withdrawal of an existing one."""
    rng = random.Random(seed)
    label_cum, asset_cum, action_cum = _zipf_cum(labels), _zipf_cum(assets), _zipf_cum(
        len(ACTIONS), 1.3)
    program_ids = [f"program-{i}" for i in range(programs)]
    existing: list[dict[str, object]] = []
    sent: deque[Record] = deque(maxlen=5000)  # duplicates are of recent records
    invalid_kinds: list[bytes] = []
    invalid_cycle = 0
    late: list[tuple[int, int, Record]] = []  # (due record index, tie-break, older record)
    unseen = 0

    def record(doc: dict[str, object], ts: int, clock: int, with_ts: bool = True) -> Record:
        out = dict(doc)
        if with_ts:
            out["ts"] = ts
            record_ts = clock
        else:
            out.pop("ts", None)
            record_ts = ts
        key = family_key((str(doc["program_id"]), str(doc["segment_basis"]),
                          str(doc["basis_id"]), str(doc["action_type"])))
        # Exact-size bytes: orjson's keep their whole working buffer (streams/codec/exact.py),
        # and tests keep millions of these records in a list.
        return Record(key, encode_exact(out), record_ts, True)

    def new_doc(user_id: str) -> dict[str, object]:
        basis = "label" if rng.random() < 0.7 else "asset"
        cum = label_cum if basis == "label" else asset_cum
        idx = rng.choices(range(len(cum)), cum_weights=cum)[0]
        return {
            "program_id": rng.choice(program_ids),
            "user_id": user_id,
            "segment_basis": basis,
            "basis_id": f"{basis[0]}{idx}",
            "name": f"{basis.title()} {idx}",
            "action_type": ACTIONS[rng.choices(range(len(ACTIONS)), cum_weights=action_cum)[0]],
            "weight": _weight(rng),
            "in_history": rng.random() < 0.4,
        }

    def remember(doc: dict[str, object]) -> None:
        if len(existing) < 500_000:
            existing.append(doc)
        else:  # bounded memory on endless runs: replace a random old one
            existing[rng.randrange(len(existing))] = doc

    for i in range(events):
        clock = base_ts + i * EVENT_SPACING_MS
        if late and late[0][0] <= i:
            rec = heapq.heappop(late)[2]
            sent.append(rec)
            yield rec
            continue
        if late_ratio and rng.random() < late_ratio:
            if not existing or rng.random() < 0.5:
                unseen += 1
                doc = new_doc(f"unseen-{seed}-{unseen}")
                first = dict(doc, weight=None)
                remember(doc)  # later updates may bring it back
            else:
                doc = dict(rng.choice(existing))
                first = dict(doc, weight=None if rng.random() < 0.3 else _weight(rng))
                doc["weight"] = _weight(rng)
            older = record(doc, clock - rng.randrange(1, 5000), clock)
            heapq.heappush(late, (i + rng.randint(1, 200), i, older))
            rec = record(first, clock, clock)
            sent.append(rec)
            yield rec
            continue
        if invalid_ratio and existing and rng.random() < invalid_ratio:
            if not invalid_kinds or invalid_cycle % len(invalid_kinds) == 0:
                invalid_kinds = _invalid_values(rng, rng.choice(existing))
            value = invalid_kinds[invalid_cycle % len(invalid_kinds)]
            invalid_cycle += 1
            yield Record(None, value, clock, False)
            continue
        if sent and rng.random() < duplicate_ratio:
            yield sent[rng.randrange(len(sent))]
            continue
        roll = rng.random()
        if existing and roll < update_ratio + removal_ratio:
            doc = dict(rng.choice(existing))
            if roll < removal_ratio:
                doc["weight"] = None
            else:
                doc["weight"] = _weight(rng)
                if rng.random() < 0.3:
                    doc["in_history"] = not doc["in_history"]
        else:
            doc = new_doc(f"user-{rng.randrange(users)}")
            remember(doc)
        ts = clock - (rng.randrange(1, 5000) if rng.random() < out_of_order_ratio else 0)
        rec = record(doc, ts, clock, with_ts=rng.random() >= no_ts_ratio)
        sent.append(rec)
        yield rec


def _weight(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.02:
        return 0.0
    if roll < 0.04:
        return 1.0
    if roll < 0.10:
        return rng.choice((0.25, 0.5, 0.731))
    return round(rng.random(), 3)


async def produce(bootstrap: str, topic: str, records: Iterator[Record], *, total: int,
                  rate: float = 0.0, progress: bool = False,
                  kafka: Mapping[str, Any] | None = None) -> int:
    """Send ``records`` to ``topic`` (at ``rate`` events/s when > 0); return how many were sent.
    ``kafka``: the client's security options (streams/runtime/kafka_clients.py)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all",
                                enable_idempotence=True, max_batch_size=256 * 1024,
                                **(kafka or {}))
    await producer.start()
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    bar = None
    if progress:
        from rich.progress import Progress
        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("producing", total=total)
    try:
        pending = []
        for rec in records:
            pending.append(await producer.send(topic, rec.value, key=rec.key,
                                               timestamp_ms=rec.timestamp_ms))
            sent += 1
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
                if bar is not None:
                    bar.update(task, completed=sent)
            if rate > 0:
                ahead = sent / rate - (loop.time() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        if bar is not None:
            bar.stop()
    return sent
