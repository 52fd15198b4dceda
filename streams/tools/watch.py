"""`segments watch`: the reference consumer of `segment-counts` (contract section 4c).

It reads the compacted topic from the beginning (every partition, no consumer group, nothing
committed) into a CountsTable, which is then the current count of every segment of the view,
and follows the topic live, redrawing the top segments in a rich Live table at most
``REDRAW_S`` apart. The README's ten-line aiokafka example does the same."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.runtime.kafka_clients import start_consumer
from streams.tools.counts_table import CountsTable
from streams.tools.exceptions import LocalServiceError
from streams.tools.probes import topic_partitions

REDRAW_S = 0.25
POLL_MS = 250
TOPIC_WAIT_S = 1.0  # between looks for a topic that does not exist yet
MAX_POLL_RECORDS = 10_000  # records held at once between two applies


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def render(table: CountsTable, size: int, topic: str, phase: str) -> Group:
    """The view's title, its top ``size`` segments in the contract's order and a status line."""
    basis = table.segment_basis + "s"
    title = Text(f"{topic} · program {table.program_id} · {table.segment_type} {basis} · "
                 f"min_weight {table.min_weight:g}", style="bold")
    grid = Table(show_edge=False, pad_edge=False, expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"), ("segment_basis_id", "left"), ("action_type", "left"), ("name", "left"),
        ("user_count", "right"), ("strength", "right"), ("moved", "right"))
    for name, justify in columns:
        grid.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", max_width=40)
    for rank, held in enumerate(table.top(size), start=1):
        row = held.row
        moved = (Text(f"+{held.delta}", style="green") if held.delta > 0
                 else Text(str(held.delta), style="red") if held.delta < 0 else Text(""))
        grid.add_row(str(rank), row.segment_basis_id, row.action_type, row.name,
                     str(row.user_count), f"{row.strength:.4f}", moved)
    status = Text(f"{len(table)} segments · as of {_time(table.as_of)} · {table.records} "
                  f"records read · {table.skipped} skipped · {phase}", style="dim")
    return Group(title, grid, status)


async def follow(bootstrap: str, topic: str, table: CountsTable,
                 on_change: Callable[[str], None], *, once: bool = False,
                 kafka: dict[str, Any] | None = None) -> None:
    """Read ``topic`` from the beginning into ``table``, then follow it (until cancelled; with
    ``once``, return once every partition is read to the end it had at the start).
    ``on_change(phase)`` is called when the view or the phase changed, at most ``REDRAW_S``
    apart (and once when the end is reached)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **(kafka or {}))
    await start_consumer(consumer)
    try:
        tps = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic, on_change,
                                                                    kafka or {})]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        reading = set(tps)  # partitions not yet read to the end they had at the start
        phase = "reading from the beginning"
        on_change(phase)
        drawn_at = time.monotonic()
        dirty = False
        while True:
            batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_POLL_RECORDS)
            for messages in batch.values():
                for message in messages:
                    dirty |= table.apply(message.key, message.value, message.headers)
            if reading:
                for tp in list(reading):
                    if await consumer.position(tp) >= ends[tp]:
                        reading.discard(tp)
                if not reading:
                    table.settle()
                    phase = "live"
                    on_change(phase)
                    drawn_at, dirty = time.monotonic(), False
                    if once:
                        return
            if dirty and time.monotonic() - drawn_at >= REDRAW_S:
                on_change(phase)
                drawn_at, dirty = time.monotonic(), False
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str, on_change: Callable[[str], None],
                      kafka: dict[str, Any]) -> list[int]:
    """The topic's partitions, once it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        while not (partitions := await topic_partitions(admin, topic)):
            on_change("waiting for the topic to exist")
            await asyncio.sleep(TOPIC_WAIT_S)
        return partitions
    finally:
        await admin.close()


async def watch(bootstrap: str, topic: str, table: CountsTable, size: int, *, once: bool,
                kafka: dict[str, Any] | None = None, console: Console | None = None) -> None:
    """`segments watch`: a live table until Ctrl-C; with ``once``, the table after reading the
    topic to its end, printed once."""
    try:
        await _watch(bootstrap, topic, table, size, once=once, kafka=kafka,
                     console=console or Console())
    except KafkaError as exc:  # (unreachable, refused credentials: a message, no traceback)
        raise LocalServiceError(f"Kafka at {bootstrap}: {exc!r}") from None


async def _watch(bootstrap: str, topic: str, table: CountsTable, size: int, *, once: bool,
                 kafka: dict[str, Any] | None, console: Console) -> None:
    if once:
        await follow(bootstrap, topic, table, lambda phase: None, once=True, kafka=kafka)
        console.print(render(table, size, topic, "read to the end"))
        return
    with Live(render(table, size, topic, "connecting"), console=console, auto_refresh=False,
              vertical_overflow="visible") as live:
        await follow(bootstrap, topic, table,
                     lambda phase: live.update(render(table, size, topic, phase), refresh=True),
                     kafka=kafka)
