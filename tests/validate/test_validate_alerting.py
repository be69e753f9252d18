"""ark-obs validate against real servers: a plan kills a heartbeating agent process (a command injection)
and observes ark-obs, Prometheus (PromQL, the ArkAgentSilent alert firing) and Alertmanager (the alert
received), each within the delay the rule promises.

ark-obs is served by uvicorn on a free loopback port; the agent is a child process heartbeating over
HTTP; Prometheus (shipped rules, 1 s scrape and evaluation) and Alertmanager (shipped config) are the
Debian binaries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ark_obs.cli import main
from ark_obs.service import build_collector, create_app
from ark_obs.settings import Settings
from plugins.net import free_port as _free_port
from plugins.prometheus_server import PrometheusFactory

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AM_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
HEARTBEAT_S = 1.0
SCRAPE_S = EVAL_S = 1.0
SLACK_S = 1.0
# ArkAgentSilent has no `for`: active at the first evaluation after the first scrape that shows
# 2 intervals of silence (the runbook's promise), plus scheduling slack.
ALERT_PROMISE_S = 2 * HEARTBEAT_S + SCRAPE_S + EVAL_S + SLACK_S
HEARTBEAT_AGENT = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
due = time.monotonic()
while True:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=interval).close()
    except OSError:
        pass
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))
"""


def _wait_ready(url: str, proc_alive: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc_alive() and time.monotonic() < deadline, f"{what} did not become ready"
        time.sleep(0.05)


@pytest.fixture
def ark_obs_url() -> Iterator[str]:
    """The app `ark-obs serve` runs, on a free loopback port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(_env_file=None, port=port, heartbeat_interval_seconds=HEARTBEAT_S, log_level="warning")  # type: ignore[call-arg]
    collector, owned = build_collector(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, collector), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url + "/readyz", thread.is_alive, "ark-obs")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        for monitor in owned:
            monitor.close()
        sock.close()


@pytest.fixture
def alertmanager_url(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with the shipped config on a free loopback port."""
    binary = shutil.which("prometheus-alertmanager")
    if binary is None:
        hint = "prometheus-alertmanager not found: sudo apt-get install -y prometheus-alertmanager"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(hint)
        pytest.skip(hint)
    port = _free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={AM_CONFIG}", f"--storage.path={tmp_path}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url + "/-/ready", lambda: proc.poll() is None, "alertmanager")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_plan_observes_the_silent_agent_alert_firing_and_received(
    tmp_path: Path,
    ark_obs_url: str,
    alertmanager_url: str,
    prometheus_factory: PrometheusFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Killing Kyle (a command injection) is seen by ark-obs within 2 heartbeats, then ArkAgentSilent fires in
    Prometheus and reaches Alertmanager, each step within the rule's promised delay; the run exits 0."""
    agent = subprocess.Popen([sys.executable, "-I", "-c", HEARTBEAT_AGENT, f"{ark_obs_url}/heartbeats/Kyle", "1"])
    prom = prometheus_factory(
        [ark_obs_url.removeprefix("http://")], alertmanager=alertmanager_url.removeprefix("http://")
    )
    try:
        prom.wait_targets_up(samples=2)
        plan = tmp_path / "plan.toml"
        plan.write_text(
            f"""
[sources]
ark_obs = "{ark_obs_url}"
prometheus = "{prom.url}"
alertmanager = "{alertmanager_url}"

[[steps]]
name = "Kyle up in Prometheus"
deadline = "20s"
expect = {{ kind = "promql", query = 'ark_agent_up{{agent="Kyle"}} == 1' }}

[[steps]]
name = "killed Kyle reported by ark-obs"
inject = {{ command = ["kill", "-9", "{agent.pid}"] }}
expect = {{ kind = "agent_silent", agent = "Kyle", within_heartbeats = 2 }}

[[steps]]
name = "ArkAgentSilent firing"
deadline = {ALERT_PROMISE_S}
expect = {{ kind = "alert_firing", alertname = "ArkAgentSilent", labels = {{ agent = "Kyle" }} }}

[[steps]]
name = "ArkAgentSilent received by Alertmanager"
deadline = "{EVAL_S + SLACK_S}s"
expect = {{ kind = "alert_received", alertname = "ArkAgentSilent", labels = {{ agent = "Kyle", tier = "page" }} }}
"""
        )
        status = main(["validate", "--plan", str(plan), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert status == 0, out
        assert [s["verdict"] for s in out["steps"]] == ["pass"] * 4
        assert agent.wait(5) == -signal.SIGKILL
        silent, firing, received = out["steps"][1:]
        assert float(silent["observed"].split()[2]) <= 2 * HEARTBEAT_S
        assert firing["observed"] == "firing" and firing["seconds"] <= ALERT_PROMISE_S
        assert received["observed"].startswith("active since") and received["seconds"] <= EVAL_S + SLACK_S
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        prom.stop()
