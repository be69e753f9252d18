"""Fleet mode: the status page's fleet tiles come from a real Prometheus running the shipped rules.

A real Prometheus (1 s scrape and evaluation) scrapes an agent process (its own collector, where the
Watchdog counts quarantines) and the service; the service, with ``ARK_OBS_PROMETHEUS_URL`` set to that
Prometheus, shows the fleet's quarantines, denials and availability from the recording rules, naming
them, and says so when Prometheus stops answering. Screenshots: status_fleet.png, status_fleet_unreachable.png.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ark_obs.settings import Settings
from plugins.multiprocess import SCRAPED_COLLECTOR, LineProcess
from plugins.net import free_port
from plugins.prometheus_server import PrometheusFactory, PrometheusServer, ScrapeTarget
from service.test_status_page_story import render, serve, status, text_of, wait_for

SCRAPE_S = EVAL_S = 1.0
REFRESH_S = 1.5  # the page's refresh: /status.json asks Prometheus at each one

# The agent process: an ark-obs collector served over HTTP; each stdin line "quarantine AGENT REASON" or
# "deny RULE AGENT" is recorded, acknowledged with "ok".
AGENT = (
    SCRAPED_COLLECTOR
    + """
for line in sys.stdin:
    kind, a, b = line.split()
    if kind == "quarantine":
        collector.inc_counter("watchdog_quarantines_total", labels={"agent": a, "reason": b})
    else:
        collector.inc_counter("hrm_denials_total", labels={"rule_id": a, "agent": b})
    print("ok", flush=True)
"""
)


class AgentProcess(LineProcess):
    def __init__(self, port: int) -> None:
        super().__init__(AGENT, str(port))


@pytest.fixture(scope="module")
def fleet(prometheus_factory: PrometheusFactory) -> Iterator[dict[str, Any]]:
    """The agent process, a Prometheus scraping it and the service, and the service asking that Prometheus."""
    agent_port, service_port = free_port(), free_port()
    agent = AgentProcess(agent_port)
    prom = prometheus_factory([f"127.0.0.1:{service_port}", ScrapeTarget(f"127.0.0.1:{agent_port}", job="ark-agents")])
    settings = Settings(port=service_port, prometheus_url=prom.url, _env_file=None,  # type: ignore[call-arg]
                        runbook_url=f"http://127.0.0.1:{service_port}/runbook")  # fmt: skip

    def ready(url: str) -> bool:
        fleet = status(url)["fleet"]
        return bool(fleet["reachable"] and fleet["quarantines"] == 0 and fleet["availability"] == 1.0)

    service = serve(settings, [], ready, "the fleet's rules answer: 0 quarantines, availability 1")
    try:
        url = next(service)
        yield {"url": url, "agent": agent, "prometheus": prom}
    finally:
        service.close()
        agent.stop()


def test_a_quarantine_in_an_agent_process_reaches_the_page(fleet: dict[str, Any], tmp_path: Path) -> None:
    """A quarantine recorded in the agent process (not in the service) is on the page's fleet tiles within a
    scrape, an evaluation and a refresh; the tiles name the recording rule and Prometheus they come from."""
    url, agent = fleet["url"], fleet["agent"]
    agent.send("deny max_leverage Kenny")
    agent.send("quarantine Kenny exec_errors")
    sent = time.monotonic()
    wait_for(lambda: status(url)["fleet"]["quarantines"] == 1, "the quarantine on /status.json", timeout=20)
    took = time.monotonic() - sent
    assert took <= SCRAPE_S + EVAL_S + REFRESH_S + 1.5, f"{took:.1f} s"  # slack: a loaded 2-core machine
    st = status(url)
    assert st["period"]["quarantines"] is None  # this process never saw it: only the fleet knows
    assert st["fleet"]["availability"] == pytest.approx(1 - 5 / 300)
    assert st["sources"]["quarantines"] == f"Prometheus {fleet['prometheus'].url}: ark:watchdog_quarantines:increase5m"

    dom = render(url, tmp_path, "status_fleet.png")
    assert text_of(re.search(r'id="sum-quarantines"[^>]*>([^<]*)<', dom).group(1)) == "1"  # type: ignore[union-attr]
    assert '<div class="tile warn" id="tile-quarantines">' in dom
    assert re.search(r'id="src-quarantines">source: Prometheus http://127\.0\.0\.1:\d+: '
                     r"ark:watchdog_quarantines:increase5m<", dom)  # fmt: skip
    assert re.search(
        r'id="sum-quarantines-detail">fleet, last 5 min<a class="runbook" href="[^"]+/runbook#arkcanaryquarantine"', dom
    )
    assert '<div class="tile violated" id="tile-availability">' in dom and ">98.333%<" in dom
    denials = re.search(r'id="sum-denials"[^>]*>([^<]+)<', dom)
    assert denials and re.fullmatch(r"[\d.]+/s", denials.group(1)), denials and denials.group(0)
    assert "ark:hrm_denials:rate1m" in dom


def test_prometheus_unreachable_is_a_visible_state(fleet: dict[str, Any], tmp_path: Path) -> None:
    """With its Prometheus stopped, the page says Prometheus is unreachable (since when, why, the runbook) and
    the fleet tiles read unknown, not a blank and not this process' numbers."""
    prom: PrometheusServer = fleet["prometheus"]
    prom.stop()
    url = fleet["url"]
    wait_for(lambda: status(url)["fleet"]["reachable"] is False, "Prometheus reported unreachable", timeout=10)
    dom = render(url, tmp_path, "status_fleet_unreachable.png", live="degraded")
    banner = re.search(
        r'<div id="store-banner" class="unreachable" data-state="prometheus-unreachable">(.*?)</div>', dom
    )
    assert banner and re.match(r"Prometheus http://127\.0\.0\.1:\d+ unreachable since \d", text_of(banner.group(1)))
    assert "/runbook#prometheus-unreachable" in banner.group(1)
    for tile in ("quarantines", "denials", "availability"):
        assert re.search(rf'<div class="tile unknown" id="tile-{tile}">.*?id="sum-{tile}"[^>]*>unknown<', dom), tile
    assert httpx.get(url + "/readyz", timeout=2).status_code == 200  # the service itself is fine
