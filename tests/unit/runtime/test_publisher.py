"""The change publisher (runtime/publisher.py) and the revocation fence (runtime/rebalance.py)
with a fake producer: intents before change events, confirmations at the next tick or at a
revocation, failures retried; and a revocation that waits for the publication in flight."""

from __future__ import annotations

import asyncio

import orjson
from aiokafka.errors import KafkaTimeoutError

from streams.codec.durable import decode_emitted
from streams.codec.names import EMITTED_COUNTS
from streams.domain.events import Event
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.publisher import ChangePublisher
from streams.runtime.rebalance import release
from streams.runtime.sink import Sink
from tests.support.fakes import NAMES, PARTITIONS, FakeProducer

EMITTED = NAMES.changelog_topic(EMITTED_COUNTS)


class Setup:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.registry = PartitionRegistry((0.5,))
        self.registry.finish_recovery(set(range(PARTITIONS)))
        self.publisher = ChangePublisher(self.registry, Sink(lambda: self.producer, NAMES,
                                                             1_000_000), NAMES,
                                         clock=lambda: 1_767_225_600.0)

    def apply(self, user: str, weight: float | None, ts: int, partition: int = 1) -> None:
        ev = Event("p", user, "label", "l1", "Label", "view", weight, False, ts)
        self.registry.active[partition].apply(ev, ts)

    def emitted(self) -> list[tuple[object, int, int | None]]:
        return [decode_emitted(s.key or b"", s.value or b"", s.partition or 0)
                for s in self.producer.to(EMITTED)]

    def changes(self) -> list[dict[str, object]]:
        return [orjson.loads(s.value or b"") for s in self.producer.to(NAMES.changes_topic)]


def growth(emitted: list[tuple[object, int, int | None]]) -> list[tuple[int, int | None]]:
    return [(count, previous) for key, count, previous in emitted
            if key[1] == "growth"]  # type: ignore[index]


async def test_intents_go_before_the_events_and_confirmations_come_next_tick() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    order = [sent.topic for sent in s.producer.sent]
    assert order.index(NAMES.changes_topic) > max(
        i for i, t in enumerate(order) if t == EMITTED)  # all intents first
    assert growth(s.emitted()) == [(1, 0)]
    (event,) = [c for c in s.changes() if c["segment_type"] == "growth"]
    assert (event["user_count"], event["previous_user_count"], event["ts"]) == (
        1, 0, 1_767_225_600_000)
    s.producer.sent.clear()
    await s.publisher.tick()  # nothing changed: the confirmations alone
    assert growth(s.emitted()) == [(1, None)] and s.changes() == []
    s.producer.sent.clear()
    await s.publisher.tick()
    assert s.producer.sent == []


async def test_change_events_are_keyed_by_program_on_its_partition() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    events = s.producer.to(NAMES.changes_topic)
    assert {e.key for e in events} == {b"p"} and len({e.partition for e in events}) == 1


async def test_a_failed_intent_write_publishes_nothing_and_is_retried() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.producer.failing[EMITTED] = KafkaTimeoutError()
    await s.publisher.tick()
    assert s.changes() == []  # never an event without its intent
    del s.producer.failing[EMITTED]
    s.producer.sent.clear()
    await s.publisher.tick()
    assert growth(s.emitted()) == [(1, 0)]
    assert [(c["user_count"], c["previous_user_count"]) for c in s.changes()
            if c["segment_type"] == "growth"] == [(1, 0)]


async def test_a_failed_publication_is_retried_with_its_intent() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.producer.failing[NAMES.changes_topic] = KafkaTimeoutError()
    await s.publisher.tick()
    assert growth(s.emitted()) == [(1, 0)]
    del s.producer.failing[NAMES.changes_topic]
    s.producer.sent.clear()
    await s.publisher.tick()
    assert growth(s.emitted()) == [(1, 0)]
    assert [(c["user_count"], c["previous_user_count"]) for c in s.changes()
            if c["segment_type"] == "growth"] == [(1, 0)]


async def test_nothing_is_published_unless_serving() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.registry.begin_rebalance()
    await s.publisher.tick()
    assert s.producer.sent == []


async def test_a_revocation_waits_for_the_publication_in_flight_then_confirms_it() -> None:
    """Found by the crash test: a publication still in flight on the old owner reached the
    change topic after the new owner's. The fence makes the revocation wait for it, and the
    revocation records it as published before the partitions move."""
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.producer.held = True
    tick = asyncio.create_task(s.publisher.tick())
    await asyncio.sleep(0.01)  # the intents are sent and wait for the broker
    flushed = asyncio.Event()

    async def flush() -> None:
        flushed.set()

    revocation = asyncio.create_task(release(s.registry, s.publisher, flush))
    await asyncio.sleep(0.05)
    assert not s.registry.serving
    assert not revocation.done() and not flushed.is_set()  # waits for the publication
    s.producer.release()
    await asyncio.sleep(0.01)
    s.producer.release()  # the change events, then the confirmations
    await asyncio.wait_for(asyncio.gather(tick, revocation), 1.0)
    assert flushed.is_set()
    assert growth(s.emitted()) == [(1, 0), (1, None)]  # intent, then the confirmation
    assert len([c for c in s.changes() if c["segment_type"] == "growth"]) == 1


async def test_a_revocation_waits_for_the_batch_in_flight() -> None:
    s = Setup()
    entered, leave = asyncio.Event(), asyncio.Event()

    async def batch() -> None:
        async with s.registry.fence.batch:
            entered.set()
            await leave.wait()

    flushed = asyncio.Event()

    async def flush() -> None:
        flushed.set()

    handling = asyncio.create_task(batch())
    await entered.wait()
    revocation = asyncio.create_task(release(s.registry, s.publisher, flush))
    await asyncio.sleep(0.05)
    assert not flushed.is_set()
    leave.set()
    await asyncio.wait_for(asyncio.gather(handling, revocation), 1.0)
    assert flushed.is_set()


async def published_once() -> Setup:
    """One change published (not yet confirmed as published); nothing sent since."""
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    s.producer.sent.clear()
    return s


async def nothing_to_flush() -> None:
    pass


async def test_a_stop_confirms_too_and_stays_stopped() -> None:
    s = await published_once()
    await release(s.registry, s.publisher, nothing_to_flush, stopping=True)
    assert growth(s.emitted()) == [(1, None)]
    s.registry.finish_recovery(set(range(PARTITIONS)))
    assert not s.registry.serving



async def test_a_worker_the_group_no_longer_knew_confirms_nothing_and_forgets_its_states(
        ) -> None:
    """Its partitions may have had other owners meanwhile (its session expired while it was
    stopped): it writes nothing more for them, and a partition assigned to it again is rebuilt
    from its changelog, not kept as it was before the pause."""
    s = await published_once()
    await release(s.registry, s.publisher, nothing_to_flush, still_member=False)
    assert s.producer.sent == []
    assert (s.registry.active, s.registry.read_upto) == ({}, {})
