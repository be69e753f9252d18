"""Hostile input and exhausted resources: secrets stay secret, numbers from agents follow one rule,
implausible span times are refused; against a real ``ark-obs serve`` and a real ``redis-server``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ark_obs.metrics import MetricsCollector
from plugins.redis_server import RedisServer, redis_binary
from plugins.serve import Server

PASSWORD = "hunter2-Very-Secret-pw"
TOKEN = "tok-0123456789abcdef-SECRET"
PROM_PASSWORD = "prom-Secret-Pass"


def _poll(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A password-protected redis-server of its own (the test stops and restarts it)."""
    server = RedisServer(redis_binary(), tmp_path, password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


AGENT = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from ark_obs.metrics import MetricsCollector
    from ark_obs.traces import TraceMonitor
    monitor = TraceMonitor(MetricsCollector(ticker=False), sys.argv[1], sweep=False)
    print("agent ready", flush=True)
    i = 0
    while True:
        monitor.record_span(f"trace-{i}", "Kyle")
        monitor.store.flush()
        i += 1
        time.sleep(0.02)
    """
)


@pytest.mark.slow
def test_redis_password_never_printed_by_service_or_agent(secret_redis: RedisServer, tmp_path: Path) -> None:
    """A password-protected Redis goes down and comes back: the service and an agent log both
    transitions, /readyz explains the outage, and no output or answer contains the password."""
    url = secret_redis.url
    assert PASSWORD in url
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    env = {
        "ARK_OBS_TRACE_STORE": url,
        "ARK_OBS_INGEST_TOKEN": TOKEN,
        "ARK_OBS_CANARY_PROMETHEUS_URL": f"http://admin:{PROM_PASSWORD}@127.0.0.1:9",
    }
    server = Server(tmp_path, env)
    agent_log = tmp_path / "agent.log"
    with open(agent_log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, url], env=clean, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        server.wait_healthy()
        _poll(lambda: "agent ready" in agent_log.read_text(), "the agent to start")
        secret_redis.stop()

        def readyz_down() -> bool:
            return httpx.get(server.url + "/readyz", timeout=5).status_code == 503

        _poll(readyz_down, "/readyz to report the outage")
        readyz = httpx.get(server.url + "/readyz", timeout=5).text
        canary = httpx.get(server.url + "/canary/analysis", timeout=10).text
        _poll(lambda: "unavailable" in agent_log.read_text(), "the agent to log the outage")
        _poll(lambda: "unavailable" in server.output(), "the service to log the outage")
        secret_redis.start()
        _poll(lambda: "reachable again" in agent_log.read_text(), "the agent to log the recovery")
        _poll(lambda: "reachable again" in server.output(), "the service to log the recovery")
        ok = httpx.get(server.url + "/readyz", timeout=5)
    finally:
        agent.kill()
        agent.wait(10)
        server.terminate()
    assert ok.status_code == 200
    assert "redis" in readyz
    assert "admin:" not in canary and PROM_PASSWORD not in canary, canary
    for name, text in (("service", server.output()), ("agent", agent_log.read_text()), ("readyz", readyz)):
        for secret in (PASSWORD, TOKEN, PROM_PASSWORD):
            assert secret not in text, f"{name} output shows a credential:\n{text}"
    assert "***@127.0.0.1" in server.output()  # the banner still names the store


def test_check_config_and_errors_never_show_credentials(tmp_path: Path) -> None:
    """check-config masks the store URL's password and the token, on success and on a bad URL (offline: no
    Redis listens there; the probe's own messages are checked below)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    ark_obs = Path(sys.executable).with_name("ark-obs")

    def check(store: str) -> subprocess.CompletedProcess[str]:
        env = {**clean, "ARK_OBS_TRACE_STORE": store, "ARK_OBS_INGEST_TOKEN": TOKEN}
        return subprocess.run(
            [str(ark_obs), "check-config", "--offline"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = check(f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    bad_db = check(f"redis://user:{PASSWORD}@127.0.0.1:6379/zero")
    bad_port = check(f"redis://:{PASSWORD}@127.0.0.1:notaport/0")
    assert good.returncode == 0 and "ARK_OBS_TRACE_STORE=redis://***@127.0.0.1:6379/0" in good.stdout
    assert bad_db.returncode == 2 and "ARK_OBS_TRACE_STORE" in bad_db.stderr
    assert bad_port.returncode == 2 and "invalid port" in bad_port.stderr
    for result in (good, bad_db, bad_port):
        assert PASSWORD not in result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr


def test_canary_errors_never_show_prometheus_credentials() -> None:
    """An unreachable Prometheus with credentials in its URL: the analysis names it masked."""
    import asyncio

    from ark_obs.canary import CanaryConfig, analyze

    config = CanaryConfig(prometheus_url=f"http://admin:{PROM_PASSWORD}@127.0.0.1:9", timeout_seconds=1)
    result = asyncio.run(analyze(config))
    text = result.model_dump_json()
    assert result.verdict.value == "inconclusive"
    assert PROM_PASSWORD not in text and "admin" not in text
    assert "http://***@127.0.0.1:9" in text


# --- numbers from agents: one rule for every recording call -------------------------------------------
COUNTER, GAUGE, HISTOGRAM = "graveyard_validations_total", "kyle_ingest_rate", "ark_pass_latency_ms"


def _dropped(c: Any, metric: str, reason: str) -> float:
    return c.metric("ark_obs_dropped_total").labels(metric, reason).get()  # type: ignore[no-any-return]


def _record(c: Any, call: str, value: object) -> None:
    if call == "counter":
        c.inc_counter(COUNTER, value)
    elif call == "gauge":
        c.set_gauge(GAUGE, value)
    else:
        c.observe_histogram(HISTOGRAM, value)


def _state(c: Any) -> tuple[float, float, float, float]:
    hist = c.metric(HISTOGRAM)._unlabelled()
    return (
        c.metric(COUNTER)._unlabelled().get(),
        c.metric(GAUGE)._unlabelled().get(),
        hist.reading().values[-1],
        sum(_dropped(c, m, r) for m in (COUNTER, GAUGE, HISTOGRAM) for r in ("negative", "non_finite")),
    )


_REAL_NUMBERS = st.one_of(
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(),
    st.sampled_from([Decimal("NaN"), Decimal("sNaN"), Decimal("1e400"), Decimal("-1e400"), 10**400, True]),
)


@settings(max_examples=300, deadline=None)
@given(call=st.sampled_from(["counter", "gauge", "histogram"]), value=_REAL_NUMBERS)
def test_any_number_is_recorded_or_dropped_and_counted_never_raised(call: str, value: object) -> None:
    """int, float, Decimal, Fraction (also 10**400, Decimal NaN/1e400): each call records the value
    when a float can hold it (and, for counters and histograms, it is not negative), else drops it and
    counts the drop; it never raises."""
    c = MetricsCollector(ticker=False)
    before = _state(c)
    _record(c, call, value)
    after = _state(c)
    try:
        as_float_value = float(value)  # type: ignore[arg-type]
    except (OverflowError, ValueError, ArithmeticError):
        as_float_value = math.nan
    finite = math.isfinite(as_float_value)
    keeps = finite and (call == "gauge" or as_float_value >= 0)
    assert after[3] - before[3] == (0 if keeps else 1)
    if keeps and call == "gauge":
        assert after[1] == as_float_value
    if keeps and call == "histogram":
        assert after[2] == before[2] + as_float_value
    if not keeps:
        assert after[:3] == before[:3]
        reason = "non_finite" if not finite else "negative"
        metric = {"counter": COUNTER, "gauge": GAUGE, "histogram": HISTOGRAM}[call]
        assert _dropped(c, metric, reason) == 1


@pytest.mark.parametrize("call", ["counter", "gauge", "histogram"])
@pytest.mark.parametrize("value", [None, "1.5", b"1", [1], complex(1, 1), object()])
def test_a_non_number_raises_type_error_at_once(call: str, value: object) -> None:
    """None, strings and other non-numbers are programming errors: TypeError from every call, nothing recorded."""
    c = MetricsCollector(ticker=False)
    with pytest.raises(TypeError):
        _record(c, call, value)
    assert _state(c) == (0.0, 0.0, 0.0, 0.0)


def test_numpy_scalars_are_numbers() -> None:
    """numpy scalars are converted like any number (numpy is a test dependency only; agents may not have it)."""
    import numpy as np

    c = MetricsCollector(ticker=False)
    c.inc_counter(COUNTER, np.int64(3))
    c.set_gauge(GAUGE, np.float32(1.5))
    c.observe_histogram(HISTOGRAM, np.float64(-2.0))
    assert _state(c) == (3.0, 1.5, 0.0, 1.0)


def test_negative_latency_keeps_the_scrape_valid() -> None:
    """A negative latency is dropped: _sum never goes negative and the OpenMetrics scrape still parses."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    c = MetricsCollector(ticker=False)
    c.observe_histogram(HISTOGRAM, 5.0)
    c.observe_histogram(HISTOGRAM, -1000.0)
    text = generate_latest_openmetrics(c)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    total = [s.value for s in families[HISTOGRAM].samples if s.name == HISTOGRAM + "_sum"]
    assert total == [5.0]
    assert _dropped(c, HISTOGRAM, "negative") == 1


def generate_latest_openmetrics(c: Any) -> str:
    from prometheus_client.openmetrics.exposition import generate_latest

    return generate_latest(c.exposition_registry()).decode()


# --- span times, 422 bodies: against a real service ----------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``ark-obs serve`` (memory store, TTL 300 s, clock skew 60 s) for the tests below."""
    server = Server(tmp_path_factory.mktemp("service"), {"ARK_OBS_MAX_CLOCK_SKEW_SECONDS": "60"})
    try:
        server.wait_healthy()
        yield server
    finally:
        server.terminate()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("span", "field"),
    [
        ({"at": 0}, "at"),  # the epoch: a latency of 1.8e12 ms
        ({"at": "now-3600"}, "at"),  # older than the trace TTL
        ({"at": "now+3600"}, "at"),  # an hour in the future
        ({"at": "now", "duration_ms": 7_200_000}, "duration_ms"),  # ends two hours from now
        ({"duration_ms": 3_600_000}, "duration_ms"),  # started an hour ago (ends now)
    ],
)
def test_implausible_span_times_are_422_naming_the_field(service: Server, span: dict[str, Any], field: str) -> None:
    """A span outside [now - trace TTL, now + clock skew] is refused with 422 naming the field, on every
    write endpoint, and nothing is recorded."""
    now = time.time()
    if isinstance(span.get("at"), str):
        span = {**span, "at": now + float(span["at"].removeprefix("now") or 0)}
    trace = os.urandom(16).hex()
    single = httpx.post(f"{service.url}/traces/{trace}/spans", json={"agent": "Kyle", **span}, timeout=10)
    batch = httpx.post(
        f"{service.url}/spans",
        json={"spans": [{"trace_id": trace, "agent": "Joey"}, {"trace_id": trace, "agent": "Kyle", **span}]},
        timeout=10,
    )
    assert single.status_code == 422 and single.json()["detail"][0]["loc"] == ["body", field], single.text
    assert batch.status_code == 422 and batch.json()["detail"][0]["loc"] == ["body", "spans", 1, field], batch.text
    assert single.json()["detail"][0]["type"] == "implausible_time"
    assert httpx.get(f"{service.url}/traces/{trace}", timeout=10).status_code == 404
    ok = httpx.post(f"{service.url}/traces/{trace}/spans", json={"agent": "Kyle", "at": now - 1}, timeout=10)
    assert ok.status_code == 200


def test_implausible_span_times_are_dropped_and_counted_in_process() -> None:
    """In an agent, record_span drops a span older than the TTL or beyond the clock skew, counts it
    (reason implausible_time) and never raises; spans within the allowance complete the trace."""
    from ark_obs.traces import TraceMonitor
    from plugins.clock import FakeClock

    clock = FakeClock(1_700_000_000.0)
    c = MetricsCollector(clock=clock, ticker=False)
    monitor = TraceMonitor(c, "memory", pipeline=("Kyle", "Joey"), ttl_seconds=300, background=False)
    monitor.record_span("t", "Kyle", at=0.0)
    monitor.record_span("t", "Kyle", at=clock() + 3600)
    monitor.record_span("t", "Kyle", duration_ms=3_600_000)
    monitor.record_span("t", "Joey", at=clock() - 299, duration_ms=10)  # recent enough
    assert _dropped(c, "trace_span", "implausible_time") == 3
    assert monitor.validate("t").missing_agents == ("Kyle",)
    monitor.record_span("t", "Kyle", at=clock() + 59)  # within the skew allowance
    assert monitor.validate("t").complete
    monitor.close()


@pytest.mark.slow
def test_422_is_bounded_whatever_the_input(service: Server) -> None:
    """10,000 invalid spans (the batch limit) get a 422 listing at most 20 errors plus the total, in a
    few KiB; an over-long field name is cut short."""
    spans = [{"trace_id": "x", "agent": "Kyle"}] * 10_000
    r = httpx.post(f"{service.url}/spans", json={"spans": spans}, timeout=60)
    assert r.status_code == 422
    body = r.json()
    assert len(body["detail"]) == 20 and body["total"] == 10_000
    assert len(r.content) < 10_000
    long_key = httpx.post(
        f"{service.url}/traces/{'a' * 32}/spans", json={"agent": "Kyle", "x" * 100_000: 1}, timeout=10
    )
    assert long_key.status_code == 422 and len(long_key.content) < 2_000
    assert long_key.json()["total"] == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [b'{"agent": "Ky\xffle"}', b'{"agent": "Kyle", "at": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000],
    ids=["not-utf8", "huge-integer", "deep-nesting"],
)
def test_unreadable_bodies_get_the_documented_422(service: Server, body: bytes) -> None:
    """Bodies json.loads cannot take get the 422 shape {detail: [{loc, msg, type}], total}, not a bare 400."""
    r = httpx.post(
        f"{service.url}/traces/{'b' * 32}/spans", content=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][0] == "body" and detail[0]["type"] in ("json_invalid", "int_parsing", "float_type")
    assert r.json()["total"] >= 1


# --- connections -------------------------------------------------------------------------------------
def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closes ``sock`` (recv returns b'' or the connection is reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _connection_closures(server: Server) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in httpx.get(server.url + "/metrics/json", timeout=10).json()["families"]:
        if family["name"] == "ark_obs_connections_closed":
            for s in family["samples"]:
                if s["name"].endswith("_total"):
                    out[s["labels"]["reason"]] = float(s["value"])
    return out


@pytest.mark.slow
def test_connections_that_never_finish_a_request_are_closed(tmp_path: Path) -> None:
    """Idle, half-sent headers and half-sent bodies are closed after their deadline, counted by reason,
    and logged once per interval; /healthz answers meanwhile."""
    server = Server(
        tmp_path,
        {
            "ARK_OBS_HEADER_TIMEOUT_SECONDS": "1",
            "ARK_OBS_BODY_TIMEOUT_SECONDS": "2",
            "ARK_OBS_KEEPALIVE_TIMEOUT_SECONDS": "1",
        },
    )
    try:
        server.wait_healthy()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        headers = socket.create_connection(("127.0.0.1", server.port))
        headers.sendall(b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Ty")
        body = socket.create_connection(("127.0.0.1", server.port))
        body.sendall(
            b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        assert all(_closed_by_server(s, 10) for s in idle)
        assert _closed_by_server(headers, 10)
        assert _closed_by_server(body, 10)
        assert time.monotonic() - started < 10
        closures = _connection_closures(server)
    finally:
        server.terminate()
    assert closures.get("idle", 0) >= 3  # the /healthz polls' own connections may add more
    assert closures.get("slow_headers") == 1 and closures.get("slow_body") == 1
    log = server.output()
    assert log.count("closed a connection (idle") == 1, log  # three closures, one line
    assert "Traceback" not in log


@pytest.mark.slow
def test_connection_cap_answers_503_and_recovers(tmp_path: Path) -> None:
    """Past ARK_OBS_MAX_CONNECTIONS open connections a request gets 503; once they close, 200 again."""
    server = Server(tmp_path, {"ARK_OBS_MAX_CONNECTIONS": "8", "ARK_OBS_HEADER_TIMEOUT_SECONDS": "2"})
    try:
        server.wait_healthy()
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
        capped = httpx.get(server.url + "/healthz", timeout=5)
        for s in held:
            s.close()

        def healthy() -> bool:
            return httpx.get(server.url + "/healthz", timeout=5).status_code == 200

        _poll(healthy, "/healthz to answer 200 again")
        over = _connection_closures(server).get("over_capacity")
    finally:
        server.terminate()
    assert capped.status_code == 503
    assert over is not None and over >= 1
    assert server.output().count("ark-obs answered 503") == 1
    assert "Exceeded concurrency limit" not in server.output()


# --- HEAD, the public-address refusal ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/metrics/json", "/slos", "/traces", f"/traces/{'c' * 32}", "/"]
)
def test_head_works_wherever_get_does(service: Server, path: str) -> None:
    """HEAD answers with GET's status and headers and no body (load balancers and uptime checks use it)."""
    got = httpx.get(service.url + path, timeout=10)
    head = httpx.head(service.url + path, timeout=10)
    assert head.status_code == got.status_code and head.content == b""
    assert head.headers.get("content-type") == got.headers.get("content-type")


def test_write_endpoints_are_exactly_the_token_protected_routes() -> None:
    """settings.WRITE_ENDPOINTS, named by the public-address refusal, lists every route that needs the token:
    every operation whose schema declares the bearer scheme, and each of them answers 401 without it."""
    from fastapi.testclient import TestClient

    from ark_obs.service import create_app
    from ark_obs.settings import WRITE_ENDPOINTS, Settings

    app = create_app(Settings(ingest_token=TOKEN))
    protected = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if {"ingestToken": []} in operation.get("security", [])
    }
    with TestClient(app) as client:
        for endpoint in WRITE_ENDPOINTS:
            method, path = endpoint.split(" ", 1)
            url = path.replace("{trace_id}", "c" * 32).replace("{agent}", "Kyle")
            assert client.request(method, url, json={}).status_code == 401, endpoint
    assert protected == set(WRITE_ENDPOINTS)
    problems = Settings(host="0.0.0.0").problems()
    assert problems and all(endpoint in str(problems[0]) for endpoint in WRITE_ENDPOINTS)


# --- bounds on one trace --------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def trace_store_url(request: pytest.FixtureRequest) -> str:
    """Each trace store: the embedded one and a real redis-server."""
    return "memory" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


def test_one_trace_holds_at_most_max_agents(trace_store_url: str) -> None:
    """Past max_agents_per_trace distinct agents, spans of new agents are dropped and counted
    (trace_full) in both stores; known agents still record; the report stays that small."""
    from ark_obs.traces import TraceMonitor

    c = MetricsCollector(ticker=False)
    monitor = TraceMonitor(c, trace_store_url, pipeline=("Kyle", "Joey"), max_agents_per_trace=8, sweep=False)
    try:
        for i in range(40):
            monitor.record_span("big", f"fake{i}")
        monitor.record_span("big", "fake0", ok=False)  # a known agent: still recorded
        monitor.store.flush()
        report = monitor.validate("big")
    finally:
        monitor.close()
    assert len(report.agents_seen) == 8
    assert _dropped(c, "trace_span", "trace_full") == 32
    assert _dropped(c, "trace_span", "store_unavailable") == 0


@pytest.mark.slow
def test_a_trace_flood_over_http_stays_small(service: Server) -> None:
    """1,000 agent names posted to one trace: the report lists 32 (the default cap), the rest are
    counted as trace_full, and the report is a few KiB."""
    trace = os.urandom(16).hex()
    spans = [{"trace_id": trace, "agent": f"a{i}"} for i in range(1000)]
    assert httpx.post(service.url + "/spans", json={"spans": spans}, timeout=30).status_code == 200
    report = httpx.get(f"{service.url}/traces/{trace}", timeout=10)
    assert report.status_code == 200 and len(report.json()["spans"]) == 32
    assert len(report.content) < 16_000
    families = httpx.get(service.url + "/metrics/json", timeout=10).json()["families"]
    dropped = {
        s["labels"]["reason"]: s["value"]
        for f in families
        if f["name"] == "ark_obs_dropped"
        for s in f["samples"]
        if s["labels"].get("metric") == "trace_span" and s["name"].endswith("_total")
    }
    assert dropped.get("trace_full", 0) >= 968


# --- heartbeats: made-up agents cannot lock the pipeline out ---------------------------------------------
def test_made_up_agents_neither_lock_out_the_pipeline_nor_stay_forever() -> None:
    """With the agent cap full of made-up names, every pipeline agent is still admitted; the made-up
    ones are forgotten after forget_after_seconds of silence (freeing the cap), pipeline agents never."""
    from ark_obs.traces.heartbeats import HeartbeatMonitor
    from ark_obs.traces.memory import MemoryStore
    from plugins.clock import FakeClock

    clock = FakeClock(1_700_000_000.0)
    c = MetricsCollector(clock=clock, ticker=False)
    monitor = HeartbeatMonitor(
        c, 1.0, store=MemoryStore(), max_agents=10, forget_after_seconds=60, sweep=True, background=False,
        pipeline=("Kyle", "Kenny"),
    )  # fmt: skip
    for i in range(20):
        monitor.beat(f"fake{i}")
    monitor.beat("Kenny")
    monitor.beat("Kyle")
    monitor.sweep()
    known = {s.agent for s in monitor.status() or ()}
    assert {"Kenny", "Kyle"} <= known and len(known - {"Kenny", "Kyle"}) == 10
    assert _dropped(c, "agent_heartbeat", "cardinality") == 10
    clock.advance(61)
    monitor.sweep()
    assert {s.agent: s.up for s in monitor.status() or ()} == {"Kenny": False, "Kyle": False}
    monitor.beat("fake99")  # the cap has room again
    monitor.sweep()
    assert "fake99" in {s.agent for s in monitor.status() or ()}
    exposition = c.export_prometheus()
    assert 'ark_agent_in_pipeline{agent="Kenny"} 1.0' in exposition
    assert 'ark_agent_in_pipeline{agent="fake99"}' not in exposition
    monitor.close()


# --- the canary endpoint: one client, coalesced, capped ------------------------------------------------------
class SilentServer:
    """A loopback TCP server that accepts connections and never answers (a Prometheus that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.slow
def test_canary_analyses_share_a_client_coalesce_and_are_capped(tmp_path: Path) -> None:
    """Against a Prometheus that hangs: 6 identical requests share one analysis (one connection);
    past ARK_OBS_CANARY_MAX_CONCURRENT_ANALYSES distinct analyses a request gets 429 at once;
    /healthz answers meanwhile."""
    hanging = SilentServer()
    env = {
        "ARK_OBS_CANARY_PROMETHEUS_URL": f"http://127.0.0.1:{hanging.port}",
        "ARK_OBS_CANARY_TIMEOUT_SECONDS": "4",
        "ARK_OBS_CANARY_MAX_CONCURRENT_ANALYSES": "2",
    }
    server = Server(tmp_path, env)
    try:
        server.wait_healthy()

        def get(selector: str) -> httpx.Response:
            return httpx.get(f"{server.url}/canary/analysis?canary={selector}", timeout=30)

        with ThreadPoolExecutor(max_workers=12) as pool:
            same = [pool.submit(get, "same") for _ in range(6)]
            _poll(lambda: len(hanging.accepted) >= 1, "the analysis to reach Prometheus")
            other = pool.submit(get, "other")
            _poll(lambda: len(hanging.accepted) >= 2, "the second analysis to reach Prometheus")
            started = time.monotonic()
            refused = [get(f"c{i}") for i in range(5)]
            refused_in = time.monotonic() - started
            health = httpx.get(server.url + "/healthz", timeout=5)
            answers = [f.result() for f in same] + [other.result()]
        connections = len(hanging.accepted)
    finally:
        server.terminate()
        hanging.close()
    assert all(r.status_code == 200 and r.json()["verdict"] == "inconclusive" for r in answers)
    assert connections == 2  # one per distinct analysis: the six identical requests shared one
    assert all(r.status_code == 429 and r.headers.get("retry-after") == "1" for r in refused)
    assert refused_in < 2  # refused at once, not after the Prometheus timeout
    assert health.status_code == 200


@pytest.mark.slow
def test_a_stop_with_stuck_requests_logs_one_summary_line(tmp_path: Path) -> None:
    """SIGTERM with three requests stuck on their bodies: after the shutdown timeout one line says how
    many were cancelled; no traceback per request; exit 0."""
    server = Server(tmp_path, {"ARK_OBS_SHUTDOWN_TIMEOUT_SECONDS": "1"})
    stuck = []
    try:
        server.wait_healthy()
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(
                b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            stuck.append(s)
        time.sleep(0.3)  # the three requests reach the app (no condition to poll from outside)
        status = server.terminate()
    finally:
        for s in stuck:
            s.close()
    log = server.output()
    assert status == 0, log
    assert log.count("stopped with 3 request(s) still running") == 1, log
    assert "Traceback" not in log and "CancelledError" not in log, log


@pytest.mark.slow
def test_a_body_in_one_byte_chunks_is_cut_off(service: Server) -> None:
    """A chunked body sent a byte per chunk is cut off after 1,024 chunks (counted as tiny_chunks);
    /healthz answers meanwhile; a body in normal chunks is unaffected."""
    before = _connection_closures(service).get("tiny_chunks", 0)
    s = socket.create_connection(("127.0.0.1", service.port))
    s.sendall(
        b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    payload = b"".join(b"1\r\n" + bytes((c,)) + b"\r\n" for c in b'{"spans": [' + b" " * 200_000 + b"]}")
    with contextlib.suppress(OSError):
        s.sendall(payload)
    assert _closed_by_server(s, 10)
    s.close()
    assert httpx.get(service.url + "/healthz", timeout=5).status_code == 200
    assert _connection_closures(service).get("tiny_chunks", 0) == before + 1

    def chunks() -> Iterator[bytes]:
        body = json.dumps({"spans": [{"trace_id": os.urandom(16).hex(), "agent": "Kyle"}] * 50}).encode()
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    ok = httpx.post(service.url + "/spans", content=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert ok.status_code == 200, ok.text
