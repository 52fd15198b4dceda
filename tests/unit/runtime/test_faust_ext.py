"""faust_ext/ was written against exact versions of faust-streaming, mode-streaming and aiokafka
and reaches into their private API: this fails loudly when an upgrade changes either, so that
the upgrade is a deliberate step (read the changed code, adapt faust_ext/, then move the pins)."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any, cast

import pytest

from streams.runtime import faust_ext

RUNTIME = Path(faust_ext.__file__).resolve().parents[1]
PRIVATE_OWNERS = ("faust", "mode", "aiokafka")


def test_the_installed_libraries_are_the_ones_faust_ext_was_written_for() -> None:
    assert faust_ext.problems() == []


def test_a_moved_name_is_reported() -> None:
    saved = faust_ext.PRIVATE_API
    try:
        faust_ext.PRIVATE_API = (*saved, ("faust.transport.consumer", "Consumer", "_gone"))
        assert faust_ext.problems() == ["faust.transport.consumer.Consumer._gone is gone"]
    finally:
        faust_ext.PRIVATE_API = saved


def _private_uses(path: Path) -> set[str]:
    """Names starting with one underscore used as attributes in ``path`` (``x._name``), or
    imported from Faust, mode or aiokafka."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not (
                node.attr.startswith("__")):
            names.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[
                0] in PRIVATE_OWNERS:
            names.update(a.name for a in node.names if a.name.startswith("_"))
    return names


def test_no_private_name_is_used_outside_faust_ext() -> None:
    """The runtime's own private attributes are fine; Faust's and aiokafka's are used only in
    faust_ext/ (every name it uses is listed in PRIVATE_API)."""
    listed = {name for _, _, name in faust_ext.PRIVATE_API}
    for path in RUNTIME.rglob("*.py"):
        if "faust_ext" in path.parts:
            continue
        assert not (_private_uses(path) & listed), f"{path} uses {_private_uses(path) & listed}"


def test_every_private_name_faust_ext_uses_is_listed() -> None:
    listed = {name for _, _, name in faust_ext.PRIVATE_API}
    own = {"_epoch", "_reseek", "_ack_offsets", "_fetch", "_handle", "_handled_offsets",
           "_batch_topics", "_listener", "_Fetch", "_handled_next", "_seek_uncommitted",
           "_assigning", "_previous"}
    for path in (RUNTIME / "faust_ext").glob("*.py"):
        unlisted = _private_uses(path) - listed - own
        assert not unlisted, f"{path.name} uses private names not in PRIVATE_API: {unlisted}"


async def test_heartbeats_go_on_while_the_assignment_callback_rebuilds() -> None:
    """aiokafka stops heartbeating until the assignment callback returns; the consumer thread
    starts them again first, so a long rebuild does not cost the membership."""
    from streams.runtime.faust_ext.consumer import _ConsumerThread

    events: list[str] = []

    class Coordinator:
        def _start_heartbeat_task(self) -> None:
            events.append("heartbeats")

    class AioConsumer:
        _coordinator = Coordinator()

    class Consumer:
        async def threadsafe_partitions_assigned(self, loop: object, assigned: object,
                                                 generation: int) -> None:
            events.append("rebuild")

    thread = object.__new__(_ConsumerThread)
    thread.__dict__.update(consumer=Consumer(), thread_loop=None)
    thread._ensure_consumer = lambda: AioConsumer()  # type: ignore[method-assign]
    await thread.on_partitions_assigned(set(), 3)
    assert events == ["heartbeats", "rebuild"]


class _ClosingConsumer:
    """The parts of an aiokafka consumer that ``finish_close`` closes, recording the order."""

    def __init__(self, events: list[str]) -> None:
        class Closer:
            def __init__(self, *names: str) -> None:
                for name in names:
                    async def step(name: str = name) -> None:
                        events.append(name)
                    setattr(self, name, step)

        self._coordinator = Closer("_stop_heartbeat_task", "_stop_commit_offsets_refresh_task",
                                   "_maybe_leave_group")
        self._fetcher = Closer("close")
        self._client = Closer("close")


async def test_a_stop_during_a_rebalance_still_shuts_the_thread_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka's stop() re-raises the CancelledError of an assignment callback that the stop
    cancelled; the thread finishes the consumer's close (leaving the group) and returns, so
    mode goes on to tell the app it shut down instead of the worker waiting 60 s."""
    import asyncio

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.runtime.faust_ext.consumer import _ConsumerThread

    never = asyncio.Event()
    hang = False

    async def cancelled_stop(self: object) -> None:
        if hang:
            await never.wait()
        raise asyncio.CancelledError

    monkeypatch.setattr(AIOKafkaConsumerThread, "on_thread_stop", cancelled_stop)
    events: list[str] = []
    thread = object.__new__(_ConsumerThread)
    thread.__dict__.update(_consumer=_ClosingConsumer(events))
    await thread.on_thread_stop()
    assert events == ["_stop_heartbeat_task", "_stop_commit_offsets_refresh_task",
                      "_maybe_leave_group", "close", "close"]

    # The thread's own cancellation is not swallowed.
    hang = True
    task = asyncio.ensure_future(thread.on_thread_stop())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_workers_producer_is_idempotent() -> None:
    """Every record of contract §4 and §4b (and every other write) goes through it."""
    from streams.runtime.worker import build_worker
    from streams.settings import Settings

    worker = build_worker(Settings(data_dir="/tmp/segtest-idempotent"))
    extra = worker.faust_app.producer._settings_extra()
    assert (extra["enable_idempotence"], extra["acks"]) == (True, "all")


def test_faust_still_believes_a_failed_commit() -> None:
    """faust_ext's BatchConsumer undoes it (``undo_failed_commit``); when Faust records
    committed offsets only on success, this fails and the workaround can go."""
    import inspect
    import textwrap

    from faust.transport.consumer import Consumer

    tree = ast.parse(textwrap.dedent(inspect.getsource(Consumer._commit_offsets)))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "did_commit" in ast.unparse(node.test):
            guarded.update(id(n) for n in ast.walk(node))
    updates = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and ast.unparse(n.func) == "self._committed_offset.update"]
    assert updates and not any(id(n) in guarded for n in updates)


def test_a_failed_commit_is_undone_unless_something_set_the_offset_since() -> None:
    from streams.runtime.faust_ext.consumer import undo_failed_commit

    # a, b: never committed before, then a failed commit of 10 and 20; c: 5 before, failed 9;
    # d: failed 7, then a seek set 3 from the broker; e: 4 before and 4 attempted again.
    committed: dict[str, int | None] = {"a": 10, "b": 20, "c": 9, "d": 3, "e": 4}
    before: dict[str, int | None] = {"a": None, "b": None, "c": 5, "d": None, "e": 4}
    undo_failed_commit(committed, before, {"a": 10, "b": 20, "c": 9, "d": 7, "e": 4})
    assert committed == {"c": 5, "d": 3, "e": 4}


def test_the_partitions_of_a_raced_commit_are_those_still_recorded_at_the_attempt() -> None:
    from streams.runtime.faust_ext.consumer import raced_commit

    # a: Faust recorded 10 after the seek had set the broker's 4; b: the seek set 6 after the
    # record; c: not attempted.
    assert raced_commit({"a": 10, "b": 6, "c": 2}, {"a": 10, "b": 9}) == {"a"}


async def test_after_a_commit_a_seek_overlapped_the_broker_offsets_are_recorded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchConsumer._commit_offsets around Faust's: after a seek (rebalance) while Faust
    awaited the commit, the partition's committed offset is the broker's (read again), not
    the one attempted."""
    from faust.transport.consumer import Consumer

    from streams.runtime.faust_ext.consumer import BatchConsumer

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True
                           ) -> bool:
        # Faust's, as it goes in a rebalance: the revocation and the seek happen while it
        # awaits the broker, then it records the offsets it attempted.
        self._epoch += 1  # (BatchConsumer.on_partitions_revoked / perform_seek)
        self._committed_offset["p0"] = 4  # the seek read the broker's offset
        self._committed_offset.update(offsets)
        return True

    reseeks: list[set[str]] = []

    async def reseek(tps: set[str]) -> None:  # asks the broker: it holds 4
        reseeks.append(tps)
        consumer._committed_offset.update({tp: 4 for tp in tps})

    monkeypatch.setattr(Consumer, "_commit_offsets", faust_commit)
    consumer = BatchConsumer.__new__(BatchConsumer)
    consumer._committed_offset = {"p0": 4}
    consumer._epoch = 0
    monkeypatch.setattr(consumer, "_reseek", reseek)
    assert await consumer._commit_offsets({"p0": 10}) is True
    assert (consumer._committed_offset, reseeks) == ({"p0": 4}, [{"p0"}])



async def test_handled_records_count_as_a_streams_input_for_fausts_idle_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's verify_event_path logs "Stream has not started processing" (ERROR, every
    check) for a partition with records whose ``monitor.stream_inbound_time`` is unset 5
    minutes after the start: the handler's records never reach a stream, so _handle sets it."""
    import inspect
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.runtime.faust_ext.consumer import BatchConsumer, _Fetch

    assert "monitor.stream_inbound_time.get(tp)" in inspect.getsource(
        AIOKafkaConsumerThread.verify_event_path)
    from faust.types import TP

    tp = TP("in", 3)
    record = SimpleNamespace(topic="in", partition=3, offset=7)

    async def handler(batch: list[Any]) -> list[Any]:
        return batch

    monitor = SimpleNamespace(stream_inbound_time={})
    consumer = BatchConsumer.__new__(BatchConsumer)
    consumer.app = cast(Any, SimpleNamespace(
        consumer_generation_id=1, batch_handler=handler, monitor=monitor,
        topics=SimpleNamespace(acks_enabled_for=lambda topic: False)))
    consumer._epoch, consumer._handled_next, consumer._read_offset = 0, None, {}
    monkeypatch.setattr(BatchConsumer, "flow_active", True, raising=False)
    fetch = _Fetch(1, 0, [record], {tp: 7})
    before = time.monotonic()
    await consumer._handle(fetch, {})
    assert monitor.stream_inbound_time[tp] >= before
