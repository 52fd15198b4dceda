"""Aging (contract §2, "Aging, bounded state") in the family store: the watermark, withdrawals
forgotten, late events refused, and what a rebuild from the changelog makes of them."""

from __future__ import annotations

import pytest

from streams.domain.events import Event
from streams.domain.family import Family
from streams.domain.store import SWEEPS_PER_GRACE, FamilyStore

FAMILY = ("p", "label", "l1", "view")


def _ev(user: str, weight: float | None, ts: int, basis_id: str = "l1") -> Event:
    return Event("p", user, "label", basis_id, "Label", "view", weight, False, ts)


def test_the_watermark_is_the_greatest_ts_applied_minus_the_grace() -> None:
    store = FamilyStore(grace_ms=100)
    assert store.watermark is None
    store.apply(_ev("u1", 0.5, 1_000), 0)
    store.apply(_ev("u2", 0.5, 900), 1)  # older: the watermark does not move back
    assert store.watermark == 900
    assert store.apply(_ev("u1", 0.9, 10), 2) is False  # ignored: not newer than its state
    assert store.watermark == 900


def test_withdrawals_older_than_the_watermark_are_forgotten_and_queued_for_tombstones() -> None:
    store = FamilyStore(grace_ms=100)
    assert store.apply(_ev("u1", 0.5, 1_000), 0)
    assert store.apply(_ev("u2", None, 1_000), 1)  # never seen: kept with its ts
    assert store.apply(_ev("u3", None, 1_050, basis_id="l2"), 2)
    assert store.expire() == 0
    assert store.apply(_ev("u1", 0.6, 1_120), 3)  # watermark 1,020: u2's withdrawal is older
    assert store.expire() == 1
    assert store.take_forgotten() == [(FAMILY, "u2")]
    assert set(store.families[FAMILY].slots) == {"u1"}
    assert store.apply(_ev("u4", 0.7, 1_200), 4)  # watermark 1,100: u3's family empties
    assert store.expire() == 1
    assert store.take_forgotten() == [(("p", "label", "l2", "view"), "u3")]
    assert ("p", "label", "l2", "view") not in store.families
    assert [r.user_count for r in store.query("p", "growth", "label", 0)] == [2]


def test_an_event_older_than_the_watermark_without_state_is_late() -> None:
    store = FamilyStore(grace_ms=100)
    store.apply(_ev("u1", 0.5, 1_000), 0)
    assert store.apply(_ev("u2", 0.5, 899), 1) is None  # no state, older than 900: late
    assert store.apply(_ev("u2", 0.5, 900), 2) is True  # at the watermark: applied
    assert store.apply(_ev("u1", 0.7, 800), 3) is False  # state held: judged by ts, older
    assert store.apply(_ev("u3", None, 950), 4)
    assert store.apply(_ev("u1", 0.7, 1_100), 5)  # watermark 1,000
    # u3's withdrawal is older than the watermark: forgotten, swept or not, so an event of it
    # older than the watermark is late and one at or after it applies.
    assert store.apply(_ev("u3", 0.4, 990), 6) is None
    assert store.apply(_ev("u3", 0.4, 1_000), 7) is True
    assert store.query("p", "growth", "label", 0)[0].user_count == 3


def test_a_rebuild_restores_the_watermark_and_reads_tombstones_as_no_state() -> None:
    store = FamilyStore(rebuilding=True, grace_ms=100)
    store.load(FAMILY, "u1", 0.5, False, 1_000, 0, "Label")
    store.load(FAMILY, "u2", None, False, 950, 1, "Label")
    store.load(FAMILY, "u2", None, False, 960, 2, "Label")
    store.load_tombstone(FAMILY, "u2")
    store.load(FAMILY, "u3", None, False, 800, 3, "Label")  # older than the watermark
    store.finish_rebuild()
    assert store.watermark == 900
    assert store.apply(_ev("u2", 0.5, 899), 4) is None  # the tombstone: no state, late
    assert store.expire() == 1  # u3; u2 was forgotten before (its tombstone is written)
    assert store.take_forgotten() == [(FAMILY, "u3")]
    assert set(store.families[FAMILY].slots) == {"u1"}


def test_made_up_withdrawals_spread_over_event_time_hold_bounded_state() -> None:
    grace = 2_000
    store = FamilyStore(grace_ms=grace)
    peak = 0
    for i in range(100_000):
        ts = 1_000_000 + i  # one withdrawal per ms of event time, each a new user and family
        assert store.apply(_ev(f"ghost-{i}", None, ts, basis_id=f"l{i % 1000}"), i)
        if i % 500 == 0:
            store.expire()
            store.take_forgotten()
            peak = max(peak, store.recommendations())
    store.expire()
    assert store.forgotten_total >= 100_000 - grace - 1
    assert peak <= grace + 500 + 1
    assert store.recommendations() <= grace + 1


def test_a_withdrawal_at_the_watermark_is_kept_and_one_just_older_is_forgotten() -> None:
    store = FamilyStore(grace_ms=100)
    assert store.apply(_ev("old", None, 899), 0)
    assert store.apply(_ev("edge", None, 900), 1)
    assert store.apply(_ev("u1", 0.5, 1_000), 2)  # watermark 900
    assert store.expire() == 1
    assert store.take_forgotten() == [(FAMILY, "old")]
    assert set(store.families[FAMILY].slots) == {"edge", "u1"}


def _count_sweeps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, Family.sweep calls are counted in the list's one item."""
    sweeps = [0]
    sweep = Family.sweep

    def counted(self: Family, before: int) -> tuple[list[str], int | None]:
        sweeps[0] += 1
        return sweep(self, before)

    monkeypatch.setattr(Family, "sweep", counted)
    return sweeps


LARGE_GRACE_MS = 1_600


def _large_family(grace: int) -> FamilyStore:
    """A store whose family FAMILY has 5,000 members (weights at ts 0, offsets 0-4,999)."""
    store = FamilyStore(grace_ms=grace)
    for i in range(5_000):
        store.apply(_ev(f"member-{i}", 0.5, 0), i)
    return store


def test_a_large_family_with_a_trickle_of_withdrawals_is_swept_a_bounded_number_of_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    grace = LARGE_GRACE_MS
    store = _large_family(grace)
    sweeps = _count_sweeps(monkeypatch)
    for t in range(1, 16_001):  # ten grace periods, a withdrawal and a batch every ms
        store.apply(_ev(f"member-{t % 5_000}", None, t), 5_000 + t)
        store.expire()
    assert sweeps[0] <= 10 * SWEEPS_PER_GRACE + 2
    # Memory: what is older than the watermark by more than a slice of the grace is freed.
    withdrawn = sum(1 for _, rec in store.families[FAMILY].records() if rec.weight is None)
    assert withdrawn <= grace + grace // SWEEPS_PER_GRACE + 1


def test_withdrawals_just_inside_the_grace_do_not_make_a_large_family_swept_every_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each batch brings a withdrawal of a large family's member timed just above the watermark
    # (late, or a backfill): it must not reschedule the family's sweep to that time.
    grace = LARGE_GRACE_MS
    store = _large_family(grace)
    sweeps = _count_sweeps(monkeypatch)
    store.apply(_ev("clock", 0.5, 2_000, basis_id="l2"), 5_000)
    for t in range(2_001, 6_001):
        store.apply(_ev("clock", 0.5, t, basis_id="l2"), 5_000 + t)  # event time moves on
        watermark = t - grace
        store.apply(_ev(f"member-{t % 5_000}", None, watermark + 1), 10_000 + t)
        store.expire()
    assert sweeps[0] <= 3 * SWEEPS_PER_GRACE + 2


def test_one_expire_sweeps_about_its_budget_and_leaves_the_rest_due() -> None:
    store = FamilyStore(grace_ms=10)
    for i in range(100):
        store.apply(_ev(f"u{i}", None, 0, basis_id=f"l{i}"), i)
    store.apply(_ev("clock", 0.5, 100, basis_id="clock"), 100)
    assert store.expire(budget=30) == 30
    assert store.expire(budget=1_000) == 70
