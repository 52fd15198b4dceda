"""Probe latency (contract §12) with a large state: GET /livez, /readyz, /healthz and /metrics
answered by one worker holding N recommendations, idle and while it rebuilds them all from the
changelog after a restart.

    python benchmarks/bench_probes.py [--recommendations 3000000] [--shape long-tail|wide]

Starts its own broker (or uses KAFKA_BOOTSTRAP_SERVERS), one worker; produces the
recommendations (long-tail: families of 2-5 users, the most families per recommendation, the
most work per recommendation at the end of a rebuild; wide: 100-user families), waits until
they are applied, then probes sequentially over one keep-alive connection (as a kubelet or a
load balancer does, one request at a time): idle, then from the restarted worker's first answer
until its /healthz says 200 again. Prints and writes benchmarks/probes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.tools import kafka_local
from streams.tools.bench import (
    Run,
    WorkerProc,
    _create_topic,
    _pct,
    api_records,
    long_tail_records,
    wait_no_lag,
)
from streams.tools.produce import produce

PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


async def _probe(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


def _summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    return {path: {"n": len(v), "p50_ms": round(_pct(v, 0.5) * 1000, 2),
                   "p99_ms": round(_pct(v, 0.99) * 1000, 2),
                   "max_ms": round(max(v) * 1000, 2) if v else None}
            for path, v in samples.items()}


async def idle(worker: WorkerProc, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for path in PATHS:
                took, status = await _probe(session, worker.url + path)
                assert status == 200, (path, status)
                samples[path].append(took)
            await asyncio.sleep(0.002)
    return _summary(samples)


async def during_rebuild(worker: WorkerProc, timeout_s: float) -> dict[str, Any]:
    """From the worker's first HTTP answer until /healthz answers 200: every probe's latency
    (statuses counted), a round every 5 ms."""
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    statuses: dict[str, dict[int, int]] = {p: {} for p in PATHS}
    deadline = time.perf_counter() + timeout_s
    first = None
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            try:
                if first is None:
                    await _probe(session, worker.url + "/livez")
                    first = time.perf_counter()
                    continue
                done = False
                for path in PATHS:
                    took, status = await _probe(session, worker.url + path)
                    samples[path].append(took)
                    statuses[path][status] = statuses[path].get(status, 0) + 1
                    done = done or (path == "/healthz" and status == 200)
                if done:
                    break
            except aiohttp.ClientError:
                if first is not None:
                    raise
            await asyncio.sleep(0.005)
        else:
            raise RuntimeError("the worker was not ready in time")
    assert first is not None
    return {"seconds_probed": round(time.perf_counter() - first, 1),
            "probes": _summary(samples), "statuses": statuses}


async def main(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    n = args.recommendations
    out: dict[str, Any] = {"recommendations": n, "shape": args.shape}
    await _create_topic(run.bootstrap, run.topic, **run.kafka)
    worker = WorkerProc(run, kafka_local.free_port())
    worker.start()
    await worker.wait_ready()
    records = (long_tail_records(n, seed=3) if args.shape == "long-tail"
               else api_records(f"wide-{run.app_id}", n // 100, n, seed=3))
    t0 = time.perf_counter()
    print(f"producing and applying {n:,} recommendations ({args.shape})", flush=True)
    await produce(run.bootstrap, run.topic, records, total=n, kafka=run.kafka)
    await wait_no_lag(run, timeout_s=3600)
    out["load_s"] = round(time.perf_counter() - t0, 1)
    out["held"] = await worker.recommendations()
    out["rss_mib"] = round(worker.rss() / 2**20)
    print(f"held {out['held']:,} ({out['rss_mib']} MiB) after {out['load_s']} s", flush=True)
    out["idle"] = await idle(worker, args.rounds)
    print("idle", json.dumps(out["idle"]), flush=True)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)  # a graceful leave: no session timeout to wait
    worker.proc.wait(120)
    t0 = time.perf_counter()
    worker.start()
    out["rebuild"] = await during_rebuild(worker, timeout_s=1800)
    out["restart_to_ready_s"] = round(time.perf_counter() - t0, 1)
    out["held_after_rebuild"] = await worker.recommendations()
    print("rebuild", json.dumps(out["rebuild"]), flush=True)
    out["idle_after_rebuild"] = await idle(worker, args.rounds)
    worker.stop()
    return out


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recommendations", type=int, default=3_000_000)
    parser.add_argument("--shape", choices=("long-tail", "wide"), default="long-tail")
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/probes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segments-probes-") as tmp:
        work = Path(tmp)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        own = bootstrap is None
        try:
            if own:
                state, _ = kafka_local.start(port=kafka_local.free_port(),
                                             data_dir=work / "kafka")
                bootstrap = state.bootstrap
            assert bootstrap is not None
            out = asyncio.run(main(args, Run(bootstrap, work, None)))
        finally:
            if own:
                kafka_local.stop(work / "kafka")
    out["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["machine"] = f"{os.cpu_count()} cores, Python {platform.python_version()}, " \
                     f"load average {os.getloadavg()[0]:.1f}"
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli()
