"""The change publisher (runtime/publisher.py) and the revocation fence (runtime/rebalance.py)
with a fake producer: intents before change events, confirmations at the next turn or at a
revocation, failures retried; a revocation that waits for the publication in flight; and each
partition's turns (a share of them a tick, an interval apart, each family once a turn)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec.durable import (
    decode_emitted,
    emitted_key,
    encode_applied,
    expected_offset_header,
    recommendation_key,
)
from streams.codec.names import EMITTED_COUNTS, RECOMMENDATIONS
from streams.codec.partitioner import partition_for
from streams.domain.events import Event
from streams.runtime import publisher as publisher_module
from streams.runtime.partitions import PartitionRegistry
from streams.runtime.publisher import ChangePublisher
from streams.runtime.rebalance import release
from streams.runtime.recovery import Recovery
from streams.runtime.sink import Sink
from tests.support.fakes import NAMES, PARTITIONS, FakeProducer, FakeReader

EMITTED = NAMES.changelog_topic(EMITTED_COUNTS)


class Setup:
    def __init__(self, spread: int = 1, interval_s: float = 0.0,
                 grace_ms: int = 7 * 24 * 3600 * 1000) -> None:
        self.producer = FakeProducer()
        self.reader = FakeReader()  # the recommendations changelog; emitted counts: as sent
        self.registry = PartitionRegistry((0.5,), grace_ms=grace_ms)
        self.registry.finish_recovery(set(range(PARTITIONS)))
        self.now = 0.0  # the monotonic clock of the publisher's turns
        self.publisher = ChangePublisher(self.registry, Sink(lambda: self.producer, NAMES,
                                                             1_000_000), NAMES,
                                         clock=lambda: 1_767_225_600.0, spread=spread,
                                         interval_s=interval_s, monotonic=lambda: self.now)

    def apply(self, user: str, weight: float | None, ts: int, partition: int = 1,
              basis_id: str | None = None) -> None:
        ev = Event("p", user, "label", basis_id or f"l{partition}", "Label", "view", weight,
                   False, ts)
        self.registry.active[partition].apply(ev, ts)
        self.reader.write(NAMES.changelog_topic(RECOMMENDATIONS), partition,
                          recommendation_key(ev.family, user), encode_applied(ev, ts, partition))

    async def rebuild_stale(self) -> None:
        """The repair timer: stale partitions rebuilt from the changelogs as the broker has
        them (every emitted-counts record sent, failed writes included: they may have landed)."""
        self.reader.logs.pop(EMITTED, None)
        self.reader.write_sent(self.producer.to(EMITTED))
        await Recovery(self.registry, self.reader, NAMES, self.reader.highwaters).repair()

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


SEGMENT = b'["p","growth","label","l1","view",0.5]'


def published(s: Setup) -> set[int]:
    """The partitions whose change events were sent since the producer was last cleared."""
    return {int(str(c["segment_basis_id"])[1:]) for c in s.changes()}


async def next_turns(s: Setup, *times: float) -> list[set[int]]:
    """A change on partition 1, then a tick at each of ``times``: what each published."""
    s.apply("u2", 0.9, 2)
    turns = []
    for now in times:
        s.producer.sent.clear()
        s.now = now
        await s.publisher.tick()
        turns.append(published(s))
    return turns


async def test_a_spread_tick_publishes_a_share_of_the_partitions_each_once_an_interval() -> None:
    s = Setup(spread=2, interval_s=1.0)
    turns = []
    for user, ts in (("u1", 1), ("u2", 2)):
        for p in range(PARTITIONS):
            s.apply(user, 0.9, ts, partition=p)
        start = s.now
        for offset in (0.0, 0.5, 0.9):
            s.now = start + offset
            s.producer.sent.clear()
            await s.publisher.tick()
            turns.append(published(s))
        s.now += 0.1
    assert turns == [{0, 1}, {2, 3}, set(),  # the longest waiting first, none twice a second
                     {0, 1}, {2, 3}, set()]


async def test_a_turn_publishes_each_family_once_those_changed_meanwhile_at_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Contract §4. A turn takes its families in rounds; one published in the first round and
    changed again while it was in flight must wait for the next turn, not go out again in the
    second round (the dirty set was shared: it did)."""
    monkeypatch.setattr(publisher_module, "ROUND_SHARE_MAX", 2)  # three families: two rounds
    s = Setup(spread=1, interval_s=1.0)
    for i in range(3):
        s.apply("u1", 0.9, 1, basis_id=f"b{i}")
    s.producer.held = True
    tick = asyncio.create_task(s.publisher.tick())
    await asyncio.sleep(0.01)  # the first round's intents wait for the broker
    first = {str(key[0][2]) for key, _, _ in s.emitted()}  # type: ignore[index]
    assert len(first) == 2
    again = min(first)
    s.apply("u2", 0.9, 2, basis_id=again)
    s.producer.release()
    await tick
    turn = [(c["segment_type"], c["segment_basis_id"]) for c in s.changes()]
    assert sorted(turn) == sorted({(t, f"b{i}") for t in ("growth", "discovery")
                                   for i in range(3)})  # each once
    s.producer.sent.clear()
    s.now = 1.0
    await s.publisher.tick()
    assert [(c["segment_basis_id"], c["user_count"]) for c in s.changes()
            if c["segment_type"] == "growth"] == [(again, 2)]


async def test_a_family_emptied_and_aged_out_during_its_turn_is_published_with_its_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "ROUND_SHARE_MAX", 1)  # a round a family
    s = Setup(grace_ms=10)
    for basis in ("a", "b"):
        s.apply("u1", 0.9, 1, basis_id=basis)
    await s.publisher.tick()
    for basis in ("a", "b"):
        s.apply("u1", None, 2, basis_id=basis)  # both emptied
    record = s.publisher._record
    rounds = 0

    async def record_then_age(taken):  # type: ignore[no-untyped-def]
        nonlocal rounds
        rounds += 1
        if rounds == 1:  # between the turn's rounds a batch ages the withdrawals out
            s.apply("u9", 0.9, 100, basis_id="c")
            s.registry.active[1].store.expire()
        return await record(taken)

    s.publisher._record = record_then_age  # type: ignore[method-assign]
    s.producer.sent.clear()
    await s.publisher.tick()
    # (The family of the second round was dropped before its round: published at 0 under
    # its basis id, the name gone with it.)
    assert sorted((c["segment_basis_id"], c["name"]) for c in s.changes()
                  if c["segment_type"] == "growth") == [("a", "Label"), ("b", "Label")]
    store = s.registry.active[1].store
    store.expire()  # published: now they go
    assert not {("p", "label", b, "view") for b in "ab"} & store.families.keys()


async def test_a_family_emptied_and_aged_out_while_its_round_fails_is_published_with_its_name(
        ) -> None:
    s = Setup(grace_ms=10)
    s.apply("u1", 0.9, 1, basis_id="a")
    await s.publisher.tick()
    s.apply("u1", None, 2, basis_id="a")  # emptied
    publish = s.publisher._publish
    calls = 0

    async def age_then_fail(publications):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # while the round is in flight a batch ages the withdrawal out
            s.apply("u9", 0.9, 100, basis_id="c")
            s.registry.active[1].store.expire()
            raise KafkaTimeoutError()
        return await publish(publications)

    s.publisher._publish = age_then_fail  # type: ignore[method-assign]
    await s.publisher.tick()
    s.producer.sent.clear()
    await s.publisher.tick()  # the failed round's change again
    assert [(c["segment_basis_id"], c["name"]) for c in s.changes()
            if c["segment_type"] == "growth" and c["segment_basis_id"] == "a"] == [("a", "Label")]


async def test_a_partition_that_leaves_and_comes_back_still_waits_for_its_turn() -> None:
    s = Setup(spread=1, interval_s=1.0)
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    assert published(s) == {1}
    s.registry.mark_stale({1})  # a failed write: out of service, then rebuilt
    s.now = 0.2
    await s.publisher.tick()
    await s.rebuild_stale()
    assert await next_turns(s, 0.5, 1.0) == [set(), {1}]


async def test_the_next_turn_comes_an_interval_after_the_last_one_ended() -> None:
    """A slow turn (its writes acknowledged late) must not bring the next one closer: its
    last change went out when it ended."""
    s = Setup(spread=1, interval_s=1.0)
    s.apply("u1", 0.9, 1)
    s.producer.held = True
    tick = asyncio.create_task(s.publisher.tick())
    await asyncio.sleep(0.01)
    s.now = 0.5
    s.producer.release()
    await tick
    assert await next_turns(s, 1.25, 1.5) == [set(), {1}]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.7), st.sets(st.integers(0, PARTITIONS - 1))),
                min_size=1, max_size=25), st.integers(1, 5))
def test_no_segment_changes_twice_within_an_interval_whenever_the_ticks_come(
        ticks: list[tuple[float, set[int]]], spread: int) -> None:
    """Contract §4: at most one change event per segment and threshold an interval, whatever
    the ticks' timing (late, early, bunched)."""
    s = Setup(spread=spread, interval_s=1.0)
    last: dict[object, float] = {}

    async def run() -> None:
        for n, (gap, dirtied) in enumerate(ticks):
            s.now += gap
            for p in dirtied:
                s.apply(f"u{n}", 0.9, n + 1, partition=p)
            s.producer.sent.clear()
            await s.publisher.tick()
            for c in s.changes():
                key = (c["segment_type"], c["segment_basis_id"], c["min_weight"])
                assert s.now - last.get(key, -1.0) >= 1.0, (key, s.now, last.get(key))
                last[key] = s.now

    asyncio.run(run())


async def test_every_emitted_counts_record_names_the_offset_it_should_get() -> None:
    """The offset its writer expects: the one it gets while the writer is the partition's only
    writer; the rebuilds know the others (test_recovery.py)."""
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()  # intents (growth, discovery) at 0, 1
    s.apply("u2", 0.9, 2)
    await s.publisher.tick()  # intents at 2, 3 (each its key's confirmation too)
    s.producer.ends[(EMITTED, 1)] += 1  # another writer's record at 4
    s.apply("u3", 0.9, 3)
    await s.publisher.tick()  # intents expected at 4, 5, landed at 5, 6
    assert [r.headers for r in s.producer.to(EMITTED)] == [
        expected_offset_header(o) for o in range(6)]
    assert 1 in s.registry.stale


async def test_changes_and_counts_are_keyed_by_segment_on_its_partition() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    for topic in (NAMES.changes_topic, NAMES.counts_topic):
        records = s.producer.to(topic)
        assert SEGMENT in {r.key for r in records}
        for r in records:
            assert r.key is not None and r.partition == partition_for(r.key, PARTITIONS)
    (count,) = [orjson.loads(r.value or b"") for r in s.producer.to(NAMES.counts_topic)
                if r.key == SEGMENT]
    assert count == {"program_id": "p", "segment_type": "growth", "segment_basis": "label",
                     "segment_basis_id": "l1", "action_type": "view", "name": "Label",
                     "min_weight": 0.5, "user_count": 1, "strength": 0.9, "as_of": 1,
                     "version": count["version"]}


async def test_versions_are_the_intents_offsets_and_grow_with_each_change() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    await s.publisher.tick()
    s.apply("u2", 0.8, 5)
    await s.publisher.tick()
    s.apply("u1", None, 7)
    s.apply("u2", None, 7)
    await s.publisher.tick()
    intents = [i for i, r in enumerate(s.producer.to(EMITTED))
               if r.key == emitted_key((("p", "label", "l1", "view"), "growth", 0.5))
               and decode_emitted(r.key, r.value or b"", 1)[2] is not None]
    changes = [c for c in s.changes() if c["segment_type"] == "growth"]
    assert [(c["user_count"], c["version"], c["as_of"]) for c in changes] == [
        (1, intents[0], 1), (2, intents[1], 5), (0, intents[2], 7)]
    counts = [r for r in s.producer.to(NAMES.counts_topic) if r.key == SEGMENT]
    assert [r.value is None for r in counts] == [False, False, True]  # emptied: a tombstone
    assert counts[2].headers == [("version", str(intents[2]).encode())]  # the tombstone's


async def test_an_old_owner_whose_partition_was_written_by_another_publishes_nothing() -> None:
    """A worker paused past its session: the new owner wrote to the partition's emitted-counts
    changelog meanwhile. The old owner's intents land after those records, so their offsets
    are not the ones it expects: nothing of the partition is published any more (its late
    changes would carry versions above the new owner's), and the partition is rebuilt."""
    s = await published_once()
    s.producer.ends[(EMITTED, 1)] += 3  # the new owner's records
    s.apply("u2", 0.8, 5)
    s.apply("u3", 0.8, 5, partition=2)
    await s.publisher.tick()
    assert {c["segment_basis_id"] for c in s.changes()} == {"l2"}  # partition 2's only
    assert {r.key for r in s.producer.to(NAMES.counts_topic)} == {
        r.key for r in s.producer.to(NAMES.changes_topic)}
    assert 1 in s.registry.stale and 1 not in s.registry.active


async def test_a_failed_intent_write_publishes_nothing_and_is_published_after_a_rebuild(
        ) -> None:
    """Which records of a failed write reached the changelog is not known, nor the offset of
    the next: the partition is rebuilt, and the intent, if it was written, published again."""
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.producer.failing[EMITTED] = KafkaTimeoutError()
    await s.publisher.tick()
    assert s.changes() == []  # never an event without its intent
    del s.producer.failing[EMITTED]
    await s.publisher.tick()
    assert s.changes() == [] and 1 in s.registry.stale
    await s.rebuild_stale()
    s.producer.sent.clear()
    await s.publisher.tick()
    growth_changes = [c for c in s.changes() if c["segment_type"] == "growth"]
    assert [(c["user_count"], c["previous_user_count"]) for c in growth_changes] == [(1, 0)]
    assert growth_changes[0]["version"] == s.producer.ends[(EMITTED, 1)] - 2  # (growth, discovery)


async def test_a_bug_taking_a_partitions_changes_rebuilds_it_and_the_others_publish() -> None:
    s = Setup()
    s.apply("u1", 0.9, 1)
    s.apply("u1", 0.9, 1, partition=2)
    broken = s.registry.active[1]

    def bug(limit: int | None = None) -> None:
        raise RuntimeError("a bug")

    broken.take_publication = bug  # type: ignore[method-assign,assignment]
    await s.publisher.tick()  # (raised out of the tick before: the worker stopped)
    assert published(s) == {2} and 1 in s.registry.stale
    await s.rebuild_stale()
    s.producer.sent.clear()
    await s.publisher.tick()
    assert published(s) == {1}  # from the rebuilt state: its change still reaches the topic
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


async def test_a_new_owner_continues_the_versions_from_the_changelog() -> None:
    """The new owner rebuilds from the changelogs (as the broker has them) and knows the offset
    of its next record: its first change follows the old owner's with a greater version."""
    a = Setup()
    a.apply("u1", 0.9, 1)
    await a.publisher.tick()
    a.apply("u2", 0.9, 2)
    await a.publisher.tick()
    await a.publisher.tick()  # the confirmations
    old = max(c["version"] for c in a.changes())
    b = Setup()
    b.producer = a.producer  # one broker
    b.reader = a.reader
    b.reader.logs.pop(EMITTED, None)
    b.reader.write_sent(a.producer.to(EMITTED))
    b.registry = PartitionRegistry((0.5,))
    b.publisher = ChangePublisher(b.registry, Sink(lambda: b.producer, NAMES, 1_000_000), NAMES)
    recovery = Recovery(b.registry, b.reader, NAMES, b.reader.highwaters)
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, set(range(PARTITIONS)))
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_recovered(table, set(range(PARTITIONS)))
    await recovery.rebuilds.drain()
    assert b.registry.active[1].ledger.next_offset == a.producer.ends[(EMITTED, 1)]
    a.producer.sent.clear()
    b.apply("u3", 0.9, 3)
    await b.publisher.tick()
    assert 1 not in b.registry.stale
    growth_changes = [c for c in b.changes() if c["segment_type"] == "growth"]
    assert [c["user_count"] for c in growth_changes] == [3]
    assert growth_changes[0]["version"] > old


async def take_over(old: Setup) -> Setup:
    """A new owner of every partition: one broker with ``old``, its states rebuilt from the
    changelogs as the broker has them."""
    new = Setup()
    new.producer = old.producer
    new.reader = old.reader
    new.reader.logs.pop(EMITTED, None)
    new.reader.write_sent(old.producer.to(EMITTED))
    new.registry = PartitionRegistry((0.5,))
    new.publisher = ChangePublisher(new.registry, Sink(lambda: new.producer, NAMES, 1_000_000),
                                    NAMES, clock=lambda: 1_767_225_600.0)
    recovery = Recovery(new.registry, new.reader, NAMES, new.reader.highwaters)
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_rebalance(table, set(range(PARTITIONS)))
    for table in (RECOMMENDATIONS, EMITTED_COUNTS):
        await recovery.on_recovered(table, set(range(PARTITIONS)))
    await recovery.rebuilds.drain()
    return new


def apply_to(s: Setup, basis_id: str, user: str, weight: float | None, ts: int) -> None:
    """An event of family (p, label, ``basis_id``, view), held on partition 1."""
    ev = Event("p", user, "label", basis_id, "Label", "view", weight, False, ts)
    s.registry.active[1].apply(ev, ts)
    s.reader.write(NAMES.changelog_topic(RECOMMENDATIONS), 1,
                   recommendation_key(ev.family, user), encode_applied(ev, ts, 1))


def last_growth_change(s: Setup, basis_id: str) -> int:
    return [c["user_count"] for c in s.changes()
            if c["segment_type"] == "growth" and c["segment_basis_id"] == basis_id][-1]


async def test_an_old_owners_late_confirmation_does_not_hide_the_last_change() -> None:
    """CI run P (test_failover, 2 workers): the old owner's confirmation of a count it had
    published, queued before it was paused, reached the emitted-counts changelog after the new
    owner's later change and confirmation of that segment. The rebuilds that followed took it
    for the last published count; the count came back to it, so no change was published and
    the last change event said otherwise than GET /segments."""
    a = Setup()
    for user in ("u1", "u2", "u3"):
        apply_to(a, "l1", user, 0.9, 1)
    await a.publisher.tick()  # 3 published; its confirmation is the one that lands late
    b = await take_over(a)
    await b.publisher.tick()  # the intent it found published again
    apply_to(b, "l1", "u3", None, 2)
    await b.publisher.tick()
    await b.publisher.tick()  # 2 published and confirmed
    assert last_growth_change(b, "l1") == 2
    await a.publisher.tick()  # the old owner's late confirmation of 3
    assert 1 in a.registry.stale
    apply_to(b, "l2", "u9", 0.9, 3)  # another family of the partition
    await b.publisher.tick()
    assert 1 in b.registry.stale  # (its write landed after the old owner's)
    await b.rebuild_stale()
    apply_to(b, "l1", "u3", 0.9, 4)  # back to 3
    await b.publisher.tick()
    assert last_growth_change(b, "l1") == 3
