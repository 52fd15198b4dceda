"""`GET /segments/stream` (contract section 7): server-sent events of a query's top segments.

Every open stream of a worker belongs to the group of its query (program, type, basis,
threshold, size). Each query's answer is computed once per interval from every partition's
owner (as `GET /segments?force_refresh=true` would), for the largest size any of its groups
follows (groups of one query with other sizes share it), compared with the last one sent, and the
difference goes to every client of the group as one ``update``: the segments that entered the
top list or changed (``upserts``) and those that left it (``removed``). A client starts from the
group's last answer (``snapshot``), so applying the updates in order gives exactly each answer.

Every client has a bounded queue: one that does not keep up is disconnected, never buffered
without bound. A comment line goes out when a client has had nothing for ``heartbeat_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.answers import Answer
from api.errors import ServiceUnavailable
from api.params import SegmentsQuery
from streams.domain.rows import SegmentRow

logger = logging.getLogger(__name__)

HEARTBEAT = b": keep-alive\n\n"
QUEUE_MAX = 16  # events waiting for a client; one more and it is disconnected
FRESHNESS_EVERY_S = 5.0  # an unchanged answer is still sent this often (its as_of and lag)

_Key = tuple[str, str, str, float, int, str]


def item(row: SegmentRow, min_weight: float) -> dict[str, Any]:
    """A SegmentCount of the contract."""
    return {"segment_type": row.segment_type, "segment_basis": row.segment_basis,
            "segment_basis_id": row.segment_basis_id, "action_type": row.action_type,
            "name": row.name, "user_count": row.user_count, "strength": row.strength,
            "min_weight": min_weight}


def event(name: str, event_id: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (name.encode(), event_id.encode(),
                                                   orjson.dumps(data))


@dataclass(eq=False)
class Client:
    """One open stream: the events waiting for it, and how to cut it off."""

    abort: Callable[[], None]
    key: _Key
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    dropped: bool = False

    def offer(self, data: bytes) -> bool:
        """Queue an event; False (and the client cut off) if it does not keep up."""
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped = True
            self.abort()
            return False
        return True


class _Group:
    """The clients of one query and the last answer they were all sent."""

    def __init__(self, q: SegmentsQuery, epoch: str) -> None:
        self.q = q
        self.epoch = epoch
        self.clients: set[Client] = set()
        self.seq = 0
        self.top: dict[tuple[str, str], SegmentRow] = {}
        self.order: list[SegmentRow] = []
        self.total = 0
        self.as_of_ms = 0
        self.lag = 0
        self.stale = False
        self.sent_at = 0.0

    def reset(self, answer: Answer) -> None:
        self.order = answer.rows[:self.q.size]
        self.top = {(r.segment_basis_id, r.action_type): r for r in self.order}
        self.total, self.as_of_ms, self.lag = answer.total, answer.as_of_ms, answer.lag
        self.stale = answer.stale
        self.seq += 1
        self.sent_at = time.monotonic()

    def snapshot(self) -> bytes:
        m = self.q.min_weight
        data = {"items": [item(r, m) for r in self.order], "total": self.total, "page": 1,
                "size": self.q.size, "as_of": self.as_of_ms, "lag": self.lag}
        if self.stale:
            data["stale"] = True
        return event("snapshot", f"{self.epoch}-{self.seq}", data)

    def update(self, answer: Answer) -> bytes | None:
        """The update from the last answer to this one (None: nothing to say yet)."""
        new_order = answer.rows[:self.q.size]
        new_top = {(r.segment_basis_id, r.action_type): r for r in new_order}
        upserts = [r for key, r in new_top.items() if self.top.get(key) != r]
        removed = [list(key) for key in self.top if key not in new_top]
        changed = bool(upserts or removed or answer.total != self.total
                       or answer.stale != self.stale)
        if not changed and time.monotonic() - self.sent_at < FRESHNESS_EVERY_S:
            return None
        self.reset(answer)
        m = self.q.min_weight
        data = {"as_of": answer.as_of_ms, "lag": answer.lag, "total": answer.total,
                "upserts": [item(r, m) for r in upserts], "removed": removed}
        if answer.stale:
            data["stale"] = True
        return event("update", f"{self.epoch}-{self.seq}", data)


Compute = Callable[[SegmentsQuery], Awaitable[Answer]]


class StreamHub:
    def __init__(self, compute: Compute, interval_s: float, max_clients: int,
                 on_count: Callable[[int], None] = lambda n: None) -> None:
        self._compute = compute
        self._interval_s = interval_s
        self._max_clients = max_clients
        self._on_count = on_count
        self._groups: dict[_Key, _Group] = {}
        self._clients = 0
        self._epoch = format(int(time.time() * 1000), "x")
        self._task: asyncio.Task[None] | None = None

    @property
    def clients(self) -> int:
        return self._clients

    async def open(self, q: SegmentsQuery, abort: Callable[[], None]) -> tuple[Client, bytes]:
        """A new client of ``q`` and its snapshot; ServiceUnavailable when the worker holds
        as many streams as it may, or cannot answer (rebalancing)."""
        if self._clients >= self._max_clients:
            raise ServiceUnavailable(f"this worker serves {self._max_clients} streams already",
                                     5)
        key = (q.program_id, q.segment_type, q.segment_basis, q.min_weight, q.size,
               q.consistency)
        group = self._groups.get(key)
        if group is None:
            answer = await self._compute(q)
            group = self._groups.get(key)  # another client may have made it meanwhile
            if group is None:
                group = self._groups[key] = _Group(q, self._epoch)
                group.reset(answer)
        client = Client(abort, key)
        group.clients.add(client)
        self._count(+1)
        self._start()
        return client, group.snapshot()

    def close(self, client: Client) -> None:
        group = self._groups.get(client.key)
        if group is not None and client in group.clients:
            group.clients.discard(client)
            self._count(-1)
            if not group.clients:
                del self._groups[client.key]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for group in self._groups.values():
            for client in group.clients:  # the end of their streams
                with contextlib.suppress(asyncio.QueueFull):
                    client.queue.put_nowait(None)

    def _count(self, delta: int) -> None:
        self._clients += delta
        self._on_count(self._clients)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._groups:
            await asyncio.sleep(self._interval_s)
            queries: dict[tuple[str, str, str, float, str], list[_Group]] = {}
            for group in list(self._groups.values()):
                if group.clients:
                    q = group.q
                    queries.setdefault((q.program_id, q.segment_type, q.segment_basis,
                                        q.min_weight, q.consistency), []).append(group)
            for groups in queries.values():
                widest = max(groups, key=lambda g: g.q.size).q
                try:
                    answer = await self._compute(widest)
                except ServiceUnavailable:
                    continue  # rebalancing: the clients keep the last answer
                except Exception:
                    logger.exception("computing a stream's answer failed")
                    continue
                for group in groups:
                    data = group.update(answer)
                    if data is not None:
                        for client in list(group.clients):
                            client.offer(data)
