"""The change ledger (domain/ledger.py): what is published, when it is published again, and
what a new owner publishes after a crash; the cases the crash test once found the hard way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.events import Event
from streams.domain.ledger import CountChange, Publication
from streams.domain.partition import PartitionState

FAMILY = ("p", "label", "l1", "view")
WATCHED = (0.5,)


def _event(user: str, weight: float | None, ts: int, name: str = "L") -> Event:
    return Event("p", user, "label", "l1", name, "view", weight, False, ts)


def _growth(changes: list[CountChange]) -> list[tuple[int, int]]:
    return [(c.user_count, c.previous_user_count) for c in changes
            if c.segment_type == "growth"]


def _take(state: PartitionState) -> list[CountChange]:
    publication = state.take_publication()
    return [] if publication is None else publication.changes


def _rebuilt_with(state: PartitionState,
                  emitted: list[tuple[object, ...]]) -> PartitionState:
    """``state``'s recommendations and the given emitted-counts records, as a new owner loads
    them after a crash."""
    rebuilt = PartitionState(0, WATCHED, rebuilding=True)
    for family, user, rec in state.store.records():
        rebuilt.store.load(family, user, rec.weight, rec.in_history, rec.ts, rec.offset, "L1")
    for key, count, *previous in emitted:
        rebuilt.ledger.load(key, count, *previous)  # type: ignore[arg-type]
    rebuilt.settle()
    return rebuilt


def test_a_change_carries_its_segment() -> None:
    state = PartitionState(3, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    publication = state.take_publication()
    assert publication is not None and publication.partition == 3
    (growth,) = [c for c in publication.changes if c.segment_type == "growth"]
    assert (growth.program_id, growth.segment_basis, growth.segment_basis_id,
            growth.action_type, growth.min_weight, growth.name) == (
        "p", "label", "l1", "view", 0.5, "L")
    assert growth.key == (FAMILY, "growth", 0.5) and growth.strength == 0.9
    # discovery moved too (in_history false); base did not
    assert {c.segment_type for c in publication.changes} == {"growth", "discovery"}


def test_nothing_to_publish_is_no_publication() -> None:
    state = PartitionState(0, WATCHED)
    assert state.take_publication() is None
    state.apply(_event("u1", 0.2, 1), 0)  # below the watched threshold: no count moved
    assert state.take_publication() is None


def test_an_unconfirmed_publication_is_published_again_even_if_the_count_went_back() -> None:
    # The crash seen in the fault test: 0 -> 1 published, the worker died before recording it
    # as published; the count went back to 0 before the next owner published anything.
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    (change,) = [c for c in _take(state) if c.segment_type == "growth"]
    assert (change.user_count, change.previous_user_count) == (1, 0)
    key = change.key
    state.apply(_event("u1", 0.1, 2), 1)  # back to 0

    # Intent recorded ([1, partition, 0]), publication unconfirmed: 1 -> 0 goes out.
    rebuilt = _rebuilt_with(state, [(key, 1, 0)])
    assert _growth(_take(rebuilt)) == [(0, 1)]
    # Recorded as published ([1, partition]): the same.
    rebuilt = _rebuilt_with(state, [(key, 1, 0), (key, 1)])
    assert _growth(_take(rebuilt)) == [(0, 1)]
    # Nothing recorded (the intent is written before publishing, so nothing was published).
    rebuilt = _rebuilt_with(state, [])
    assert _growth(_take(rebuilt)) == []


def test_an_intent_recorded_but_not_published_is_repeated_once() -> None:
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    (change,) = [c for c in _take(state) if c.segment_type == "growth"]
    rebuilt = _rebuilt_with(state, [(change.key, 1, 0)])
    publication = rebuilt.take_publication()
    assert publication is not None
    assert _growth(publication.changes) == [(1, 0)]  # the same change: a duplicate at most
    rebuilt.ledger.published(publication)
    rebuilt.store.dirty.add(FAMILY)
    assert _growth(_take(rebuilt)) == []  # once
    # Confirmed: nothing to publish.
    confirmed = _rebuilt_with(state, [(change.key, 1, 0), (change.key, 1)])
    assert _growth(_take(confirmed)) == []


def test_published_changes_are_recorded_as_published_once() -> None:
    # A tick's published changes are recorded with the next tick's intents (or at a
    # revocation or a stop), each once.
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    publication = state.take_publication()
    assert publication is not None and publication.confirmations == {}
    state.ledger.published(publication)
    assert state.ledger.take_confirmations() == {
        c.key: c.user_count for c in publication.changes}
    assert state.ledger.take_confirmations() == {}  # handed out once


def test_an_intent_stands_for_the_confirmation_of_its_previous_count() -> None:
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    first = state.take_publication()
    assert first is not None
    state.ledger.published(first)
    state.apply(_event("u2", 0.8, 2), 1)
    second = state.take_publication()
    assert second is not None
    (growth,) = [c for c in second.changes if c.segment_type == "growth"]
    assert (growth.user_count, growth.previous_user_count) == (2, 1)
    records = second.records()
    assert records[growth.key] == (2, 1)  # the intent, not the confirmation [1]
    assert all(v[1] is None for k, v in records.items()
               if k not in {c.key for c in second.changes})
    rebuilt = _rebuilt_with(state, [(growth.key, 2, 1)])
    assert _growth(_take(rebuilt)) == [(2, 1)]


def test_a_failed_publication_is_taken_again() -> None:
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    first = state.take_publication()
    assert first is not None
    state.ledger.published(first)
    state.apply(_event("u2", 0.8, 2), 1)
    second = state.take_publication()
    assert second is not None and second.confirmations
    # Step 1 failed: the confirmations come back with the changes.
    state.ledger.failed(second, state.store, recorded=False)
    again = state.take_publication()
    assert again is not None
    assert again.confirmations == second.confirmations
    assert _growth(again.changes) == _growth(second.changes)
    # Step 2 failed: the records are written, only the changes come back.
    state.ledger.failed(again, state.store, recorded=True)
    third = state.take_publication()
    assert third is not None and third.confirmations == {}
    assert _growth(third.changes) == _growth(second.changes)


def test_records_of_a_publication() -> None:
    key = (FAMILY, "growth", 0.5)
    other = (FAMILY, "base", 0.5)
    change = CountChange(key, "L", 3, 2, 0.7)
    publication = Publication(0, [change], {key: 2, other: 5})
    assert publication.records() == {key: (3, 2), other: (5, None)}


def test_published_counts_per_family_at_every_watched_segment() -> None:
    state = PartitionState(0, (0.5, 0.8))
    state.apply(_event("u1", 0.9, 1), 0)
    state.apply(_event("u2", 0.6, 1), 1)
    publication = state.take_publication()
    assert publication is not None
    state.ledger.published(publication)
    ledger = state.ledger
    assert {(t, m): ledger.emitted_count((FAMILY, t, m))
            for t in ("growth", "base", "discovery") for m in (0.5, 0.8)} == {
        ("growth", 0.5): 2, ("growth", 0.8): 1, ("base", 0.5): 0, ("base", 0.8): 0,
        ("discovery", 0.5): 2, ("discovery", 0.8): 1}
    assert ledger.emitted_count((FAMILY, "growth", 0.3)) == 0  # not watched
    # Families that published the same counts share one tuple; the key is the store's.
    other = ("p", "label", "l2", "view")
    state.apply(Event("p", "u1", "label", "l2", "L", "view", 0.9, False, 1), 2)
    state.apply(Event("p", "u2", "label", "l2", "L", "view", 0.6, False, 1), 3)
    publication = state.take_publication()
    assert publication is not None
    state.ledger.published(publication)
    assert ledger.emitted[other] is ledger.emitted[FAMILY]
    (key,) = [k for k in ledger.emitted if k == other]
    assert key is state.store.families[other].key


def test_a_rebuilt_ledger_ignores_thresholds_no_longer_watched() -> None:
    state = PartitionState(0, WATCHED)
    state.apply(_event("u1", 0.9, 1), 0)
    rebuilt = _rebuilt_with(state, [((FAMILY, "growth", 0.5), 1), ((FAMILY, "discovery", 0.5), 1),
                                    ((FAMILY, "growth", 0.3), 7, 6)])
    assert rebuilt.take_publication() is None  # 0.3's intent is not watched: nothing to redo
    (key,) = rebuilt.ledger.emitted
    assert key is rebuilt.store.families[FAMILY].key


def test_a_family_aged_out_while_its_change_to_0_fails_is_still_published_at_0() -> None:
    # The reviewer's case: the change 1 -> 0 is taken, its publication fails after a batch has
    # aged the family out of the store.
    state = PartitionState(0, WATCHED, grace_ms=10)
    state.apply(_event("u1", 0.9, 1), 0)
    first = state.take_publication()
    assert first is not None
    state.ledger.published(first)
    state.apply(_event("u1", None, 2), 1)
    to_zero = state.take_publication()
    assert to_zero is not None and _growth(to_zero.changes) == [(0, 1)]
    # Another family's event moves the watermark past u1's withdrawal: l1 is emptied.
    state.apply(Event("p", "u2", "label", "l2", "L2", "view", 0.1, False, 100), 2)
    state.store.take_dirty()
    state.store.expire()
    assert FAMILY not in state.store.families
    state.ledger.failed(to_zero, state.store, recorded=True)
    again = state.take_publication()
    assert again is not None and _growth(again.changes) == [(0, 1)]
    assert again.changes[0].name == "l1"  # the family's name went with it: the basis id
    state.ledger.published(again)
    assert FAMILY not in state.ledger.emitted  # nothing kept for a family at 0


def test_a_new_owner_publishes_0_for_a_family_it_no_longer_holds() -> None:
    # A standby copy or a rebuild from a compacted changelog may hold no family where the last
    # published count was not 0 (the old owner aged it out before its next tick).
    state = PartitionState(0, WATCHED)
    rebuilt = _rebuilt_with(state, [((FAMILY, "growth", 0.5), 2), ((FAMILY, "base", 0.5), 0)])
    assert _growth(_take(rebuilt)) == [(0, 2)]
    uncertain = _rebuilt_with(state, [((FAMILY, "discovery", 0.5), 0, 3)])
    assert [(c.segment_type, c.user_count, c.previous_user_count)
            for c in _take(uncertain)] == [("discovery", 0, 3)]


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3),
                                 st.none() | st.floats(0.0, 1.0)), max_size=60),
       limit=st.integers(1, 5))
def test_publications_of_a_limited_number_of_families_add_up_to_one(
        events: list[tuple[int, int, float | None]], limit: int) -> None:
    # The same events in two partitions: one publishes everything in one publication, the
    # other in publications of at most ``limit`` families each, until none is left.
    whole, limited = PartitionState(0, WATCHED), PartitionState(0, WATCHED)
    for ts, (family, user, weight) in enumerate(events):
        ev = Event("p", f"u{user}", "asset", f"a{family}", "A", "view", weight, user % 2 == 0,
                   ts)
        whole.apply(ev, ts)
        limited.apply(ev, ts)
    expected: dict[object, int] = {}
    publication = whole.take_publication()
    if publication is not None:
        whole.ledger.published(publication)
        expected = {c.key: c.user_count for c in publication.changes}
    got: dict[object, int] = {}
    while (publication := limited.take_publication(limit)) is not None:
        assert len({c.family for c in publication.changes}) <= limit
        for c in publication.changes:
            assert c.key not in got  # each segment's change once
            got[c.key] = c.user_count
        limited.ledger.published(publication)
    assert got == expected and not limited.store.dirty
    assert limited.ledger.emitted == whole.ledger.emitted
