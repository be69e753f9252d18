"""The status page: its JSON, its self-containment, and what a real headless Chromium shows on a live service."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ark_obs.metrics import MetricsCollector
from ark_obs.service import create_app, status_page
from ark_obs.settings import Settings
from ark_obs.synthetic import PIPELINE, Fault, SyntheticConfig, background_hook, run_loop
from ark_obs.traces.heartbeats import HeartbeatMonitor
from plugins.browser import ARTIFACTS, headless, png_size_and_variety
from plugins.net import free_port

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.25  # heartbeat interval of the live service (s)


@pytest.fixture(scope="module")
def live_service() -> Iterator[dict[str, Any]]:
    """A real service on a free loopback port, fed by the synthetic loop as a background hook.

    The loop loses Kenny's span on 30% of passes (those traces expire incomplete after the 1.5 s TTL) and
    silences Joey, so every panel has something to show.
    """
    port = free_port()
    settings = Settings(port=port, heartbeat_interval_seconds=INTERVAL, trace_ttl_seconds=1.5, _env_file=None)  # type: ignore[call-arg]
    config = SyntheticConfig(rate=20, duration_seconds=None, latency_scale=0.5, bad_share=0.1, drop_share=0.3,
                             faults=(Fault.parse("drop:Kenny"), Fault.parse("silence:Joey")),
                             heartbeat_interval_seconds=INTERVAL)  # fmt: skip
    announced: list[str] = []
    app = create_app(settings, background=[background_hook(config, announce=announced.append)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        # ready when an incomplete trace has expired and Joey is reported silent
        deadline = time.monotonic() + 20
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "the service never showed both faults"
            try:
                traces = httpx.get(url + "/traces?status=incomplete", timeout=2).json()
                agents = httpx.get(url + "/status.json", timeout=2).json()["agents"]
            except (httpx.TransportError, ValueError, KeyError):
                time.sleep(0.1)
                continue
            if traces["count"] > 0 and any(a["agent"] == "Joey" and a["up"] is False for a in agents):
                break
            time.sleep(0.1)
        yield {"url": url, "announced": announced}
    finally:
        server.should_exit = True
        thread.join(10)


# --- the page and its data, without a browser ----------------------------------------------------------
def test_page_is_self_contained() -> None:
    """The page loads nothing from outside the service: no external URL, no src, only same-origin links."""
    html = status_page.status_html()
    assert "<script" in html and "<style" in html
    assert not re.search(r"(?i)\b(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert not re.search(r"(?i)https?://", html)
    assert "@import" not in html and "url(" not in html


async def test_status_json_reports_agents_latency_and_traces() -> None:
    """/status.json: pipeline agents in order with up/down, per-bucket decision latency, trace and denial totals."""
    config = SyntheticConfig(rate=50, duration_seconds=1, latency_scale=0.3, bad_share=0.2, seed=4,
                             heartbeat_interval_seconds=INTERVAL)  # fmt: skip
    collector = MetricsCollector()
    collector.heartbeats = HeartbeatMonitor(collector, INTERVAL)
    report = await run_loop(config, collector)
    app = FastAPI()
    app.include_router(status_page.router(collector))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ark-obs") as client:
        page = await client.get("/")
        body = (await client.get("/status.json")).json()

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert [a["agent"] for a in body["agents"]] == list(PIPELINE)
    assert all(a["up"] is True and a["in_pipeline"] for a in body["agents"])
    latency = body["decision_latency"]
    assert latency["metric"] == "ark_pass_latency_ms" and latency["count"] == report.passes
    assert sum(b["count"] for b in latency["buckets"]) == report.passes
    assert latency["buckets"][-1]["le"] is None  # +Inf
    assert latency["p95"] is not None and latency["over_threshold"] == 0
    assert body["traces"]["complete"] == report.traces_complete
    assert body["denials"] == report.denials > 0
    # the in-process Watchdog and HRM report their series from the start: none is 0, not "not reported"
    assert body["quarantines"] == {"Kenny": 0} and body["period"]["quarantines"] == 0
    assert body["period"]["denials"] == report.denials
    assert body["store"] == {"backend": "memory", "state": "ok", "detail": "", "since": None, "dropped_in_window": 0}


# --- in a real browser ------------------------------------------------------------------------------------
def test_chromium_shows_slos_agents_latency_and_a_stuck_trace(live_service: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium, after the page's scripts ran: every SLO, every agent (Joey silent), latency bars,
    and an incomplete trace with its missing agent Kenny."""
    url = live_service["url"]
    slos = [s["name"] for s in httpx.get(url + "/slos").json()["slos"]]
    result = headless(url + "/", tmp_path / "profile", "--dump-dom")
    dom = result.stdout
    assert result.returncode == 0 and "</html>" in dom, result.stderr[-2000:]

    assert re.search(r'id="live" class="ok" data-store="ok"', dom), "a panel failed to load"
    for slo in slos:
        assert f'data-slo="{slo}"' in dom, slo
    assert set(slos) == {"availability", "decision_latency_p95", "hrm_eval_latency_p95", "ethics_drift"}
    for agent in PIPELINE:
        assert re.search(rf'data-agent="{agent}" data-up="(up|down)"', dom), agent
    assert 'data-agent="Joey" data-up="down"' in dom
    assert 'data-agent="Kyle" data-up="up"' in dom
    assert re.search(r'<tr data-trace="[0-9a-f]{32}" data-missing="Kenny">', dom)
    assert 'href="http://127.0.0.1:9871/runbook#arkagentsilent"' in dom  # Joey's silent badge says what to do
    bars = re.findall(r'class="col" data-le="([^"]+)" data-count="([^"]+)"', dom)
    assert len(bars) >= 5 and sum(float(c) for _, c in bars) > 0
    assert "400" in [le.removesuffix(".0") for le, _ in bars]  # the SLO threshold is always on the chart
    assert int(re.search(r'data-refreshed="(\d+)"', dom).group(1)) >= 2  # type: ignore[union-attr]  # it polls


def test_chromium_screenshot_is_kept_as_an_artifact(live_service: dict[str, Any], tmp_path: Path) -> None:
    """A 1280x1000 screenshot of the live page is written to test-artifacts/ and is not blank."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status_page.png"
    shot.unlink(missing_ok=True)
    result = headless(live_service["url"] + "/", tmp_path / "profile", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    width, height, variety = png_size_and_variety(shot)
    assert (width, height) == (1280, 1000)
    assert shot.stat().st_size > 30_000 and variety > 100


def test_background_loop_announces_the_urls(live_service: dict[str, Any]) -> None:
    """The background hook prints where to look: /, /metrics, /slos and a trace that exists."""
    url = live_service["url"]
    (text,) = live_service["announced"]
    for path in ("/", "/metrics", "/slos"):
        assert f"{url}{path}\n" in text
    assert re.search(rf"{re.escape(url)}/traces/[0-9a-f]{{32}}\n", text)
