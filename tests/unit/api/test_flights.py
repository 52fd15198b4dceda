"""One computation per query at a time (api/flights.py): identical requests at once share one;
a ``fresh`` request never joins a computation that started before it; a bigger page waits for
a flight that holds it; a failure reaches every waiter; a waiter going away cancels nothing."""

from __future__ import annotations

import asyncio

import pytest

from api.flights import Flights, covers


class Work:
    """Computations that wait for ``release``; each returns (its number, its limit, fresh)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, bool]] = []
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, limit: int | None, fresh: bool) -> tuple[int, int | None, bool]:
        self.calls.append((limit, fresh))
        number = len(self.calls)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("boom")
        return number, limit, fresh


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_covers() -> None:
    assert covers(None, None) and covers(None, 5) and covers(5, 5) and covers(6, 5)
    assert not covers(5, 6) and not covers(5, None)


async def test_sixteen_identical_misses_share_one_computation() -> None:
    coalesced = 0

    def count() -> None:
        nonlocal coalesced
        coalesced += 1

    flights: Flights[tuple[int, int | None, bool]] = Flights(count)
    work = Work()
    waiting = [asyncio.create_task(flights.run("q", 100, False, work)) for _ in range(16)]
    await settle()
    work.release.set()
    results = await asyncio.gather(*waiting)
    assert work.calls == [(100, False)]
    assert set(results) == {(1, 100, False)} and coalesced == 15
    assert len(flights) == 0  # nothing kept once done


async def test_fresh_requests_wait_for_a_flight_that_starts_after_them() -> None:
    flights: Flights[tuple[int, int | None, bool]] = Flights()
    work = Work()
    first = asyncio.create_task(flights.run("q", 100, True, work))
    await settle()
    later = [asyncio.create_task(flights.run("q", 50 + i, True, work)) for i in range(15)]
    await settle()
    assert work.calls == [(100, True)]  # the running one is not joined
    work.release.set()
    assert await first == (1, 100, True)
    # The fifteen queued behind it share one computation, wide enough for the widest.
    assert {await t for t in later} == {(2, 64, True)}
    assert work.calls == [(100, True), (64, True)]


async def test_a_page_beyond_the_running_flight_queues_and_widens() -> None:
    flights: Flights[tuple[int, int | None, bool]] = Flights()
    work = Work()
    small = asyncio.create_task(flights.run("q", 10, False, work))
    await settle()
    inside = asyncio.create_task(flights.run("q", 5, False, work))
    beyond = asyncio.create_task(flights.run("q", 30, False, work))
    every = asyncio.create_task(flights.run("q", None, False, work))
    other = asyncio.create_task(flights.run("other", 30, False, work))
    await settle()
    work.release.set()
    assert await small == await inside == (1, 10, False)
    assert (await beyond)[1:] == (await every)[1:] == (None, False)  # one flight, widened
    assert (await other)[1] == 30
    assert len(work.calls) == 3


async def test_a_failure_reaches_every_waiter_and_the_next_request_computes_again() -> None:
    flights: Flights[tuple[int, int | None, bool]] = Flights()
    work = Work()
    work.fail = True
    waiting = [asyncio.create_task(flights.run("q", 1, False, work)) for _ in range(3)]
    await settle()
    work.release.set()
    for task in waiting:
        with pytest.raises(RuntimeError):
            await task
    work.fail = False
    assert await flights.run("q", 1, False, work) == (2, 1, False)


async def test_a_waiter_that_goes_away_cancels_nothing() -> None:
    flights: Flights[tuple[int, int | None, bool]] = Flights()
    work = Work()
    gone = asyncio.create_task(flights.run("q", 1, False, work))
    stays = asyncio.create_task(flights.run("q", 1, False, work))
    await settle()
    gone.cancel()
    await settle()
    work.release.set()
    assert await stays == (1, 1, False)
    await flights.stop()
