"""Static membership (SEGMENTS_INSTANCE_ID): the worker's consumer joins with a
group.instance.id and a session long enough for a restart, and stopping it sends no LeaveGroup
(what makes a restart within the session rebalance-free)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams.runtime.worker import build_worker
from streams.settings import Settings


def test_the_instance_id_is_the_consumer_groups_group_instance_id() -> None:
    static = build_worker(Settings.from_env({"SEGMENTS_INSTANCE_ID": "segments-1",
                                             "SEGMENTS_DATA_DIR": "/tmp/segtest-static"}))
    assert static.faust_app.conf.consumer_group_instance_id == "segments-1"
    assert static.faust_app.conf.broker_session_timeout == 30.0
    dynamic = build_worker(Settings(data_dir="/tmp/segtest-dynamic"))
    assert dynamic.faust_app.conf.consumer_group_instance_id is None
    assert dynamic.faust_app.conf.broker_session_timeout == 6.0


async def _leave_requests(group_instance_id: str | None) -> list[Any]:
    sent: list[Any] = []

    async def send_req(request: Any) -> None:
        sent.append(request)

    coordinator = SimpleNamespace(generation=3, member_id="m-1", group_id="g",
                                  _group_instance_id=group_instance_id, _send_req=send_req,
                                  reset_generation=lambda: None)
    # What aiokafka's consumer.stop() ends with (GroupCoordinator.close).
    await GroupCoordinator._maybe_leave_group(coordinator)  # type: ignore[arg-type]
    return sent


async def test_a_static_member_does_not_leave_the_group_when_it_stops() -> None:
    assert await _leave_requests("segments-1") == []
    assert len(await _leave_requests(None)) == 1  # a dynamic member leaves: a rebalance at once
