"""Hostile input and exhausted resources: secrets stay secret, numbers from agents follow one rule,
implausible span times are refused; against a real ``ark-obs serve`` and a real ``redis-server``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

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
