"""`segments watch` in a terminal (contract 4c), as a user runs it: it reads `segment-counts`
from the beginning, shows the top segments of the program in the contract's order, and moves
when new records arrive (a tombstone removes a segment; a late, older version changes
nothing). The records are written here in the contract's format (the worker's own:
tests/integration/test_schemas.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.e2e.readme import python_block
from tests.support.pty_process import PtyProcess
from tests.support.terminal import last_frame, plain, table_rows

SEGMENTS = str(Path(sys.executable).parent / "segments")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def key(program: str, basis_id: str, m: float = 0.5, segment_type: str = "growth") -> bytes:
    return orjson.dumps([program, segment_type, "label", basis_id, "view", m])


def value(program: str, basis_id: str, count: int, version: int, m: float = 0.5,
          segment_type: str = "growth") -> bytes:
    return orjson.dumps({
        "program_id": program, "segment_type": segment_type, "segment_basis": "label",
        "segment_basis_id": basis_id, "action_type": "view", "name": f"Label {basis_id}",
        "min_weight": m, "user_count": count, "strength": 0.8, "as_of": 1_767_225_600_000,
        "version": version})


Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def count(program: str, basis_id: str, user_count: int, version: int, m: float = 0.5,
          segment_type: str = "growth") -> Record:
    return (key(program, basis_id, m, segment_type),
            value(program, basis_id, user_count, version, m, segment_type), [])


def gone(program: str, basis_id: str, version: int) -> Record:
    """A tombstone (its version in a header, as the worker writes it)."""
    return key(program, basis_id), None, [("version", str(version).encode())]


async def write(bootstrap: str, topic: str, records: list[Record], create: bool = False
                ) -> None:
    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 3, 1, topic_configs={
                "cleanup.policy": "compact"})])
        finally:
            await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for k, v, headers in records:
            await producer.send_and_wait(topic, v, key=k, headers=headers)
    finally:
        await producer.stop()


@pytest.fixture
def watch_env(kafka_bootstrap: str) -> Iterator[tuple[dict[str, str], str]]:
    topic = f"watch-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "SEGMENTS_COUNTS_TOPIC": topic, "SEGMENTS_WATCH_THRESHOLDS": "0.5,0.7"}
    yield env, topic


TITLE = "program p · growth labels · min_weight 0.5"
FIRST = [
    count("p", "l1", 10, 1), count("p", "l2", 30, 1), count("p", "l3", 20, 1),
    count("p", "l4", 20, 1), count("p", "l2", 40, 2),
    gone("p", "l4", 2),  # emptied at 0.5: not shown
    gone("p", "l1", 1),  # a tombstone not newer than l1's count: dropped
    count("p", "l9", 99, 1, m=0.7),  # another threshold
    count("q", "l9", 99, 1),  # another program
    count("p", "l9", 99, 1, segment_type="base"),  # another type
]


def shown(output: bytes) -> tuple[list[list[str]], str]:
    """The rows (basis_id, count, moved) and the status line of the last frame drawn."""
    frame = last_frame(plain(output), TITLE)
    rows = [[cells[1], cells[4], cells[6]] for cells in table_rows(frame)]
    return rows, frame.strip().splitlines()[-1] if frame.strip() else ""


async def test_watch_shows_the_top_segments_and_follows_new_records(
        kafka_bootstrap: str, watch_env: tuple[dict[str, str], str]) -> None:
    env, topic = watch_env
    await write(kafka_bootstrap, topic, FIRST, create=True)
    watcher = PtyProcess([SEGMENTS, "watch", "--program", "p", "--size", "3"], env)
    try:
        def bootstrapped(output: bytes) -> bool:
            rows, status = shown(output)
            return status.endswith("live") and len(rows) == 3

        assert await asyncio.to_thread(watcher.wait_for, bootstrapped, 60), plain(
            bytes(watcher.output))[-3000:]
        rows, status = shown(bytes(watcher.output))
        assert rows == [["l2", "40", ""], ["l3", "20", ""], ["l1", "10", ""]]
        assert "3 segments" in status and "0 skipped" in status

        await write(kafka_bootstrap, topic, [
            count("p", "l1", 55, 3),  # up to the top
            gone("p", "l3", 2),  # emptied
            count("p", "l2", 1, 1),  # a late write of an older version: dropped
            count("p", "l5", 5, 1),
            count("p", "l2", 35, 3),
        ])

        def moved(output: bytes) -> bool:
            return shown(output)[0] == [["l1", "55", "+45"], ["l2", "35", "-5"],
                                        ["l5", "5", ""]]

        assert await asyncio.to_thread(watcher.wait_for, moved, 30), shown(
            bytes(watcher.output))
        assert await asyncio.to_thread(watcher.interrupt) in (0, 130)
    finally:
        watcher.close()
    assert b"Traceback" not in watcher.output

    # --once: the same table printed once the topic is read to its end, for scripts
    once = await asyncio.to_thread(
        subprocess.run, [SEGMENTS, "watch", "--program", "p", "--threshold", "0.5", "--size", "2",
                         "--once"], env=env, capture_output=True, timeout=60, check=False)
    assert once.returncode == 0, once.stderr
    assert [[c[1], c[4]] for c in table_rows(once.stdout.decode())] == [["l1", "55"],
                                                                        ["l2", "35"]]


async def test_the_readme_consumer_example_holds_the_same_table(
        kafka_bootstrap: str, watch_env: tuple[dict[str, str], str]) -> None:
    env, topic = watch_env
    await write(kafka_bootstrap, topic, FIRST, create=True)
    code = python_block("AIOKafkaConsumer(").replace('"segment-counts"', repr(topic)).replace(
        '"127.0.0.1:9092"', repr(kafka_bootstrap)).replace('watch("program-0")', 'watch("p")')
    proc = await asyncio.create_subprocess_exec(sys.executable, "-u", "-c", code, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    want = "[('l2', 'view', 40), ('l3', 'view', 20), ('l1', 'view', 10)]"
    lines: list[str] = []
    try:
        while not lines or lines[-1] != want:  # (then nothing else: the table is complete)
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip())
        with pytest.raises(TimeoutError):
            lines.append(
                (await asyncio.wait_for(proc.stdout.readline(), 1.5)).decode().strip())
    finally:
        proc.kill()
        await proc.wait()
    assert lines[-1] == want, lines


def test_an_unreachable_broker_is_a_message_not_a_traceback() -> None:
    proc = subprocess.run([SEGMENTS, "watch", "--program", "p", "--bootstrap", "127.0.0.1:1",
                           "--once"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "segments: error: Kafka at 127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr
