"""ark-obs validate against real servers: a plan kills a heartbeating agent process (a command injection)
and observes ark-obs, Prometheus (PromQL, the ArkAgentSilent alert firing) and Alertmanager (the alert
received), each within the delay the rule promises.

ark-obs is served by uvicorn on a free loopback port; the agent is a child process heartbeating over
HTTP; Prometheus (shipped rules, 1 s scrape and evaluation) and Alertmanager (shipped config) are the
Debian binaries.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ark_obs.cli import main
from plugins.inprocess import heartbeat_agent, running_service
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


def test_plan_observes_the_silent_agent_alert_firing_and_received(
    tmp_path: Path,
    ark_obs_url: str,
    alertmanager: str,
    prometheus_factory: PrometheusFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Killing Kyle (a command injection) is seen by ark-obs within 2 heartbeats, then ArkAgentSilent fires in
    Prometheus and reaches Alertmanager, each step within the rule's promised delay; the run exits 0."""
    agent = heartbeat_agent(f"{ark_obs_url}/heartbeats/Kyle", 1)
    prom = prometheus_factory([ark_obs_url.removeprefix("http://")], alertmanager=alertmanager.removeprefix("http://"))
    try:
        prom.wait_targets_up(samples=2)
        plan = tmp_path / "plan.toml"
        plan.write_text(
            f"""
[sources]
ark_obs = "{ark_obs_url}"
prometheus = "{prom.url}"
alertmanager = "{alertmanager}"

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


@pytest.fixture
def ark_obs_url() -> Iterator[str]:
    """The app `ark-obs serve` runs, on a free loopback port, in a background thread."""
    with running_service("/readyz", heartbeat_interval_seconds=HEARTBEAT_S) as ark:
        yield ark.url
