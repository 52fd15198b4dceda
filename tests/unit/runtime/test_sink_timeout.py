"""The produce timeout (SEGMENTS_PRODUCE_TIMEOUT_MS) is kept by the sink: the idempotent
producer retries a batch until the broker takes it, so a write not acknowledged in time must
fail its batch here."""

from __future__ import annotations

import asyncio

from streams.runtime.sink import DeliveryTimedOut, all_delivered, settle


async def test_settle_gives_results_failures_and_timeouts_in_order() -> None:
    loop = asyncio.get_running_loop()
    ok, failed, never = loop.create_future(), loop.create_future(), loop.create_future()
    ok.set_result(7)
    failed.set_exception(ValueError("refused"))
    results = await settle([ok, failed, never], timeout_s=0.05)
    assert results[0] == 7
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], DeliveryTimedOut)
    never.set_exception(RuntimeError("late"))  # retrieved by settle's callback: no warning
    await asyncio.sleep(0)


async def test_without_a_timeout_settle_waits_for_every_delivery() -> None:
    loop = asyncio.get_running_loop()
    late = loop.create_future()
    loop.call_later(0.05, late.set_result, "acked")
    assert await settle([late], timeout_s=None) == ["acked"]
    assert await settle([], timeout_s=0.01) == []


async def test_all_delivered_raises_a_timeout() -> None:
    never = asyncio.get_running_loop().create_future()
    try:
        await all_delivered([never], timeout_s=0.01)
    except DeliveryTimedOut:
        pass
    else:
        raise AssertionError("no timeout raised")
    never.cancel()
