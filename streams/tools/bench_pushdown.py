"""`segments bench`, phase 9: answers that cost what the page holds.

One program with S segments on W workers (3), while `segments produce` sends events of that
same program (so every partition's memo keeps changing) at a given rate (half the ingest rate
measured in phase 2): GET /segments force_refresh p50/p99 for page 1 and page 50 of size 100,
one request at a time, round robin over the workers; the bytes a worker sends for its part of
those pages (``/internal/segments?limit=page x size``) and, for comparison, without a limit;
cached p50/p99 with 16 clients walking pages 1-50; and the computations (metric
``segments_query_computations_total``) that 16 identical concurrent misses, then 16 identical
concurrent force_refresh, cost each worker.

Where the time goes, alongside: during each measured loop, every worker's ``/livez`` (which
does nothing: the time the event loop takes to get to a request) is timed every 25 ms, and
the workers' own handling times (``segments_http_request_duration_seconds``, their mean over
the loop) of ``/segments`` and of ``/internal/segments`` are read from their metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from typing import Any

import aiohttp

from streams.tools import kafka_local
from streams.tools.produce import base_ts_ending_now, produce

SIZE = 100
DEEP_PAGE = 50


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def _counter(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " "))


async def _handling(session: aiohttp.ClientSession, urls: list[str]
                    ) -> dict[str, tuple[float, float]]:
    """Route -> (seconds, requests) of its 200s, summed over the workers."""
    name = "segments_http_request_duration_seconds"
    out: dict[str, tuple[float, float]] = {}
    for url in urls:
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            for k, suffix in enumerate(("_sum{", "_count{")):
                if line.startswith(name + suffix) and 'status="200"' in line:
                    route = line.split('route="', 1)[1].split('"', 1)[0]
                    sums = list(out.get(route, (0.0, 0.0)))
                    sums[k] += float(line.split()[-1])
                    out[route] = (sums[0], sums[1])
    return out


class _Observer:
    """Times ``/livez`` on every worker every 25 ms, and reads the workers' handling times,
    over one measured loop. Its probes have connections of their own: in the clients' pool they
    waited for a walker's connection to come free, which timed the bench, not the workers."""

    def __init__(self, session: aiohttp.ClientSession, urls: list[str]) -> None:
        self._session = session
        self._probes: aiohttp.ClientSession | None = None
        self._urls = urls
        self.livez: list[float] = []
        self.handled: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._before: dict[str, tuple[float, float]] = {}

    async def __aenter__(self) -> _Observer:
        self._before = await _handling(self._session, self._urls)
        self._probes = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._poll(self._probes))
        return self

    async def _poll(self, probes: aiohttp.ClientSession) -> None:
        while True:
            for url in self._urls:
                t0 = time.perf_counter()
                async with probes.get(url + "/livez") as resp:
                    await resp.read()
                self.livez.append(time.perf_counter() - t0)
            await asyncio.sleep(0.025)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._probes is not None:
            await self._probes.close()
        after = await _handling(self._session, self._urls)
        for route in ("/segments", "/internal/segments"):
            seconds, count = after.get(route, (0.0, 0.0))
            seconds0, count0 = self._before.get(route, (0.0, 0.0))
            if count > count0:
                self.handled[route] = (seconds - seconds0) / (count - count0) * 1000

    def report(self) -> dict[str, float]:
        return {"livez_p50_ms": _pct(self.livez, 0.5) * 1000,
                "livez_p99_ms": _pct(self.livez, 0.99) * 1000,
                **{f"handled_mean_ms {route}": ms for route, ms in self.handled.items()}}


async def pushdown(run: Any, segments: int, workers_n: int, rate: float, requests: int,
                   clients: int) -> dict[str, Any]:
    """Phase 9 (see the module docstring); ``run`` is the bench's Run."""
    from streams.tools.bench import WorkerProc, _create_topic, api_records, wait_no_lag

    own = dataclasses.replace(run, app_id=f"{run.app_id}-pd", input_topic="",
                              work=run.work / "pushdown")
    own.work.mkdir(parents=True, exist_ok=True)
    await _create_topic(own.bootstrap, own.topic, **own.kafka)
    program = "program-0"  # the load's one program: it changes the measured program's memos
    records = list(api_records(program, segments, 2 * segments, seed=9))
    await produce(own.bootstrap, own.topic, iter(records), total=len(records), kafka=own.kafka)
    del records
    workers = [WorkerProc(own, kafka_local.free_port()) for _ in range(workers_n)]
    load = None
    try:
        for w in workers:
            w.start()
        for w in workers:
            await w.wait_ready(timeout_s=600)
        await wait_no_lag(own, timeout_s=900)
        urls = [w.url for w in workers]
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=clients)) as session:
            await _wait_serving(session, urls)
            load = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.cli", "produce", "--events", str(10**9),
                "--seed", "77", "--programs", "1", "--labels", str(max(1, segments // 2)),
                "--assets", "100", "--users", "2000", "--rate", str(rate),
                "--base-ts", str(base_ts_ending_now(int(rate * 600))),
                "--topic", own.topic, "--bootstrap", own.bootstrap,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(2.0)
            out: dict[str, Any] = {"segments": segments, "workers": workers_n,
                                   "load_events_per_s": rate}

            unavailable = [0]

            async def get(url: str, params: dict[str, str]) -> tuple[float, dict[str, Any]]:
                """Seconds to a 200 (a 503 while partitions move, counted, is asked again:
                on a loaded machine a stalled worker loses its partitions for a while)."""
                t0 = time.perf_counter()
                while True:
                    async with session.get(url + "/segments", params=params,
                                           headers={"program-id": program}) as resp:
                        body = await resp.json()
                    if resp.status == 200:
                        return time.perf_counter() - t0, body
                    if resp.status != 503 or time.perf_counter() - t0 > 120:
                        raise RuntimeError(f"GET /segments answered {resp.status}: {body}")
                    unavailable[0] += 1
                    await asyncio.sleep(0.5)

            for page in (1, DEEP_PAGE):
                params = {"force_refresh": "true", "page": str(page), "size": str(SIZE)}
                lat = []
                async with _Observer(session, urls) as seen:
                    for k in range(requests):
                        seconds, body = await get(urls[k % len(urls)], params)
                        lat.append(seconds)
                out[f"force_refresh_page_{page}"] = {
                    "p50_ms": _pct(lat, 0.5) * 1000, "p99_ms": _pct(lat, 0.99) * 1000,
                    "requests": len(lat), "total": body["total"],
                    "slowest_ms": [x * 1000 for x in sorted(lat)[-3:]], **seen.report()}
                sizes = []
                for url in urls:
                    for limit in (page * SIZE, None):
                        query = {"program_id": program, "min_weight": "0.5"}
                        if limit is not None:
                            query["limit"] = str(limit)
                        async with session.get(url + "/internal/segments",
                                               params=query) as resp:
                            sizes.append((limit, len(await resp.read())))
                limited = [n for limit, n in sizes if limit is not None]
                out[f"peer_answer_bytes_page_{page}"] = {
                    "max": max(limited), "rows_asked": page * SIZE,
                    "max_bytes_per_row_asked": max(limited) / (page * SIZE),
                    "without_limit_max": max(n for limit, n in sizes if limit is None)}

            lat = []

            async def walker(i: int, n: int) -> None:
                for j in range(n):
                    page = 1 + (i + j) % DEEP_PAGE
                    seconds, _ = await get(urls[(i + j) % len(urls)],
                                           {"page": str(page), "size": str(SIZE)})
                    lat.append(seconds)

            await asyncio.gather(*(walker(i, DEEP_PAGE) for i in range(clients)))  # warm-up
            lat.clear()
            async with _Observer(session, urls) as seen:
                await asyncio.gather(*(walker(i, max(1, 10 * requests // clients))
                                       for i in range(clients)))
            out["cached"] = {"p50_ms": _pct(lat, 0.5) * 1000, "p99_ms": _pct(lat, 0.99) * 1000,
                             "requests": len(lat), **seen.report()}

            name = "segments_query_computations_total"
            for label, refresh, m in (("misses", "false", "0.4375"),
                                      ("force_refresh", "true", "0.4375")):
                before = [await _counter(session, u, name) for u in urls]
                coalesced = [await _counter(session, u, "segments_query_coalesced_total")
                             for u in urls]
                await asyncio.gather(*(get(urls[0], {"force_refresh": refresh,
                                                     "min_weight": m, "size": str(SIZE)})
                                       for _ in range(16)))
                after = [await _counter(session, u, name) for u in urls]
                joined = [await _counter(session, u, "segments_query_coalesced_total")
                          for u in urls]
                out[f"sixteen_{label}"] = {
                    "computations_per_worker": [a - b for a, b in zip(after, before,
                                                                      strict=True)],
                    "coalesced_per_worker": [a - b for a, b in zip(joined, coalesced,
                                                                   strict=True)]}
        out["unavailable_answers_retried"] = unavailable[0]
        return out
    finally:
        if load is not None:
            load.terminate()
            await load.wait()
        for w in workers:
            w.stop()


async def _wait_serving(session: aiohttp.ClientSession, urls: list[str],
                        timeout_s: float = 300.0) -> None:
    """Until the workers are ready and own every partition between them."""
    deadline = time.perf_counter() + timeout_s
    from streams.tools.bench import PARTITIONS

    while time.perf_counter() < deadline:
        owned = 0
        for url in urls:
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        owned += len((await resp.json())["partitions"])
            except aiohttp.ClientError:
                pass
        if owned == PARTITIONS:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the workers never owned every partition between them")
