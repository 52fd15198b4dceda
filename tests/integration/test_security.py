"""Security (contract section 10) on real worker processes, the real broker and a Redis that
asks for a password: API keys on every protected route, revocation without a restart, the
cluster secret between workers, and a member of the consumer group that does not hold the
secret (a forged peer: its rows are never merged), then the exact final check; schemathesis
against the authenticated API."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import pytest_asyncio
import redis
from aiohttp import web

from api.auth import ClusterAuth
from api.keys import add_key
from streams.tools.kafka_local import free_port
from streams.tools.produce import generate
from streams.tools.redis_local import RedisServer
from tests.support.harness import (
    SEGMENTS,
    Cluster,
    Worker,
    feed,
    final_check,
    wait_ready,
    walk_pages,
)
from tests.support.oracle import Oracle, assert_rows_equal

pytestmark = pytest.mark.integration

SECRET = "cluster-secret-of-the-security-test"
PROGRAM = "program-0"
FORGED_COUNT = 1_000_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Secured:
    cluster: Cluster
    workers: list[Worker]
    oracle: Oracle
    redis: RedisServer
    keys_file: Path
    keys: dict[str, str]
    session: aiohttp.ClientSession


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Secured]:
    run_dir = tmp_path_factory.mktemp("security")
    server = RedisServer(run_dir / "redis", password="redis-pass-for-tests").start()
    keys_file = run_dir / "keys.json"
    keys = {"reader": add_key(keys_file, "reader", [PROGRAM]),
            "stranger": add_key(keys_file, "stranger", ["another-program"]),
            "ops": add_key(keys_file, "ops", ["*"])}
    cluster = Cluster(kafka_bootstrap, run_dir, redis_url=server.url, extra_env={
        "SEGMENTS_API_KEYS_FILE": str(keys_file), "SEGMENTS_CLUSTER_SECRET": SECRET,
        "SEGMENTS_CACHE_TTL_S": "30"}, headers=bearer(keys["ops"]))
    records = list(generate(4_000, seed=1701, programs=2, users=600, labels=60, assets=100))
    oracle = Oracle()
    oracle.feed(records)
    workers = [cluster.add_worker(), cluster.add_worker()]
    session = aiohttp.ClientSession()
    try:
        await feed(cluster, workers, records)
        await final_check(cluster, oracle, workers, check_changes=False)
        yield Secured(cluster, workers, oracle, server, keys_file, keys, session)
    finally:
        await session.close()
        cluster.stop_all()
        server.stop()


PROTECTED = [  # (path, query, whether the program comes in the program-id header)
    ("/segments", {}, True),
    ("/segments/stream", {"program_id": PROGRAM}, False),
    ("/", {"program_id": PROGRAM}, False),
]


async def status_of(session: aiohttp.ClientSession, url: str, params: dict[str, str],
                    headers: dict[str, str]) -> tuple[int, str]:
    async with session.get(url, params=params, headers=headers) as resp:
        return resp.status, resp.headers.get("WWW-Authenticate", "")


@pytest.mark.asyncio(loop_scope="session")
async def test_every_protected_route_asks_for_a_key_that_covers_the_program(
        secured: Secured) -> None:
    keys = secured.keys
    for w in secured.workers:
        for path, query, in_header in PROTECTED:
            program = {"program-id": PROGRAM} if in_header else {}
            for headers, want in (({}, 401), (bearer("sgk_not-a-key"), 401),
                                  ({"Authorization": "Basic cmVhZGVyOng="}, 401),
                                  (bearer(keys["stranger"]), 403),
                                  (bearer(keys["reader"]), 200), (bearer(keys["ops"]), 200)):
                status, challenge = await status_of(
                    secured.session, w.url + path, query, program | headers)
                assert status == want, (w.port, path, headers, status)
                if want == 401:
                    assert challenge.startswith("Bearer"), (path, challenge)
        for headers, want in (({}, 401), (bearer(keys["reader"]), 403),
                              (bearer(keys["ops"]), 200)):
            assert (await status_of(secured.session, w.url + "/metrics", {}, headers)
                    )[0] == want
        for open_path in ("/healthz", "/openapi.json", "/schemas/count.json"):
            assert (await status_of(secured.session, w.url + open_path, {}, {}))[0] == 200


@pytest.mark.asyncio(loop_scope="session")
async def test_the_live_page_asks_for_a_key_in_a_real_browser(secured: Secured) -> None:
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: scripts/setup.sh installs Debian's chromium")
    from playwright.async_api import async_playwright

    url = f"{secured.workers[0].url}/?program_id={PROGRAM}&segment_type=growth&min_weight=0.5"
    want = secured.oracle.segments(PROGRAM, "growth", "label", 0.5)[:50]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            response = await page.goto(url)
            assert response is not None and response.status == 401
            await page.wait_for_selector("#key-dialog[open]")
            assert "needs an API key" in await page.text_content("#message")
            await page.fill("#key-input", secured.keys["stranger"])
            await page.click("#key-dialog button")
            await page.wait_for_selector("#key-dialog[open]")  # asked again
            assert "does not cover" in await page.text_content("#message")
            await page.fill("#key-input", secured.keys["reader"])
            await page.click("#key-dialog button")
            await page.wait_for_selector("#rows tr")
            shown = await page.eval_on_selector_all(
                "#rows tr", "rows => rows.map(r => Number("
                "r.querySelector('.users').textContent.replace(/,/g, '')))")
            assert shown == [r[5] for r in want][:len(shown)] and shown, shown
            assert not errors, errors
        finally:
            await browser.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_key_reads_its_program_exactly_and_answers_are_cached_in_the_secured_redis(
        secured: Secured) -> None:
    want = secured.oracle.segments(PROGRAM, "growth", "label", 0.5)
    for w in secured.workers:
        answer = await walk_pages(secured.session, w.url, PROGRAM, "growth", "label", 0.5,
                                  refresh=False, headers=bearer(secured.keys["reader"]))
        assert answer.status == 200, answer.body
        assert_rows_equal(answer.rows, want, f"worker {w.port}")
    stored = redis.Redis.from_url(secured.redis.url).keys(f"{secured.cluster.app_id}:*")
    assert stored, "the answers went to the Redis that asks for a password"


@pytest.mark.asyncio(loop_scope="session")
async def test_internal_requests_without_the_cluster_secret_are_refused(
        secured: Secured) -> None:
    query = {"program_id": PROGRAM, "segment_type": "growth", "segment_basis": "labels",
             "min_weight": "0.5"}
    for w in secured.workers:
        url = w.url + "/internal/segments"
        assert (await status_of(secured.session, url, query, {}))[0] == 401
        forged = ClusterAuth("a-guess-at-the-cluster-secret", "http://x").request_headers(
            w.url, "/internal/segments", query)
        assert (await status_of(secured.session, url, query, forged))[0] == 401
        signed = ClusterAuth(SECRET, "http://x").request_headers(
            w.url, "/internal/segments", query)
        assert (await status_of(secured.session, url, query, signed))[0] == 200
        assert (await status_of(secured.session, url, query, signed))[0] == 401  # replayed


class ForgedPeer:
    """The HTTP endpoint a member without the secret advertises: it answers every internal
    request with rows of ``FORGED_COUNT`` users, for exactly the partitions its worker owns
    (or was asked for), so that a worker that trusted it would merge them."""

    def __init__(self, worker_url: str) -> None:
        self.worker_url = worker_url
        self.asked = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.asked += 1
        if "partitions" in request.query:
            partitions = [int(p) for p in request.query["partitions"].split(",")]
        else:
            async with aiohttp.ClientSession() as session, session.get(
                    self.worker_url + "/healthz") as resp:
                partitions = (await resp.json())["partitions"]
        q = request.query
        basis = q["segment_basis"].rstrip("s")
        items = [[q["segment_type"], basis, f"forged-{p}", "view", "Forged", FORGED_COUNT, 0.99]
                 for p in partitions]
        return web.Response(body=orjson.dumps({"items": items, "partitions": partitions,
                                               "lag": 0}), content_type="application/json")

    async def start(self) -> ForgedPeer:
        app = web.Application()
        app.router.add_get("/internal/segments", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_group_member_without_the_secret_never_has_its_rows_merged(
        secured: Secured) -> None:
    cluster = secured.cluster
    port = free_port()
    forged = await ForgedPeer(f"http://127.0.0.1:{port}").start()
    env = cluster.env(port) | {"SEGMENTS_CLUSTER_SECRET": "not-the-secret-of-the-cluster",
                               "SEGMENTS_API_KEYS_FILE": "",
                               "SEGMENTS_ADVERTISED_URL": f"http://127.0.0.1:{forged.port}"}
    intruder = Worker(env, cluster.run_dir / f"intruder-{port}.log", port).start()
    cluster.workers.append(intruder)
    want = secured.oracle.segments(PROGRAM, "growth", "label", 0.5)
    seen: dict[str, int] = {}
    try:
        await wait_ready(intruder)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for w in secured.workers:
                for consistency in ("any", "strict"):
                    answer = await walk_pages(secured.session, w.url, PROGRAM, "growth",
                                              "label", 0.5, consistency=consistency,
                                              headers=bearer(secured.keys["reader"]))
                    key = f"{consistency} {answer.status}"
                    seen[key] = seen.get(key, 0) + 1
                    assert answer.status in (200, 503), answer.body
                    if answer.status == 200:
                        assert all(r[5] != FORGED_COUNT for r in answer.rows), "forged rows"
                        assert_rows_equal(answer.rows, want,
                                          f"{consistency} answer of {w.port}")
            await asyncio.sleep(0.2)
        assert forged.asked > 0, "the forged endpoint was never asked: the test proves nothing"
        assert seen.get("any 200", 0) > 0, seen
        print(f"\nforged peer asked {forged.asked} times; answers {seen}")
    finally:
        intruder.stop(30)
        cluster.workers.remove(intruder)
        await forged.stop()
    await final_check(cluster, secured.oracle, secured.workers, check_changes=False,
                      timeout_s=90)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_revoked_key_is_refused_by_every_worker_without_a_restart(
        secured: Secured) -> None:
    headers = {"program-id": PROGRAM} | bearer(secured.keys["reader"])
    for w in secured.workers:
        assert (await status_of(secured.session, w.url + "/segments", {}, headers))[0] == 200
    stream = await secured.session.get(secured.workers[1].url + "/segments/stream",
                                       headers=headers)
    assert stream.status == 200
    assert (await stream.content.readline()).startswith(b"event: snapshot")
    proc = await asyncio.create_subprocess_exec(
        SEGMENTS, "keys", "revoke", "reader", "--file", str(secured.keys_file),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await proc.communicate()
    assert await proc.wait() == 0, output
    assert secured.keys["reader"].encode() not in output
    for w in secured.workers:
        assert (await status_of(secured.session, w.url + "/segments", {}, headers))[0] == 401
    await asyncio.wait_for(stream.content.read(), 5)  # the open stream was ended
    stream.release()
    for w in secured.workers:
        assert secured.keys["ops"] not in w.log() and secured.keys["reader"] not in w.log()


@pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is not installed (dev extra)")
def test_schemathesis_against_the_authenticated_api_finds_no_5xx(
        secured: Secured, tmp_path: Path) -> None:
    st = str(Path(sys.executable).parent / "st")
    url = secured.workers[0].url
    proc = subprocess.run(
        [st, "run", f"{url}/openapi.json", "--include-path", "/segments", "--include-path",
         "/healthz", "--include-path", "/metrics", "--include-path", "/", "--checks", "all",
         "-H", f"Authorization: Bearer {secured.keys['ops']}", "--max-examples", "120",
         "--seed", "2", "--request-timeout", "10", "--workers", "2",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert secured.keys["ops"] not in "".join(w.log() for w in secured.workers)
