"""The status page tells one story: healthy, faulted and after-stop states, as headless Chromium renders them.

Each state is a real service on a loopback port; the assertions read the DOM the page's scripts built,
and a screenshot of each state is kept under test-artifacts/ (status_healthy.png, status_faulted.png,
status_after_stop.png).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from ark_obs.service import create_app
from ark_obs.settings import Settings
from ark_obs.synthetic import PIPELINE, Fault, SyntheticConfig, background_hook
from plugins.browser import ARTIFACTS, headless, png_size_and_variety
from plugins.net import free_port

Ready = Callable[[str], bool]
# heartbeats over HTTP from another process: an interval a loaded 2-core machine keeps without a gap
INTERVAL = 0.25  # heartbeat interval of the live services (s)
HTTP_INTERVAL = 1.0


def serve(settings: Settings, background: list[Any], ready: Ready, what: str) -> Iterator[str]:
    """Run a service until the generator is closed; yield its URL once ``ready(url)`` holds."""
    app = create_app(settings, background=background)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_for(lambda: ready(url), what)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (httpx.TransportError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.1)


def status(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(url + "/status.json", timeout=2).json()
    return body


def settings(**kw: Any) -> Settings:
    return Settings(port=free_port(), heartbeat_interval_seconds=INTERVAL, _env_file=None, **kw)  # type: ignore[call-arg]


def render(url: str, profile: Path, shot: str) -> str:
    """The DOM after the page's scripts ran, with a screenshot of the same state kept as an artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / shot
    path.unlink(missing_ok=True)
    taken = headless(url + "/", profile / "shot", f"--screenshot={path}")
    assert taken.returncode == 0 and path.exists(), taken.stderr[-2000:]
    width, height, variety = png_size_and_variety(path)
    assert (width, height) == (1280, 1000) and variety > 100
    result = headless(url + "/", profile / "dom", "--dump-dom")
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="live" class="ok"' in dom, "a panel failed to load"
    return dom


def element(dom: str, ident: str) -> str:
    """The opening tag and text of the element with id ``ident`` (up to its first child's end)."""
    match = re.search(rf'<[a-z]+ [^>]*id="{ident}"[^>]*>(.*?)</div>', dom, re.S)
    assert match, ident
    return match.group(0)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def agent_cards(dom: str) -> dict[str, dict[str, str]]:
    cards = {}
    for m in re.finditer(r'<div class="agent ([^"]*)" data-agent="([^"]+)" data-up="([^"]+)" '
                         r'data-quarantined="([^"]+)">(.*?)<div class="beat">([^<]*)</div>', dom):  # fmt: skip
        cards[m.group(2)] = {"class": m.group(1), "up": m.group(3), "quarantined": m.group(4),
                             "text": text_of(m.group(5)), "beat": m.group(6)}  # fmt: skip
    return cards


def slo_tile(dom: str) -> tuple[int, int, int, str]:
    m = re.search(r'id="sum-slos" data-met="(\d+)" data-violated="(\d+)" data-no-data="(\d+)">(.*?)</div>', dom)
    assert m, "SLO tile"
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)


# --- the three states ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faulted() -> Iterator[str]:
    """In-process synthetic loop: Kenny errors (the Watchdog quarantines it), Joey silent, Aletheia's span lost."""
    config = SyntheticConfig(rate=20, duration_seconds=None, latency_scale=0.5, bad_share=0.1, drop_share=0.3,
                             faults=(Fault.parse("kenny-errors"), Fault.parse("silence:Joey"),
                                     Fault.parse("drop:Aletheia")),
                             heartbeat_interval_seconds=INTERVAL)  # fmt: skip

    def ready(url: str) -> bool:
        st = status(url)
        joey_down = any(a["agent"] == "Joey" and a["up"] is False for a in st["agents"])
        listed = httpx.get(url + "/traces?status=incomplete", timeout=2).json()["count"]
        return joey_down and (st["period"]["quarantines"] or 0) > 0 and listed > 0

    yield from serve(settings(trace_ttl_seconds=1.5), [background_hook(config, announce=lambda _: None)], ready,
                     "Joey silent, Kenny quarantined, an incomplete trace listed")  # fmt: skip


@pytest.fixture(scope="module")
def after_stop() -> Iterator[str]:
    """A 2 s loop losing Kenny's span, then nothing: the incomplete traces have left the list, not the counts."""
    config = SyntheticConfig(rate=20, duration_seconds=2, latency_scale=0.3, drop_share=0.5,
                             faults=(Fault.parse("drop:Kenny"),), heartbeat_interval_seconds=INTERVAL)  # fmt: skip

    def ready(url: str) -> bool:
        st = status(url)
        listed = httpx.get(url + "/traces?status=incomplete", timeout=2).json()["count"]
        return st["period"]["incomplete"] > 0 and listed == 0 and st["period"]["incomplete_listed_period"] == 0

    # no history beyond the TTL: the finished traces are forgotten a second after they expire
    yield from serve(settings(trace_ttl_seconds=1.0, trace_history_seconds=0), [background_hook(config,
                     announce=lambda _: None)], ready, "incomplete traces counted but no longer listed")  # fmt: skip


@pytest.fixture(scope="module")
def healthy() -> Iterator[str]:
    """A service fed only over HTTP by ``ark-obs synthetic --target`` (another process): no fault."""
    port = free_port()
    feeder: subprocess.Popen[bytes] | None = None

    def ready(url: str) -> bool:
        nonlocal feeder
        if feeder is None:
            httpx.get(url + "/healthz", timeout=2)
            feeder = subprocess.Popen(
                [sys.executable, "-m", "ark_obs", "synthetic", "--target", url, "--rate", "20", "--duration", "0",
                 "--interval", str(HTTP_INTERVAL), "--latency-scale", "0.5", "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        st = status(url)
        return st["trace_latency"]["count"] >= 20 and all(a["up"] for a in st["agents"])

    try:
        yield from serve(Settings(port=port, heartbeat_interval_seconds=HTTP_INTERVAL, _env_file=None), [], ready,  # type: ignore[call-arg]
                         "20 traces over HTTP, every agent up")  # fmt: skip
    finally:
        if feeder is not None:
            feeder.terminate()
            feeder.wait(10)


# --- assertions ---------------------------------------------------------------------------------------------
def test_slo_tile_counts_met_violated_and_no_data_apart(faulted: str, tmp_path: Path) -> None:
    """The SLO tile shows met, violated and no data as three numbers with their own class, adding up to the
    total of /slos; each class has its own colour in the stylesheet and the tile's detail spells them out."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    report = httpx.get(faulted + "/slos").json()
    met, violated, no_data, inner = slo_tile(dom)
    assert met + violated + no_data == report["total"] == 4
    assert violated >= 1  # Kenny's quarantines violate availability
    assert re.search(rf'<span class="met" title="met">{met}</span>', inner)
    assert re.search(rf'<span class="violated" title="violated">{violated}</span>', inner)
    assert re.search(rf'<span class="no_data" title="no data">{no_data}</span>', inner)
    detail = text_of(element(dom, "sum-slos-detail"))
    assert detail == f"{met} met, {violated} violated, {no_data} no data of 4"
    colours = {
        c: re.search(rf"#summary \.tile \.value \.{c} {{ color: ([^;]+);", dom) for c in ("met", "violated", "no_data")
    }
    assert all(colours.values()) and len({m.group(1) for m in colours.values() if m}) == 3
    for row in re.findall(
        r'<div class="slo" data-slo="[^"]+" data-status="([^"]+)">.*?<span class="badge ([a-z_]+)">([^<]+)<', dom
    ):
        assert row[0] == row[1] and row[2] == {"met": "met", "violated": "violated", "no_data": "no data"}[row[0]]


def test_quarantined_agent_is_shown_as_such_and_availability_says_what_it_counts(faulted: str, tmp_path: Path) -> None:
    """Kenny, quarantined by the Watchdog, carries a 'quarantined N x' badge agreeing with the quarantines tile;
    Joey is silent; the availability SLO says it counts quarantines, not silent agents, and how much of its
    window this service observed."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    cards = agent_cards(dom)
    assert set(cards) >= set(PIPELINE)
    kenny, joey = cards["Kenny"], cards["Joey"]
    assert float(kenny["quarantined"]) > 0 and "quarantined" in kenny["class"].split()
    assert re.search(r"quarantined [\d.,]+× in 5 min", kenny["text"]) and "since start" in kenny["beat"]
    assert joey["up"] == "down" and "silent" in joey["text"]
    tile = text_of(element(dom, "sum-quarantines"))
    assert float(tile.replace(",", "")) == sum(float(c["quarantined"]) for c in cards.values())
    note = re.search(r'<div class="note" data-note="availability">([^<]+)</div>', dom)
    assert note and "Watchdog quarantines only" in note.group(1) and "not silent agents" in note.group(1)
    assert "observed" in note.group(1) and "counts as up" in note.group(1)
    assert "Counts and SLOs cover the last 5 min (the SLO window); this service has observed" in text_of(
        element(dom, "timebase")
    )
    for ident in ("sum-traces", "sum-denials", "sum-quarantines"):
        tile_html = re.search(rf'id="{ident}".*?<div class="detail tb">([^<]*)</div>', dom)
        assert tile_html and tile_html.group(1) == "last 5 min", ident


def test_overspent_budget_and_burn_rates_are_unmistakable(faulted: str, tmp_path: Path) -> None:
    """The violated availability SLO's budget reads OVERSPENT with a full red bar (not an empty grey one),
    and its 5m burn rate from /slos is shown, marked hot above 1x."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    slo = re.search(
        r'<div class="slo" data-slo="availability" data-status="violated">(.*?)</div></div></div>', dom, re.S
    )
    assert slo, "availability is violated"
    body = slo.group(1)
    budget = re.search(r'data-budget="overspent"><div class="bar"><div class="fill out" style="width:100.0%">'
                       r'</div></div><span class="budget-text out">([^<]+)</span>', body)  # fmt: skip
    assert (
        budget
        and budget.group(1).startswith("error budget OVERSPENT: ")
        and "× the budget spent in 5m" in budget.group(1)
    )
    burn = re.search(r'data-burn="([^"]+)"', body)
    assert burn and burn.group(1).startswith("5m=")
    assert float(burn.group(1).split(",")[0].removeprefix("5m=")) > 1
    assert re.search(r'5m <b class="hot">[\d.,]+×</b>', body)


def test_histogram_is_honest_with_a_y_axis_and_legible_labels(faulted: str, tmp_path: Path) -> None:
    """Decision latency names its metric; each bar is as wide as its bucket and as tall as events per ms
    (area = count); the y axis has ticks and a title; x labels are a few round values, never overlapping."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    assert 'data-metric="ark_pass_latency_ms"' in dom and '<span id="latency-name">Decision latency</span>' in dom
    assert "(ark_pass_latency_ms: Kyle ingestion to Aletheia completion, last 5 min" in dom
    bars = [
        {k: float(v) for k, v in zip(("le", "count", "lo", "x", "width", "y", "height"), m, strict=True)}
        for m in re.findall(
            r'<rect class="col(?: over)?" data-le="([^"]+)" data-count="([^"]+)" data-lo="([^"]+)" '
            r'x="([^"]+)" width="([^"]+)" y="([^"]+)" height="([^"]+)">',
            dom,
        )
    ]
    assert len(bars) >= 3 and sum(b["count"] for b in bars) > 0
    widths = {b["le"] - b["lo"] for b in bars}
    assert len(widths) > 1, "the buckets shown are unequal, so must their bars be"
    px_per_ms = [(b["width"] + 1) / (b["le"] - b["lo"]) for b in bars]
    assert max(px_per_ms) - min(px_per_ms) < 1e-6 * max(px_per_ms)
    filled = [b for b in bars if b["count"] > 0]
    px_per_density = [b["height"] / (b["count"] / (b["le"] - b["lo"])) for b in filled]
    assert max(px_per_density) - min(px_per_density) < 1e-6 * max(px_per_density)
    yaxis = re.search(r'<g id="latency-yaxis">(.*?)</g>', dom, re.S)
    assert yaxis and len(re.findall(r'<text class="tick"', yaxis.group(1))) >= 3 and "events per ms" in yaxis.group(1)
    xaxis = re.search(r'<g id="latency-xaxis">(.*?)</g>', dom, re.S)
    assert xaxis and "latency (ms)" in xaxis.group(1)
    ticks = [float(x) for x in re.findall(r'<text class="tick" x="([^"]+)"', xaxis.group(1))]
    assert 3 <= len(ticks) <= 8 and min(b - a for a, b in itertools.pairwise(ticks)) >= 50
    assert re.search(r'<g class="threshold">.*?400 ms SLO</text>', dom)
    assert re.search(r'<g class="overflow" data-le="\+Inf" data-count="[\d.]+">', dom)


def test_incomplete_list_and_its_counts_cover_the_same_period(faulted: str, tmp_path: Path) -> None:
    """While traces are held, the list's header counts them over the trace TTL and shows the newest."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    m = re.search(
        r'id="incomplete-sub">\(expired before every agent saw them; held 1.5 s after expiry: ([\d,]+)\+? '
        r"in the last 1.5 s, the (\d+) newest shown\)",
        dom,
    )
    assert m and 1 <= int(m.group(2)) <= 10 and len(re.findall(r"<tr data-trace=", dom)) == int(m.group(2))
    assert float(m.group(1).replace(",", "")) >= int(m.group(2))  # every listed trace is counted


def test_after_stop_the_list_never_contradicts_the_counters(after_stop: str, tmp_path: Path) -> None:
    """After the loop stopped and one trace TTL passed, the list is empty but says the incomplete traces of
    the window were counted and have expired from the list; it never claims every trace passed every agent."""
    dom = render(after_stop, tmp_path, "status_after_stop.png")
    counted = status(after_stop)["period"]["incomplete"]
    _complete, incomplete = text_of(element(dom, "sum-traces")).split(" / ")
    assert float(incomplete.replace(",", "")) == counted > 0
    empty = re.search(r'<div id="incomplete"><div class="empty">([^<]+)</div>', dom)
    assert empty, "the list is empty"
    assert "passed every agent" not in empty.group(1)
    assert re.match(r"none held now: the [\d,]+ incomplete traces of the last 5 min \(see the tile\) expired more "
                    r"than 1 s ago and are only counted", empty.group(1))  # fmt: skip


def test_healthy_http_fed_service_says_not_reported_and_names_trace_latency(healthy: str, tmp_path: Path) -> None:
    """Fed over HTTP (spans and heartbeats only), denials and quarantines read 'not reported', not 0; the latency
    panel names ark_trace_latency_ms; every agent is up and no trace is incomplete."""
    dom = render(healthy, tmp_path, "status_healthy.png")
    for ident in ("sum-denials", "sum-quarantines"):
        assert re.search(rf'<div class="value not-reported" id="{ident}" title="no [^"]+">not reported</div>', dom)
    assert 'data-metric="ark_trace_latency_ms"' in dom and "End-to-end trace latency" in dom
    cards = agent_cards(dom)
    assert set(cards) == set(PIPELINE) and all(c["up"] == "up" and c["quarantined"] == "0" for c in cards.values())
    assert "none: every trace finalized in the last 5 min passed every agent" in dom
    assert "held 5 min after expiry: 0 in the last 5 min)" in dom
    note = re.search(r'<div class="note" data-note="availability">([^<]+)</div>', dom)
    assert note and "No quarantine is reported to this service" in note.group(1)
    met, violated, no_data, _ = slo_tile(dom)
    # decision and HRM latency are judged on the spans (ark_trace_latency_ms, HRM's span durations): data, met or
    # violated as this loaded machine's passes were; availability and drift are met
    assert no_data == 0 and met >= 2 and met + violated == 4
    assert "none silent or quarantined" in dom


# --- /status.json without a browser ---------------------------------------------------------------------------
async def test_status_json_counts_over_one_window_and_says_what_is_not_reported() -> None:
    """Counters nothing reported are null (not 0); once the Watchdog reports, every agent has a count (0 for one
    never quarantined) and the window's increase per agent and in total agree; the period and observed time
    are stated."""
    from ark_obs.metrics import MetricsCollector
    from ark_obs.service.status_page import snapshot

    collector = MetricsCollector(ticker=False)
    started = collector.clock()
    before = snapshot(collector, started)
    assert before.period.denials is None and before.period.quarantines is None
    assert before.window_seconds == 300 and 0 <= before.observed_seconds <= 1
    assert all(a.quarantines_in_window is None for a in before.agents)

    for _ in range(3):
        collector.inc_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "error_burst"})
    collector.inc_counter("hrm_denials_total", labels={"rule_id": "GY-001", "agent": "Kenny"})
    after = snapshot(collector, started)
    kenny = next(a for a in after.agents if a.agent == "Kenny")
    assert after.period.quarantines == 3 == kenny.quarantines_in_window == kenny.quarantines_total
    assert after.period.denials == 1
    joey = next(a for a in after.agents if a.agent == "Joey")  # the Watchdog reports: Joey had none
    assert joey.quarantines_in_window == 0 and joey.quarantines_total == 0
