"""`segments demo`: the main job on an embedded default.

Starts what is missing (a local Kafka broker, a worker), produces sample events, prints the top
segments from GET /segments, and keeps serving until Ctrl-C; then stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from streams.runtime.kafka_clients import client_options
from streams.settings import Settings
from streams.tools import kafka_local
from streams.tools.probes import wait_http_ready
from streams.tools.produce import base_ts_ending_now, generate, produce

console = Console()


async def _get(url: str, params: dict[str, str], program: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            url, params=params, headers={"program-id": program}) as resp:
        return resp.status, await resp.json(content_type=None)


async def _wait_processed(url: str, program: str, timeout_s: float) -> Any:
    """Poll with force_refresh until the answer stops changing (the worker caught up)."""
    deadline = time.monotonic() + timeout_s
    previous: Any = None
    params = {"force_refresh": "true", "size": "10", "min_weight": "0.5"}
    while time.monotonic() < deadline:
        status, body = await _get(url + "/segments", params, program)
        if status == 200 and body == previous and body["total"]:
            return body
        previous = body if status == 200 else None
        await asyncio.sleep(1.0)
    return previous


def _print(body: Any, program: str) -> None:
    table = Table(title=f"Top growth segments by label, program {program!r}, min_weight 0.5")
    for col in ("label", "action", "name", "users", "strength"):
        table.add_column(col, justify="right" if col in ("users", "strength") else "left")
    for item in body["items"]:
        table.add_row(item["segment_basis_id"], item["action_type"], item["name"],
                      str(item["user_count"]), f"{item['strength']:.3f}")
    console.print(table)
    console.print(f"{body['total']} segments in all")


SECURITY_ENV = ("KAFKA_SECURITY_", "KAFKA_SASL_", "KAFKA_SSL_")
TRICKLE_RATE = 20  # events a second while the demo serves


async def _trickle(bootstrap: str, topic: str, stop: threading.Event,
                   kafka: dict[str, Any]) -> None:
    """A slow stream of new events until ``stop``, so that the live page moves."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, **kafka)
    await producer.start()
    try:
        seed = int(time.time())
        while not stop.is_set():
            for record in generate(TRICKLE_RATE, seed=seed, base_ts=int(time.time() * 1000)):
                await producer.send(topic, record.value, key=record.key,
                                    timestamp_ms=record.timestamp_ms)
            seed += 1
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()


def run_demo(port: int = 9092, web_port: int = 6066, events: int = 20_000,
             keep_serving: bool = True) -> int:
    settings = Settings.from_env()
    started_kafka = False
    bootstrap = settings.bootstrap_servers
    kafka = client_options(settings.kafka_security)  # (a broker of its own: plaintext)
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        kafka = {}
        state, started_kafka = kafka_local.start(port=port)
        bootstrap = state.bootstrap
        console.print(f"[bold]Kafka[/] {'started' if started_kafka else 'already running'} "
                      f"at {bootstrap}")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, SEGMENTS_WEB_PORT=str(web_port))
    if not kafka:  # (its own broker is plaintext)
        env = {k: v for k, v in env.items() if not k.startswith(SECURITY_ENV)}
    url = f"http://127.0.0.1:{web_port}"
    worker: subprocess.Popen[bytes] | None = None
    data_dir = kafka_local.default_data_dir().parent
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if kafka_local.port_free(web_port):
            log = open(data_dir / "demo-worker.log", "ab")  # noqa: SIM115
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
            log.close()
            console.print(f"[bold]worker[/] starting (log: {data_dir / 'demo-worker.log'})")
        else:
            console.print(f"[bold]worker[/] already serving on {url}")
        asyncio.run(wait_http_ready(url, worker, 120, poll_s=0.3))
        console.print(f"[bold]producing[/] {events} sample events")
        n = asyncio.run(produce(bootstrap, settings.input_topic,
                                generate(events, seed=int(time.time()),
                                         base_ts=base_ts_ending_now(events)), total=events,
                                progress=sys.stdout.isatty(), kafka=kafka))
        console.print(f"produced {n} events")
        body = asyncio.run(_wait_processed(url, "program-0", 120))
        if body:
            _print(body, "program-0")
        console.print(f"\n[bold]Live page[/]: {url}/?program_id=program-0&min_weight=0.5\n"
                      f"GET /segments is served at {url}/segments, e.g.\n"
                      f"  curl -H 'program-id: program-0' '{url}/segments?min_weight=0.7'\n"
                      f"  stream: curl -N '{url}/segments/stream?program_id=program-0&size=5'\n"
                      f"  metrics: {url}/metrics   OpenAPI: {url}/openapi.json")
        if keep_serving and worker is not None:
            stop = threading.Event()
            trickle = threading.Thread(
                target=asyncio.run, args=(_trickle(bootstrap, settings.input_topic, stop, kafka),),
                daemon=True)
            trickle.start()
            console.print(f"serving until Ctrl-C; {TRICKLE_RATE} new events a second keep the "
                          "page moving ...")
            with contextlib.suppress(KeyboardInterrupt):
                worker.wait()
            stop.set()
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started_kafka:
            kafka_local.stop()
            console.print("Kafka stopped")
