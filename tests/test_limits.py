"""Hostile input and exhausted resources: secrets stay secret, numbers from agents follow one rule,
implausible span times are refused; against a real ``ark-obs serve`` and a real ``redis-server``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ark_obs.metrics import MetricsCollector
from plugins.redis_server import RedisServer, redis_binary
from test_service import Server

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
    """check-config masks the store URL's password and the token, on success and on a bad URL."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    ark_obs = Path(sys.executable).with_name("ark-obs")

    def check(store: str) -> subprocess.CompletedProcess[str]:
        env = {**clean, "ARK_OBS_TRACE_STORE": store, "ARK_OBS_INGEST_TOKEN": TOKEN}
        return subprocess.run(
            [str(ark_obs), "check-config"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
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
    """numpy scalars (when numpy is installed) are converted like any number."""
    np = pytest.importorskip("numpy", reason="numpy is optional: not a dependency of ark-obs")
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
