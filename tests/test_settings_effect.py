"""Every ARK_OBS_* setting reaches the service: set through the environment, its effect is observed.

One case per field of ``Settings`` (``test_every_setting_has_an_effect_case`` keeps the table complete).
Settings that act in ``ark-obs serve`` itself (bind address, port, shutdown bound, log level, the
open-ingest guard) run a real ``ark-obs serve`` process; the others go through the same path in
process: the environment, ``cli.load_settings`` (what ``serve`` calls) and ``create_app``, with the
app's lifespan running. Each case sets a value other than the default and checks something the
default would not give, so dropping the setting from the wiring fails its case.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.cli import load_settings
from ark_obs.service import create_app
from ark_obs.settings import Settings, env_name
from plugins.net import free_port

ARK_OBS = Path(sys.executable).with_name("ark-obs")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"
THIRD = "b7ad6b7169203331b7ad6b7169203331"
TOKEN = "correct-horse-battery-staple"
STREAM = "ark:test:signals"


def sample_values(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``."""
    return [
        s.value
        for f in parse_text(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


# --- the two ways a case runs the service ------------------------------------------------------------
@dataclass
class Env:
    """What a case gets: the test's fixtures, its scratch directory and the way to start the service."""

    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    processes: list[subprocess.Popen[bytes]]
    service: Any = None  # what the last in-process app serves (ark_obs.service.Service)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @asynccontextmanager
    async def app(self, dotenv: bool = False, **env: str) -> AsyncIterator[httpx.AsyncClient]:
        """The in-process service configured the way ``serve`` is: environment -> load_settings -> create_app.

        ``dotenv``: write the variables to ./.env (which ``serve`` reads too) instead of the process
        environment, for settings the trace monitor would also read from ``os.environ`` by itself: only
        there does dropping them from the service's wiring change what the service does.
        """
        if dotenv:
            lines = [f"{env_name(name)}={value}" for name, value in env.items()]
            (self.tmp_path / ".env").write_text("\n".join(lines) + "\n")
        else:
            for name, value in env.items():
                self.monkeypatch.setenv(env_name(name), value)
        settings, problems = load_settings(Path(".env"))
        assert settings is not None and problems == [], problems
        app = create_app(settings)
        self.service = app.state.service
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://ark-obs.test", timeout=30) as c:
                    yield c
        finally:
            for owned in app.state.service.owned:
                owned.close()

    def serve(self, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        """A real ``ark-obs serve`` with ``env`` (field name -> value) and nothing else of ours; its log."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
        log = self.tmp_path / f"serve-{len(self.processes)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(ARK_OBS), "serve"],
                env={**clean, **{env_name(k): v for k, v in env.items()}},
                cwd=self.tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc, log


def wait_healthy(proc: subprocess.Popen[bytes], log: Path, url: str, timeout: float = 30.0) -> None:
    """Poll ``url``/healthz until it answers 200; fail with the log if the process exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ark-obs exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"ark-obs did not answer {url}/healthz in {timeout} s:\n{log.read_text()}")


async def poll(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Await ``check`` every 50 ms until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


Case = Callable[[Env], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(field: str) -> Callable[[Case], Case]:
    """Register the effect check of setting ``field``."""

    def register(fn: Case) -> Case:
        CASES[field] = fn
        return fn

    return register


# --- settings ``serve`` itself acts on: a real process -----------------------------------------------
@case("host")
async def _host(env: Env) -> None:
    """ARK_OBS_HOST=127.0.0.2: the service answers there, and not on 127.0.0.1."""
    port = free_port()
    proc, log = env.serve(host="127.0.0.2", port=str(port))
    wait_healthy(proc, log, f"http://127.0.0.2:{port}")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@case("port")
async def _port(env: Env) -> None:
    """ARK_OBS_PORT: the service answers on that port (and prints it)."""
    port = free_port()
    proc, log = env.serve(port=str(port))
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    assert f"http://127.0.0.1:{port}/metrics" in log.read_text()


@case("allow_open_ingest")
async def _allow_open_ingest(env: Env) -> None:
    """On 0.0.0.0 without a token, serve refuses to start (exit 2) unless ARK_OBS_ALLOW_OPEN_INGEST=true;
    with it, the service starts and its writes are open."""
    refused, log = env.serve(host="0.0.0.0", port=str(free_port()))
    assert refused.wait(30) == 2, log.read_text()
    port = free_port()
    proc, log = env.serve(host="0.0.0.0", port=str(port), allow_open_ingest="true")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    assert httpx.post(f"http://127.0.0.1:{port}/heartbeats/Kyle", timeout=10).status_code == 200


@case("shutdown_timeout_seconds")
async def _shutdown_timeout(env: Env) -> None:
    """ARK_OBS_SHUTDOWN_TIMEOUT_SECONDS=1: SIGTERM with a request that never completes ends the process
    after about 1 s (not the default 10 s, not never), cutting that request off."""
    port = free_port()
    proc, log = env.serve(port=str(port), shutdown_timeout_seconds="1")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, log, url)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # headers and a 10-byte start of a 1,000-byte body: the request stays in flight
        sock.sendall(
            b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        sock.sendall(b'{"spans": ')
        # a later request answered means the server has read the earlier one's headers
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(30)
        elapsed = time.monotonic() - signalled
        answer = sock.recv(65536)
    out = log.read_text()
    assert status == 0, out
    assert 0.9 <= elapsed < 8, (elapsed, out)
    assert b"200 OK" not in answer
    # one summary line naming the bound (ark_obs.cli.ShutdownSummary), not a traceback per request
    assert "still running after 1 s (ARK_OBS_SHUTDOWN_TIMEOUT_SECONDS)" in out, out


@case("log_level")
async def _log_level(env: Env) -> None:
    """ARK_OBS_LOG_LEVEL=debug: the access log is on (each request is logged); at the default it is not."""
    port = free_port()
    proc, log = env.serve(port=str(port), log_level="DEBUG")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    assert httpx.get(f"http://127.0.0.1:{port}/slos", timeout=10).status_code == 200
    deadline = time.monotonic() + 10
    while '"GET /slos HTTP/1.1" 200' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"GET /slos HTTP/1.1" 200' in log.read_text(), log.read_text()
    assert "DEBUG" in log.read_text()


def _seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (recv gives b'' or a reset); fails after ``limit`` s."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit} s")
    return time.monotonic() - started


@case("keepalive_timeout_seconds")
async def _keepalive_timeout(env: Env) -> None:
    """ARK_OBS_KEEPALIVE_TIMEOUT_SECONDS=1: a kept-alive connection idle after its answer is closed within
    a few seconds (the default keeps it 5 s)."""
    port = free_port()
    proc, log = env.serve(port=str(port), keepalive_timeout_seconds="1")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _seconds_until_closed(sock, 4.0) >= 0.5


@case("header_timeout_seconds")
async def _header_timeout(env: Env) -> None:
    """ARK_OBS_HEADER_TIMEOUT_SECONDS=1: half-sent headers are cut off within a few seconds (default 10 s)."""
    port = free_port()
    proc, log = env.serve(port=str(port), header_timeout_seconds="1")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Ty")
        assert _seconds_until_closed(sock, 5.0) >= 0.5


@case("body_timeout_seconds")
async def _body_timeout(env: Env) -> None:
    """ARK_OBS_BODY_TIMEOUT_SECONDS=1: a body that stops coming is cut off within a few seconds (default 30 s)."""
    port = free_port()
    proc, log = env.serve(port=str(port), body_timeout_seconds="1")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        assert _seconds_until_closed(sock, 5.0) >= 0.5


@case("max_connections")
async def _max_connections(env: Env) -> None:
    """ARK_OBS_MAX_CONNECTIONS=8: with 10 connections held open, a request gets 503 (the default admits 512);
    /healthz is still answered past the cap."""
    port = free_port()
    proc, log = env.serve(port=str(port), max_connections="8")
    wait_healthy(proc, log, f"http://127.0.0.1:{port}")
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/slos", timeout=10).status_code == 503
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


# --- the rest: the same environment path, in process ----------------------------------------------------
@case("trace_store")
async def _trace_store(env: Env) -> None:
    """ARK_OBS_TRACE_STORE=redis://...: an accepted span is in that Redis."""
    url = env.fixture("redis_url")
    async with env.app(trace_store=url) as c:
        assert (await c.post("/spans", json={"spans": [{"trace_id": TRACE, "agent": "Kyle"}]})).status_code == 200
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert "@Kyle" in client.hgetall(f"ark:obs:t:{TRACE}")
    finally:
        client.close()


@case("slo_file")
async def _slo_file(env: Env) -> None:
    """ARK_OBS_SLO_FILE: /slos evaluates that file's SLOs instead of the four defaults."""
    path = env.tmp_path / "slos.yaml"
    path.write_text(
        "slos:\n  - id: fast_hrm\n    kind: latency\n    metric: hrm_eval_latency_ms\n"
        "    threshold: 100\n    window: 1m\n"
    )
    async with env.app(slo_file=str(path)) as c:
        body = (await c.get("/slos")).json()
    assert [s["name"] for s in body["slos"]] == ["fast_hrm"] and body["total"] == 1


@case("runbook_url")
async def _runbook_url(env: Env) -> None:
    """ARK_OBS_RUNBOOK_URL: `ark-obs rules` links every generated alert to {base}#{alertname lowercased}."""
    import contextlib
    import io

    from ark_obs.cli import main

    env.monkeypatch.setenv(env_name("runbook_url"), "https://ops.example/rb")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["rules"]) == 0
    assert "runbook_url: https://ops.example/rb#arkslobudgetburnpage" in out.getvalue()


@case("scrape_interval_seconds")
async def _scrape_interval_seconds(env: Env) -> None:
    """ARK_OBS_SCRAPE_INTERVAL_SECONDS=200: the default SLOs' 5m window spans fewer than two scrapes: refused."""
    env.monkeypatch.setenv(env_name("scrape_interval_seconds"), "200")
    _, problems = load_settings(None)
    assert any(
        p.setting == env_name("scrape_interval_seconds") and "5m is shorter than two scrape intervals" in p.why
        for p in problems
    ), problems


@case("ingest_token")
async def _ingest_token(env: Env) -> None:
    """ARK_OBS_INGEST_TOKEN: writes without the bearer token get 401, with it 200."""
    async with env.app(ingest_token=TOKEN) as c:
        assert (await c.post("/heartbeats/Kyle")).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await c.post("/heartbeats/Kyle", headers=auth)).status_code == 200


@case("ingest_tokens")
async def _ingest_tokens(env: Env) -> None:
    """ARK_OBS_INGEST_TOKENS=Kyle:TOKEN: that token beats for Kyle (200), not for Joey (403); no token 401."""
    async with env.app(ingest_tokens=f"Kyle:{TOKEN}") as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await c.post("/heartbeats/Kyle")).status_code == 401
        assert (await c.post("/heartbeats/Kyle", headers=auth)).status_code == 200
        assert (await c.post("/heartbeats/Joey", headers=auth)).status_code == 403


@case("max_body_bytes")
async def _max_body_bytes(env: Env) -> None:
    """ARK_OBS_MAX_BODY_BYTES=2048: a body over 2,048 bytes gets 413 naming the limit; one under it is read."""
    async with env.app(max_body_bytes="2048") as c:

        def body(n: int) -> bytes:
            return json.dumps({"spans": [{"trace_id": TRACE, "agent": "Kyle", "duration_ms": 1.5}] * n}).encode()

        big, small = body(30), body(20)
        assert len(big) > 2048 and 1024 < len(small) < 2048
        r = await c.post("/spans", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "2048-byte" in r.json()["detail"]
        r = await c.post("/spans", content=small, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text


@case("max_batch_spans")
async def _max_batch_spans(env: Env) -> None:
    """ARK_OBS_MAX_BATCH_SPANS=3: 4 spans in one batch get 413, 3 are accepted; the schema says maxItems 3."""
    async with env.app(max_batch_spans="3") as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in ("Kyle", "Joey", "HRM", "Kenny")]
        r = await c.post("/spans", json={"spans": spans})
        assert r.status_code == 413 and "the limit is 3" in r.json()["detail"]
        assert (await c.post("/spans", json={"spans": spans[:3]})).json() == {"accepted": 3}
        schema = (await c.get("/openapi.json")).json()
        assert schema["components"]["schemas"]["SpanBatch"]["properties"]["spans"]["maxItems"] == 3


@case("retention_seconds")
async def _retention_seconds(env: Env) -> None:
    """ARK_OBS_RETENTION_SECONDS=600: /metrics/json windows default to 600 s and a longer one is refused."""
    async with env.app(retention_seconds="600") as c:
        body = (await c.get("/metrics/json")).json()
        assert body["histograms"]["ark_pass_latency_ms"]["window_seconds"] == 600.0
        assert (await c.get("/metrics/json", params={"window_seconds": 601})).status_code == 422
        assert (await c.get("/metrics/json", params={"window_seconds": 600})).status_code == 200


@case("slice_seconds")
async def _slice_seconds(env: Env) -> None:
    """ARK_OBS_SLICE_SECONDS: the served collector's window snapshots at that granularity, and a slice over
    half the retention is refused by the settings check ``serve`` runs."""
    async with env.app(slice_seconds="2.5") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert env.service.collector.window.slice == 2.5
    env.monkeypatch.setenv(env_name("slice_seconds"), "2000")
    _, problems = load_settings(Path(".env"))
    assert [p.setting for p in problems] == ["ARK_OBS_SLICE_SECONDS"]


@case("max_series_per_metric")
async def _max_series(env: Env) -> None:
    """ARK_OBS_MAX_SERIES_PER_METRIC=1: the second label set of ark_traces_incomplete_total (a trace stuck
    at another agent) is dropped and counted as cardinality; the first is kept."""
    async with env.app(max_series_per_metric="1", trace_ttl_seconds="0.2") as c:
        spans = [{"trace_id": TRACE, "agent": "Kyle"}, {"trace_id": OTHER, "agent": "Kyle"}]
        spans.append({"trace_id": OTHER, "agent": "Joey"})  # TRACE stops before Joey, OTHER before HRM
        assert (await c.post("/spans", json={"spans": spans})).status_code == 200

        async def both_finalized() -> bool:
            text = (await c.get("/metrics")).text
            dropped = sample_values(text, "ark_obs_dropped_total", metric="ark_traces_incomplete_total")
            return sum(sample_values(text, "ark_traces_incomplete_total")) + sum(dropped) == 2

        await poll("both traces expired", both_finalized)
        text = (await c.get("/metrics")).text
    assert len(sample_values(text, "ark_traces_incomplete_total")) == 1
    dropped = sample_values(text, "ark_obs_dropped_total", metric="ark_traces_incomplete_total", reason="cardinality")
    assert dropped == [1.0]


@case("trace_ttl_seconds")
async def _trace_ttl(env: Env) -> None:
    """ARK_OBS_TRACE_TTL_SECONDS=0.2 (in .env): a trace missing agents is listed as incomplete within seconds."""
    async with env.app(dotenv=True, trace_ttl_seconds="0.2") as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in ("Kyle", "Joey")]
        assert (await c.post("/spans", json={"spans": spans})).status_code == 200

        async def listed() -> bool:
            body = (await c.get("/traces", params={"status": "incomplete"})).json()
            return [t["trace_id"] for t in body["traces"]] == [TRACE]

        await poll("the trace expired incomplete", listed)


@case("stall_seconds")
async def _stall_seconds(env: Env) -> None:
    """ARK_OBS_STALL_SECONDS=0.2: a trace with only Kyle's span is stalled at Joey within a second (listed and
    counted); the default 6 s would not have it stalled yet."""
    async with env.app(stall_seconds="0.2") as c:
        assert (await c.post(f"/traces/{TRACE}/spans", json={"agent": "Kyle"})).status_code == 200

        async def listed() -> bool:
            body = (await c.get("/traces", params={"status": "stalled"})).json()
            return [(t["trace_id"], t["waiting_on"]) for t in body["traces"]] == [(TRACE, "Joey")]

        await poll("the trace stalled at Joey", listed, timeout=5)
        text = (await c.get("/metrics")).text
    assert sample_values(text, "ark_traces_stalled", waiting_on="Joey") == [1.0]


@case("spans_as_heartbeats")
async def _spans_as_heartbeats(env: Env) -> None:
    """ARK_OBS_SPANS_AS_HEARTBEATS=false: an agent that only sends spans is not tracked (the default reads it
    up while its spans arrive); heartbeats still count."""
    async with env.app(spans_as_heartbeats="false") as c:
        assert (await c.post(f"/traces/{TRACE}/spans", json={"agent": "Kyle"})).status_code == 200
        assert (await c.post("/heartbeats/Joey")).status_code == 200
        text = (await c.get("/metrics")).text
    assert sample_values(text, "ark_agent_up", agent="Joey") == [1.0]
    assert sample_values(text, "ark_agent_up", agent="Kyle") == []


@case("trace_history_seconds")
async def _trace_history_seconds(env: Env) -> None:
    """ARK_OBS_TRACE_HISTORY_SECONDS=0 with a 0.2 s TTL: a finished trace is forgotten within a second (the
    default keeps it an hour), and the 404 says what is kept."""
    async with env.app(trace_history_seconds="0", trace_ttl_seconds="0.2") as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")]
        assert (await c.post("/spans", json={"spans": spans})).status_code == 200
        assert (await c.get(f"/traces/{TRACE}")).json()["status"] == "complete"

        async def forgotten() -> bool:
            return (await c.get(f"/traces/{TRACE}")).status_code == 404

        await poll("the finished trace forgotten", forgotten, timeout=5)
        detail = (await c.get(f"/traces/{TRACE}")).json()["detail"]
    assert "ARK_OBS_TRACE_HISTORY_SECONDS=0.2 s" in detail


@case("max_in_flight_traces")
async def _max_in_flight(env: Env) -> None:
    """ARK_OBS_MAX_IN_FLIGHT_TRACES=2 (in .env): a third open trace evicts the oldest (counted as capacity)."""
    async with env.app(dotenv=True, max_in_flight_traces="2") as c:
        for trace_id in (TRACE, OTHER, THIRD):
            assert (await c.post(f"/traces/{trace_id}/spans", json={"agent": "Kyle"})).status_code == 200
        text = (await c.get("/metrics")).text
        assert sample_values(text, "ark_traces_in_flight") == [2.0]
        assert sample_values(text, "ark_traces_evicted_total", reason="capacity") == [1.0]
        assert (await c.get(f"/traces/{TRACE}")).status_code == 404
        assert (await c.get(f"/traces/{THIRD}")).status_code == 200


@case("pipeline")
async def _pipeline(env: Env) -> None:
    """ARK_OBS_PIPELINE=Alpha,Beta (in .env): a trace through Alpha and Beta is complete (the seed's five
    are not asked)."""
    async with env.app(dotenv=True, pipeline="Alpha, Beta") as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in ("Alpha", "Beta")]
        assert (await c.post("/spans", json={"spans": spans})).status_code == 200
        report = (await c.get(f"/traces/{TRACE}")).json()
    assert report["complete"] is True and report["agents_seen"] == ["Alpha", "Beta"]
    assert report["missing_agents"] == []


@case("state_revision_max_keys")
async def _state_revision_max_keys(env: Env) -> None:
    """ARK_OBS_STATE_REVISION_MAX_KEYS=2: a third key pushes the least recently written one out of the map,
    so its next revision after a gap is no longer seen as one; the bound is on /state/anomalies."""
    async with env.app(state_revision_max_keys="2") as c:
        revisions = env.service.collector.revisions
        for key in ("a", "b", "c"):  # "a" is pushed out by "c"
            assert revisions.observe("Kenny", key, 1) is None
        assert revisions.observe("Kenny", "a", 5) is None  # a gap only a map that still held "a" could see
        assert revisions.observe("Kenny", "c", 3) == "gap"
        listing = (await c.get("/state/anomalies")).json()
    assert listing["max_keys"] == 2 and listing["tracked_keys"] == 2
    assert [a["key"] for a in listing["anomalies"]] == ["c"]


@case("state_revision_recent_max")
async def _state_revision_recent_max(env: Env) -> None:
    """ARK_OBS_STATE_REVISION_RECENT_MAX=2: /state/anomalies keeps only the 2 most recent anomalies."""
    async with env.app(state_revision_recent_max="2") as c:
        revisions = env.service.collector.revisions
        for key in ("a", "b", "c"):
            revisions.observe("Kenny", key, 1)
            assert revisions.observe("Kenny", key, 3) == "gap"
        listing = (await c.get("/state/anomalies")).json()
    assert listing["recent_max"] == 2
    assert [a["key"] for a in listing["anomalies"]] == ["c", "b"]


@case("max_clock_skew_seconds")
async def _max_clock_skew(env: Env) -> None:
    """ARK_OBS_MAX_CLOCK_SKEW_SECONDS=600: a span ending 5 min ahead is accepted (the default 60 s refuses it)."""
    async with env.app(max_clock_skew_seconds="600") as c:
        ahead = {"agent": "Kyle", "at": time.time() + 300}
        assert (await c.post(f"/traces/{TRACE}/spans", json=ahead)).status_code == 200
        assert (await c.get(f"/traces/{TRACE}")).json()["agents_seen"] == ["Kyle"]


@case("max_agents_per_trace")
async def _max_agents_per_trace(env: Env) -> None:
    """ARK_OBS_MAX_AGENTS_PER_TRACE=1: a second agent outside the pipeline is dropped (trace_full), the
    pipeline's agents are admitted past it; the default 32 would keep it."""
    async with env.app(max_agents_per_trace="1") as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in ("Kyle", "Extra1", "Extra2", "Joey", "HRM")]
        assert (await c.post("/spans", json={"spans": spans})).status_code == 200
        report = (await c.get(f"/traces/{TRACE}")).json()
        text = (await c.get("/metrics")).text
    assert report["agents_seen"] == ["Kyle", "Extra1", "Joey", "HRM"]  # still open: Kenny, Aletheia missing
    assert sample_values(text, "ark_obs_dropped_total", reason="trace_full") == [1.0]


@case("known_agents")
async def _known_agents(env: Env) -> None:
    """ARK_OBS_KNOWN_AGENTS=Watchdog,Janitor with MAX_HEARTBEAT_AGENTS=1: the cap is full after one made-up
    agent, Janitor is still admitted (with the default, only the Watchdog would be)."""
    async with env.app(max_heartbeat_agents="1", known_agents="Watchdog,Janitor") as c:
        assert (await c.post("/heartbeats/Ghost1")).status_code == 200
        assert (await c.post("/heartbeats/Ghost2")).status_code == 503
        assert (await c.post("/heartbeats/Janitor")).status_code == 200
        assert (await c.post("/heartbeats/Watchdog")).status_code == 200


@case("max_heartbeat_agents")
async def _max_heartbeat_agents(env: Env) -> None:
    """ARK_OBS_MAX_HEARTBEAT_AGENTS=2: a third made-up agent's beat gets 503; a pipeline agent is still admitted."""
    async with env.app(max_heartbeat_agents="2") as c:
        for agent in ("Ghost1", "Ghost2"):
            assert (await c.post(f"/heartbeats/{agent}")).status_code == 200
        assert (await c.post("/heartbeats/Ghost3")).status_code == 503
        assert (await c.post("/heartbeats/Kenny")).status_code == 200


@case("heartbeat_forget_seconds")
async def _heartbeat_forget(env: Env) -> None:
    """ARK_OBS_HEARTBEAT_FORGET_SECONDS=0.5: a made-up agent silent that long leaves /metrics (default: 1 h);
    a silent pipeline agent stays, reported down."""
    async with env.app(heartbeat_forget_seconds="0.5", heartbeat_interval_seconds="0.1") as c:
        assert (await c.post("/heartbeats/Ghost")).status_code == 200
        assert (await c.post("/heartbeats/Kenny")).status_code == 200

        async def forgotten() -> bool:
            text = (await c.get("/metrics")).text
            return sample_values(text, "ark_agent_up", agent="Ghost") == [] and bool(
                sample_values(text, "ark_agent_up", agent="Kenny")
            )

        await poll("Ghost forgotten, Kenny kept", forgotten)
        text = (await c.get("/metrics")).text
    assert sample_values(text, "ark_agent_up", agent="Kenny") == [0.0]


@case("heartbeat_interval_seconds")
async def _heartbeat_interval(env: Env) -> None:
    """ARK_OBS_HEARTBEAT_INTERVAL_SECONDS=0.2: exported as the interval, and a beat goes stale after 1.5 of them."""
    async with env.app(heartbeat_interval_seconds="0.2") as c:
        assert (await c.post("/heartbeats/Kyle")).status_code == 200
        text = (await c.get("/metrics")).text
        assert sample_values(text, "ark_agent_heartbeat_interval_seconds") == [0.2]

        async def down() -> bool:
            return sample_values((await c.get("/metrics")).text, "ark_agent_up", agent="Kyle") == [0.0]

        await poll("Kyle reported down", down)


@case("redis_streams")
async def _redis_streams(env: Env) -> None:
    """ARK_OBS_REDIS_STREAMS: each named stream's length is exported as redis_stream_depth."""
    url = env.fixture("redis_url")
    client = redis.Redis.from_url(url)
    try:
        for i in range(3):
            client.xadd(STREAM, {"i": i})
    finally:
        client.close()
    async with env.app(trace_store=url, redis_streams=STREAM) as c:
        text = (await c.get("/metrics")).text
    assert sample_values(text, "redis_stream_depth", stream=STREAM) == [3.0]


class SlowRedis:
    """A loopback TCP proxy to the real Redis that holds every command for ``delay`` seconds."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.delay = delay
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@case("store_timeout_seconds")
async def _store_timeout(env: Env) -> None:
    """ARK_OBS_STORE_TIMEOUT_SECONDS bounds every Redis call of the service, the trace store's and the stream
    depth reads: behind a Redis that takes 0.6 s per command, 3 s lets spans land (200) and the depth be
    exported (the default 0.25 s would give 503 and no depth); 0.1 s makes the write a 503."""
    url = env.fixture("redis_url")
    host_port = url.removeprefix("redis://").split("/")[0]
    host, port = host_port.rsplit(":", 1)
    client = redis.Redis.from_url(url)
    try:
        client.xadd(STREAM, {"i": 1})
        client.xadd(STREAM, {"i": 2})
    finally:
        client.close()
    slow = SlowRedis((host, int(port)), delay=0.6)
    slow_url = f"redis://127.0.0.1:{slow.port}/{url.rsplit('/', 1)[1]}"
    try:
        async with env.app(trace_store=slow_url, redis_streams=STREAM, store_timeout_seconds="3") as c:
            text = (await c.get("/metrics", params={"name[]": "redis_stream_depth"})).text
            assert sample_values(text, "redis_stream_depth", stream=STREAM) == [2.0], text
            r = await c.post("/spans", json={"spans": [{"trace_id": TRACE, "agent": "Kyle"}]})
            assert r.status_code == 200, r.text
        async with env.app(trace_store=slow_url, store_timeout_seconds="0.1") as c:
            r = await c.post("/spans", json={"spans": [{"trace_id": OTHER, "agent": "Kyle"}]})
            assert r.status_code == 503, r.text
    finally:
        slow.close()


# --- OpenTelemetry interop --------------------------------------------------------------------------------
def _otlp_json(trace_id: str, resource: dict[str, str], span_attributes: dict[str, str] | None = None) -> bytes:
    """One recent one-second span in OTLP JSON with these resource and span string attributes."""

    def attrs(values: dict[str, str]) -> list[dict[str, Any]]:
        return [{"key": k, "value": {"stringValue": v}} for k, v in values.items()]

    start = time.time_ns() - 5_000_000_000
    span = {
        "traceId": trace_id,
        "spanId": "00f067aa0ba902b7",
        "name": "work",
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 1_000_000_000),
        "attributes": attrs(span_attributes or {}),
    }
    doc = {"resourceSpans": [{"resource": {"attributes": attrs(resource)}, "scopeSpans": [{"spans": [span]}]}]}
    return json.dumps(doc).encode()


@case("otlp_agent_attribute")
async def _otlp_agent_attribute(env: Env) -> None:
    """ARK_OBS_OTLP_AGENT_ATTRIBUTE=service.namespace: an OTLP span's agent is that resource attribute, not
    service.name."""
    async with env.app(otlp_agent_attribute="service.namespace") as c:
        body = _otlp_json(TRACE, {"service.name": "gateway", "service.namespace": "Kyle"})
        r = await c.post("/v1/traces", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json() == {}, r.text
        assert (await c.get(f"/traces/{TRACE}")).json()["agents_seen"] == ["Kyle"]


@case("otlp_span_agent_attribute")
async def _otlp_span_agent_attribute(env: Env) -> None:
    """ARK_OBS_OTLP_SPAN_AGENT_ATTRIBUTE=agent.name: that span attribute overrides service.name (ark.agent no
    longer does)."""
    async with env.app(otlp_span_agent_attribute="agent.name") as c:
        body = _otlp_json(TRACE, {"service.name": "Kyle"}, {"agent.name": "Joey", "ark.agent": "HRM"})
        r = await c.post("/v1/traces", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        assert (await c.get(f"/traces/{TRACE}")).json()["agents_seen"] == ["Joey"]


@case("max_decompressed_bytes")
async def _max_decompressed_bytes(env: Env) -> None:
    """ARK_OBS_MAX_DECOMPRESSED_BYTES=2048: a gzip body inflating past 2,048 bytes gets 413 naming the setting;
    a smaller one is read."""
    import gzip

    async with env.app(max_decompressed_bytes="2048") as c:
        small = _otlp_json(TRACE, {"service.name": "Kyle"})
        big = _otlp_json(OTHER, {"service.name": "Kyle"}, {f"pad{i}": "x" * 40 for i in range(60)})
        assert len(small) < 2048 < len(big)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        r = await c.post("/v1/traces", content=gzip.compress(big), headers=headers)
        assert r.status_code == 413 and "ARK_OBS_MAX_DECOMPRESSED_BYTES" in r.json()["message"]
        r = await c.post("/v1/traces", content=gzip.compress(small), headers=headers)
        assert r.status_code == 200, r.text


@case("otel_spans")
async def _otel_spans(env: Env) -> None:
    """ARK_OBS_OTEL_SPANS=true (read where an agent decorates its methods): instrument_agent_method opens an
    OpenTelemetry span per call; unset, it opens none."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ark_obs.instrumentation import instrument_agent_method
    from ark_obs.metrics import MetricsCollector

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exported = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exported)
    provider.add_span_processor(processor)
    collector = MetricsCollector(ticker=False)
    try:

        @instrument_agent_method(latency_metric="effect_off_ms", agent="Kyle", collector=collector)
        def off() -> None:
            pass

        env.monkeypatch.setenv(env_name("otel_spans"), "true")

        @instrument_agent_method(latency_metric="effect_on_ms", agent="Kyle", collector=collector)
        def on() -> None:
            pass

        off()
        assert exported.get_finished_spans() == ()
        on()
        assert len(exported.get_finished_spans()) == 1
    finally:
        processor.shutdown()


# --- the status page ---------------------------------------------------------------------------------------
@case("runbook_url")
async def _runbook_url(env: Env) -> None:
    """ARK_OBS_RUNBOOK_URL=https://ops.example/ark/runbook: the status page's runbook links use that base."""
    async with env.app(runbook_url="https://ops.example/ark/runbook") as c:
        assert (await c.get("/status.json")).json()["runbook_url"] == "https://ops.example/ark/runbook"


@case("prometheus_url")
async def _prometheus_url(env: Env) -> None:
    """ARK_OBS_PROMETHEUS_URL (a loopback port nothing listens on): the fleet tiles ask that Prometheus and say
    it is unreachable; the canary analysis asks it too (ARK_OBS_CANARY_PROMETHEUS_URL unset)."""
    url = f"http://127.0.0.1:{free_port()}"
    async with env.app(prometheus_url=url) as c:
        fleet = (await c.get("/status.json")).json()["fleet"]
        assert fleet["prometheus"] == url and fleet["reachable"] is False and fleet["error"], fleet
        assert (await c.get("/canary/analysis")).json()["prometheus"] == url


# --- the table ------------------------------------------------------------------------------------------
@pytest.fixture
def env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Env]:
    """A clean environment (no ARK_OBS_* of the developer, no .env) and every started process stopped after."""
    for key in list(os.environ):
        if key.startswith("ARK_OBS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    processes: list[subprocess.Popen[bytes]] = []
    yield Env(request, monkeypatch, tmp_path, processes)
    for proc in processes:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
async def test_setting_reaches_the_service(env: Env, field: str) -> None:
    """Set through its ARK_OBS_* variable, the setting changes what the service does (see each case)."""
    check = CASES.get(field)
    assert check is not None, f"{env_name(field)} has no case here: add one that observes its effect"
    await check(env)


def test_every_setting_has_an_effect_case() -> None:
    """The table covers exactly the settings that exist (a new setting needs a case; a removed one, none)."""
    assert set(CASES) == set(Settings.model_fields)
