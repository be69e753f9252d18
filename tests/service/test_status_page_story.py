"""The status page tells one story in every state, as headless Chromium renders it.

Each state is a real service on a loopback port; the assertions read the DOM the page's scripts built,
and a screenshot of each state is kept under test-artifacts/ (status_healthy.png, status_faulted.png,
status_after_stop.png, status_fresh.png, status_store_down.png, status_store_degraded.png, status_stalled.png,
status_kenny_stalled.png, status_chart_*.png). Each state is rendered once per module
(one Chromium run for its screenshot, one for its DOM) and shared by the tests reading it.
"""

from __future__ import annotations

import itertools
import json
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
from plugins.redis_server import RedisServer, redis_binary

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
    port = free_port()
    kw.setdefault("runbook_url", f"http://127.0.0.1:{port}/runbook")
    return Settings(port=port, heartbeat_interval_seconds=INTERVAL, _env_file=None, **kw)  # type: ignore[call-arg]


_RENDERED: dict[tuple[str, str], str] = {}


def render(url: str, profile: Path, shot: str, live: str = "ok") -> str:
    """The DOM after the page's scripts ran, with a screenshot of the same state kept as an artifact.

    Rendered once per service and screenshot name: the tests of one state share it.
    """
    key = (url, shot)
    if key not in _RENDERED:
        _RENDERED[key] = _render(url, profile, shot)
    dom = _RENDERED[key]
    shown = re.search(r'id="live" class="([^"]*)"[^>]*>(.*?)</', dom, re.S)
    assert f'id="live" class="{live}"' in dom, (live, shown and shown.groups())
    return dom


def _render(url: str, profile: Path, shot: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / shot
    path.unlink(missing_ok=True)
    # one Chromium run: the screenshot and the DOM of the same page, after the same 5 s of virtual time
    result = headless(url + "/", profile / "chromium", f"--screenshot={path}", "--dump-dom")
    assert result.returncode == 0 and path.exists() and "</html>" in result.stdout, result.stderr[-2000:]
    width, height, variety = png_size_and_variety(path)
    assert (width, height) == (1280, 1000) and variety > 100
    return result.stdout


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


# --- the states -------------------------------------------------------------------------------------------
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
        return joey_down and (st["period"]["quarantines"] or 0) > 0 and st["incomplete_more"] > 0

    yield from serve(settings(trace_ttl_seconds=1.5), [background_hook(config, announce=lambda _: None)], ready,
                     "Joey silent, Kenny quarantined, more than 10 incomplete traces")  # fmt: skip


@pytest.fixture(scope="module")
def after_stop() -> Iterator[str]:
    """A 2 s loop losing Kenny's span, then nothing: the store forgot the incomplete traces, the window did not."""
    config = SyntheticConfig(rate=20, duration_seconds=2, latency_scale=0.3, drop_share=0.5,
                             faults=(Fault.parse("drop:Kenny"),), heartbeat_interval_seconds=INTERVAL)  # fmt: skip

    def ready(url: str) -> bool:
        st = status(url)
        held = httpx.get(url + "/traces?status=incomplete", timeout=2).json()["count"]
        return st["period"]["incomplete"] > 10 and held == 0

    # no history beyond the TTL: the finished traces are forgotten a second after they expire
    hook = background_hook(config, announce=lambda _: None)
    yield from serve(settings(trace_ttl_seconds=1.0, trace_history_seconds=0), [hook], ready,
                     "incomplete traces counted, no longer held by the store")  # fmt: skip


@pytest.fixture(scope="module")
def fresh() -> Iterator[str]:
    """A service just started, with no traffic at all."""
    yield from serve(settings(), [], lambda url: httpx.get(url + "/healthz", timeout=2).status_code == 200,
                     "the service answers")  # fmt: skip


@pytest.fixture(scope="module")
def store_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A service on its own Redis, fed by the in-process loop; the Redis is killed mid-traffic.

    Yields the URL and how long after the kill ``/status.json`` first said the store was down.
    """
    server = RedisServer(redis_binary(), tmp_path_factory.mktemp("redis-killed"))
    server.start()
    config = SyntheticConfig(rate=20, duration_seconds=None, latency_scale=0.3, heartbeat_interval_seconds=INTERVAL)

    def ready(url: str) -> bool:
        st = status(url)
        return st["trace_latency"]["count"] > 0 and all(a["state"] == "up" for a in st["agents"])

    service = serve(settings(trace_store=server.url), [background_hook(config, announce=lambda _: None)], ready,
                    "traffic through Redis, every agent up")  # fmt: skip
    try:
        url = next(service)
        assert status(url)["store"]["state"] == "ok"
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(5)
        killed = time.monotonic()
        wait_for(lambda: status(url)["store"]["state"] == "down", "store reported down", timeout=10)
        yield {"url": url, "seconds": time.monotonic() - killed, "redis": server}
    finally:
        service.close()
        server.stop()


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


def green_tiles(dom: str) -> list[str]:
    return re.findall(r'<div class="tile met" id="(tile-[a-z]+)"', dom)


def runbook_links(dom: str) -> list[str]:
    return re.findall(r'href="[^"#]*/runbook#([a-z\-]+)"', dom)


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
    assert detail == f"{met} met, {violated} violated, {no_data} without data or evidence of 4runbook"
    colours = {
        c: re.search(rf"#summary \.tile \.value \.{c} {{ color: ([^;]+);", dom) for c in ("met", "violated", "no_data")
    }
    assert all(colours.values()) and len({m.group(1) for m in colours.values() if m}) == 3
    for row in re.findall(
        r'<div class="slo" data-slo="[^"]+" data-status="([^"]+)" data-shown="[^"]+">.*?'
        r'<(?:span|a) class="badge ([a-z_]+)"[^>]*>([^<]+)<',
        dom,
    ):
        assert row[0] == row[1] and row[2] == {"met": "met", "violated": "violated", "no_data": "no data"}[row[0]]


def test_quarantined_agent_is_shown_as_such_and_availability_says_what_it_counts(faulted: str, tmp_path: Path) -> None:
    """Kenny, quarantined by the Watchdog, carries a 'quarantined N x' badge agreeing with the quarantines tile;
    Joey is silent; the availability SLO says it counts quarantines, not silent agents, and how much of its
    window this service observed; every red or amber element links to its runbook section."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    cards = agent_cards(dom)
    assert set(cards) >= set(PIPELINE)
    kenny, joey = cards["Kenny"], cards["Joey"]
    assert int(kenny["quarantined"]) > 0 and "quarantined" in kenny["class"].split()
    assert re.search(r"quarantined \d+× in 5 min", kenny["text"]) and "since start" in kenny["beat"]
    assert joey["up"] == "down" and "silent" in joey["text"]
    tile = text_of(element(dom, "sum-quarantines"))
    assert int(tile.replace(",", "")) == sum(int(c["quarantined"]) for c in cards.values())
    note = re.search(r'<div class="note" data-note="availability">([^<]+)</div>', dom)
    assert note and "Watchdog quarantines only" in note.group(1) and "not silent agents" in note.group(1)
    assert "observed" in note.group(1) and "counts as up" in note.group(1)
    assert "Counts and SLOs cover the last 5 min (the SLO window); this service has observed" in text_of(
        element(dom, "timebase")
    )
    assert re.search(r'id="sum-traces">[\d,]+ / [\d,]+</div><div class="detail tb">last 5 min', dom)
    for ident in ("sum-denials-detail", "sum-quarantines-detail"):
        assert text_of(element(dom, ident)).startswith("last 5 min"), ident
    # what to do next: the silent agent, the quarantine, the violated SLO, the incomplete traces
    links = set(runbook_links(dom))
    assert {"arkagentsilent", "arkcanaryquarantine", "arkslobudgetburnpage", "arktracesincomplete"} <= links
    assert all(href.startswith(faulted + "/runbook#") for href in re.findall(r'href="([^"]*/runbook#[^"]+)"', dom))
    page = httpx.get(faulted + "/runbook").text
    for anchor in links:
        assert f'<h2 id="{anchor}">' in page, anchor


def test_overspent_budget_and_burn_rates_are_unmistakable(faulted: str, tmp_path: Path) -> None:
    """The violated availability SLO's budget reads OVERSPENT with a full red bar (not an empty grey one),
    and its 5m burn rate from /slos is shown, marked hot above 1x."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    slo = re.search(
        r'<div class="slo" data-slo="availability" data-status="violated" data-shown="violated">'
        r"(.*?)</div></div></div>",
        dom,
        re.S,
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
    assert re.search(r'<a class="badge violated" href="[^"]+/runbook#arkslobudgetburnpage"', body)


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
    assert all(b["count"] == int(b["count"]) for b in bars)  # counts of events are whole
    widths = {b["le"] - b["lo"] for b in bars}
    assert len(widths) > 1, "the buckets shown are unequal, so must their bars be"
    px_per_ms = [(b["width"] + 1) / (b["le"] - b["lo"]) for b in bars]
    assert max(px_per_ms) - min(px_per_ms) < 1e-6 * max(px_per_ms)
    filled = [b for b in bars if b["count"] > 0]
    px_per_density = [b["height"] / (b["count"] / (b["le"] - b["lo"])) for b in filled]
    assert max(px_per_density) - min(px_per_density) < 1e-6 * max(px_per_density)
    yaxis = re.search(r'<g id="latency-yaxis">(.*?)</g>', dom, re.S)
    assert yaxis and "events per ms" in yaxis.group(1)
    yticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', yaxis.group(1))
    assert len(yticks) >= 3 and len(set(yticks)) == len(yticks), yticks  # distinct: never all "0"
    xaxis = re.search(r'<g id="latency-xaxis">(.*?)</g>', dom, re.S)
    assert xaxis and "latency (ms)" in xaxis.group(1)
    ticks = [float(x) for x in re.findall(r'<text class="tick" x="([^"]+)"', xaxis.group(1))]
    assert 3 <= len(ticks) <= 8 and min(b - a for a, b in itertools.pairwise(ticks)) >= 50
    assert re.search(r'<g class="threshold">.*?400 ms SLO</text>', dom)
    assert re.search(r'<g class="overflow" data-le="\+Inf" data-count="\d+">', dom)


def test_incomplete_list_covers_the_window_the_tile_counts(faulted: str, tmp_path: Path) -> None:
    """The list's header counts the incomplete traces of the same 5 minutes as the tile, shows the newest 10
    and says how many more; each row names its missing agent."""
    dom = render(faulted, tmp_path, "status_faulted.png")
    m = re.search(
        r'id="incomplete-sub" data-total="(\d+)" data-more="(\d+)">\(expired before every agent saw them: ([\d,]+) '
        r"incomplete traces in the last 5 min, the (\d+) newest shown, and ([\d,]+) more\)",
        dom,
    )
    assert m, re.search(r'id="incomplete-sub"[^>]*>[^<]*', dom)
    total, more, shown = int(m.group(1)), int(m.group(2)), int(m.group(4))
    assert shown == 10 == len(re.findall(r"<tr data-trace=", dom)) and more == total - 10 > 0
    _complete, tile = text_of(element(dom, "sum-traces")).split(" / ")
    assert abs(int(tile.replace(",", "")) - total) <= 2  # the tile and the list: one window (a refresh apart)
    missing = re.findall(r'<tr data-trace="[0-9a-f]{32}" data-missing="([A-Za-z,]+)">', dom)
    assert len(missing) == 10 and set(",".join(missing).split(",")) <= {"Kenny", "Aletheia"}


def test_after_stop_the_list_still_lists_what_the_tile_counts(after_stop: str, tmp_path: Path) -> None:
    """After the loop stopped and the store forgot the expired traces, the list still shows the newest
    incomplete traces of the window (from their kept reports, no longer links) and counts the rest."""
    dom = render(after_stop, tmp_path, "status_after_stop.png")
    counted = status(after_stop)["period"]["incomplete"]
    _complete, incomplete = text_of(element(dom, "sum-traces")).split(" / ")
    assert int(incomplete.replace(",", "")) == counted > 10
    assert f"{counted} incomplete traces in the last 5 min, the 10 newest shown, and {counted - 10} more" in dom
    rows = re.findall(
        r'<tr data-trace="([0-9a-f]{32})" data-missing="Kenny"><td class="mono"><span title="the store', dom
    )
    assert len(rows) == 10
    assert '<div id="incomplete"><div class="empty">' not in dom


def test_healthy_http_fed_service_says_not_reported_and_names_trace_latency(healthy: str, tmp_path: Path) -> None:
    """Fed over HTTP (spans and heartbeats only), denials and quarantines read 'not reported', not 0, on grey
    tiles; the latency panel names ark_trace_latency_ms; every agent is up and no trace is incomplete; the
    availability SLO, unbacked by any quarantine report, is not shown as green."""
    dom = render(healthy, tmp_path, "status_healthy.png")
    for ident in ("sum-denials", "sum-quarantines"):
        assert re.search(rf'<div class="value not-reported" id="{ident}" title="no [^"]+">not reported</div>', dom)
    assert 'data-metric="ark_trace_latency_ms"' in dom and "End-to-end trace latency" in dom
    cards = agent_cards(dom)
    assert set(cards) == set(PIPELINE) and all(c["up"] == "up" and c["quarantined"] == "0" for c in cards.values())
    assert "none: every trace finalized in the last 5 min passed every agent" in dom
    assert "0 incomplete traces in the last 5 min)" in dom
    note = re.search(r'<div class="note" data-note="availability">([^<]+)</div>', dom)
    assert note and "No quarantine is reported to this service" in note.group(1)
    assert 'data-slo="availability" data-status="met" data-shown="unknown"' in dom
    met, violated, no_data, _ = slo_tile(dom)
    # decision and HRM latency are judged on the spans (ark_trace_latency_ms, HRM's span durations): data, met or
    # violated as this loaded machine's passes were; availability alone has nothing reported
    assert no_data == 1 and met >= 1 and met + violated == 3
    assert "every agent heartbeating, none quarantined" in dom
    # the evidence: heartbeats, traces, none stalled among them (and the SLOs, when this machine met them)
    assert (
        {"tile-agents", "tile-traces", "tile-stalled"}
        <= set(green_tiles(dom))
        <= {"tile-agents", "tile-traces", "tile-stalled", "tile-slos"}
    )


def test_fresh_start_shows_no_green_without_evidence(fresh: str, tmp_path: Path) -> None:
    """Started with no traffic: no tile is green, the agents have no heartbeat yet (not "0 / 5" in green),
    availability does not claim 300 s up after a few seconds, and every count is a whole number."""
    dom = render(fresh, tmp_path, "status_fresh.png")
    assert green_tiles(dom) == []
    assert re.search(r'<div class="tile unknown" id="tile-agents">', dom)
    assert text_of(element(dom, "sum-agents-detail")) == "5 without a heartbeat yet"
    assert all(c["up"] == "unknown" and c["beat"] == "unknown: no heartbeat yet" for c in agent_cards(dom).values())
    events = re.search(r'data-slo="availability".*?<span class="events">([^<]+)</span>', dom, re.S)
    assert events and re.fullmatch(r"0 s of downtime counted, [\d.]+ s observed", events.group(1)), events
    assert "300 s up" not in dom and " / 300 s" not in dom
    assert "0 good of 0 events" in dom and "0 events)" in dom  # plurals: 0 events, never "0 event"
    assert "no events in the last 5 min" in dom
    assert text_of(element(dom, "sum-traces")) == "0 / 0"
    _, violated, no_data, _ = slo_tile(dom)
    assert violated == 0
    # nothing violated but SLOs without data: the tile says "no data", not "met", and each such SLO's badge too
    assert '<div class="tile no_data" id="tile-slos">' in dom
    assert re.search(r"#summary \.tile\.no_data(, #summary \.tile\.unknown)? \{ border-color: [^;]+;", dom)
    silent = {s["name"] for s in httpx.get(fresh + "/slos").json()["slos"] if s["status"] == "no_data"}
    rows = re.findall(
        r'<div class="slo" data-slo="([^"]+)" data-status="no_data"[^>]*>'
        r'.*?<span class="badge ([a-z_]+)"[^>]*>([^<]+)<',
        dom,
    )
    # the tile's "no data" also counts availability, met by /slos but without evidence here ("met, no evidence")
    assert {r[0] for r in rows} == silent and len(silent) + 1 == no_data
    assert all(r[1:] == ("no_data", "no data") for r in rows), rows


def test_store_killed_mid_traffic_is_shown_within_one_refresh(store_down: dict[str, Any], tmp_path: Path) -> None:
    """Redis killed while traffic flows: /status.json says the store is down within one refresh (1.5 s), and
    the page shows it: a red banner with what fails and since when, linked to the runbook; the live dot is
    not green; agents are "unknown: store down", not "no heartbeat yet"; nothing is green."""
    assert store_down["seconds"] <= 1.5, store_down
    url = store_down["url"]
    dom = render(url, tmp_path, "status_store_down.png", live="error")
    banner = re.search(r'<div id="store-banner" class="down" data-state="down">(.*?)</div>', dom, re.S)
    assert banner, "no store-down banner"
    text = text_of(banner.group(1))
    assert re.match(r"Trace store \(redis\) DOWN since \d", text) and "redis unavailable" in text, text
    assert "/runbook#trace-store-unavailable" in banner.group(1)
    assert "trace store down" in text_of(element(dom, "updated"))
    cards = agent_cards(dom)
    assert set(cards) == set(PIPELINE)
    assert all(c["up"] == "unknown" and c["beat"] == "unknown: store down" for c in cards.values())
    assert text_of(element(dom, "sum-agents")) == "unknown"
    # in-process evidence only (the SLOs this process judges, its Watchdog's count): never agents or traces
    assert set(green_tiles(dom)) <= {"tile-slos", "tile-quarantines"}
    assert re.search(r'<div class="tile unknown" id="tile-traces">', dom)


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


def test_store_back_after_an_outage_is_degraded_not_healthy(store_down: dict[str, Any], tmp_path: Path) -> None:
    """Once the killed Redis is back (same port), the store reconnects by itself and the page says it is
    degraded, amber, counting the spans the outage dropped in the window: not red, and not silently green."""
    url, server = store_down["url"], store_down["redis"]
    status(url)  # the down state was rendered by the test before
    server.start()
    wait_for(lambda: status(url)["store"]["state"] == "degraded", "store reported degraded", timeout=20)
    store = status(url)["store"]
    assert store["dropped_in_window"] > 0 and store["since"] is None
    dom = render(url, tmp_path, "status_store_degraded.png", live="degraded")
    banner = re.search(r'<div id="store-banner" class="degraded" data-state="degraded">(.*?)</div>', dom, re.S)
    assert banner and re.match(
        r"Trace store \(redis\) degraded: \d+ spans dropped in the window", text_of(banner.group(1))
    )
    assert "/runbook#trace-store-unavailable" in banner.group(1)
    assert "trace store degraded" in text_of(element(dom, "updated"))


# --- the latency chart at the rates ARK runs at -------------------------------------------------------------
@pytest.fixture(scope="module", params=[0.1, 1000.0], ids=["0.1-per-s", "1000-per-s"])
def rate_chart(request: pytest.FixtureRequest) -> Iterator[tuple[float, str]]:
    """A service whose decision latency histogram holds 5 minutes at ``rate`` decisions per second: 30 fast
    decisions, or 300,000 mostly between 350 ms and 3 s (the 400 ms marker near the chart's left edge)."""
    import random

    from ark_obs.service.wiring import build_collector

    rate: float = request.param
    st = settings()
    collector, owned = build_collector(st)
    rng = random.Random(7)
    for _ in range(round(rate * 300)):
        value = rng.uniform(60, 220) if rate < 1 else rng.uniform(350, 3000)
        collector.observe_histogram("ark_pass_latency_ms", value)
    app = create_app(st, collector)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=st.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{st.port}"
    try:
        wait_for(lambda: status(url)["decision_latency"]["count"] == round(rate * 300), "the histogram served")
        yield rate, url
    finally:
        server.should_exit = True
        thread.join(10)
        for item in owned:
            item.close()


def test_latency_chart_is_legible_at_low_and_high_rates(rate_chart: tuple[float, str], tmp_path: Path) -> None:
    """At 0.1 and 1,000 decisions/s the y ticks are distinct numbers (never all "0"), the count is whole, and
    the 400 ms label sits above the plot, clear of the y axis, its ticks and its title."""
    rate, url = rate_chart
    dom = render(url, tmp_path, f"status_chart_{rate:g}_per_s.png")
    yaxis = re.search(r'<g id="latency-yaxis">(.*?)</g>', dom, re.S)
    assert yaxis
    yticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', yaxis.group(1))
    assert len(yticks) >= 3 and len(set(yticks)) == len(yticks) and any(t.strip("0.,") for t in yticks), yticks
    assert f"{round(rate * 300):,} events)" in dom
    label = re.search(r'<g class="threshold"><line x1="([\d.]+)"[^>]*></line><text x="([\d.]+)" y="([\d.]+)" '
                      r'text-anchor="(start|end)">400 ms SLO</text>', dom)  # fmt: skip
    assert label, re.search(r'<g class="threshold">.*?</g>', dom)
    line_x, text_x, text_y = (float(label.group(i)) for i in (1, 2, 3))
    width = 7 * len("400 ms SLO")  # 12 px text: at most 7 px a character
    left = text_x - width if label.group(4) == "end" else text_x
    assert left >= 64, "the label covers the y axis"  # L: the plot's left edge, right of the ticks and title
    top_of_plot = min(float(y) for y in re.findall(r'class="gridline"[^>]*y1="([\d.]+)"', yaxis.group(1)))
    assert text_y < top_of_plot and abs(text_x - line_x) == 4


# --- stalled traces (GET /traces?status=stalled, where the service offers it) -------------------------------
STALLED = [
    {"trace_id": f"{i:032x}", "status": "stalled", "waiting_on": "Kenny", "waited_seconds": 2.5 + i,
     "complete": False, "agents_seen": ["Kyle", "Joey", "HRM"], "missing_agents": ["Kenny", "Aletheia"]}
    for i in range(1, 13)
]  # fmt: skip


@pytest.fixture(scope="module")
def stalled() -> Iterator[str]:
    """A service whose /traces?status=stalled answers in the shape of the stall API (items with waiting_on and
    waited_seconds), and whose /status.json counts them (``stalled``): 12 traces waiting on Kenny."""
    st = settings()
    app = create_app(st)

    async def answer(send: Any, body: bytes) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def stall_api(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/traces" and b"status=stalled" in scope["query_string"]:
            await answer(send, json.dumps({"status": "stalled", "count": len(STALLED), "traces": STALLED}).encode())
            return
        if scope["type"] == "http" and scope["path"] == "/status.json":  # the real one, counting the stub's
            chunks: list[bytes] = []

            async def keep(message: Any) -> None:
                if message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await app(scope, receive, keep)
            body = json.loads(b"".join(chunks))
            body["stalled"] = {"Kenny": len(STALLED)}
            await answer(send, json.dumps(body).encode())
            return
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(stall_api, host="127.0.0.1", port=st.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{st.port}"
    try:
        wait_for(lambda: httpx.get(url + "/traces?status=stalled", timeout=2).json()["count"] == 12, "the stub")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_stalled_traces_are_shown_with_the_agent_waited_on(stalled: str, fresh: str, tmp_path: Path) -> None:
    """Where traces are stalled, the page shows a stalled tile (count, who they wait on, runbook) and the newest
    10 with the agent each waits on and for how long; with no traffic yet, none stalled is not shown green."""
    dom = render(stalled, tmp_path, "status_stalled.png")
    assert '<div class="tile warn" id="tile-stalled">' in dom
    assert text_of(element(dom, "sum-stalled")) == "12"
    detail = r'id="sum-stalled-detail">12 waiting on Kenny<a class="runbook" href="[^"]+/runbook#traces-stalled"'
    assert re.search(detail, dom)
    rows = re.findall(r'<tr data-stalled="([0-9a-f]{32})" data-waiting-on="Kenny">', dom)
    assert len(rows) == 10 and "and 2 more" in dom
    assert '<section class="wide" id="stalled-panel">' in dom
    plain = render(fresh, tmp_path, "status_fresh.png")  # no traffic yet: none stalled is not good news
    assert '<section class="wide" id="stalled-panel">' in plain
    assert re.search(r'<div class="tile unknown" id="tile-stalled">', plain)
    assert "none: no trace is waiting on an agent" in plain


# --- the Kenny fault fed over HTTP, against the real stall detection ----------------------------------------
def _metric(url: str, name: str) -> dict[str, float]:
    """``name``'s samples on ``url``'s /metrics, by their labels' values joined with ','."""
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    text = httpx.get(url + "/metrics", timeout=10).text
    return {",".join(s.labels.values()): s.value for f in parse_text(text) for s in f.samples if s.name == name}


def _frozen_stall(url: str) -> int:
    """The traces stalled at Kenny, once every trace in flight is one of them (the loop has ended, so nothing
    more can stall or complete until the TTL), read alike by /status.json, /traces and /metrics; else 0."""
    st = status(url)
    stalled = st["stalled"] or {}
    kenny = stalled.get("Kenny", 0)
    if not kenny or st["traces"]["in_flight"] != sum(stalled.values()):
        return 0
    listed = httpx.get(url + "/traces", params={"status": "stalled", "limit": 1000}, timeout=10).json()
    gauge = _metric(url, "ark_traces_stalled")
    return kenny if listed["count"] == kenny == gauge.get("Kenny") else 0


@pytest.mark.slow
def test_kenny_fault_over_http_shows_the_real_stall_and_the_failed_passes(start: Any, tmp_path: Path) -> None:
    """``ark-obs synthetic --target URL --fault kenny-errors`` (another process, as agents on other hosts): Kenny
    fails three passes and, quarantined by the Watchdog in that process, skips the next ones. On the page of
    the real ``ark-obs serve``, the stalled tile is amber and counts every trace waiting on Kenny, as
    /traces?status=stalled and ark_traces_stalled{waiting_on="Kenny"} count them; the list's rows wait on
    Kenny; the failed passes are counted apart from the complete ones (not green) as ark_traces_failed_total
    and /traces?status=failed count them; both link their runbook section.

    ARK_OBS_STALL_SECONDS=2 instead of 6: the same detection, 4 s sooner (the 6 s default is proved within
    10 s by tests/service/test_stalls_e2e.py). The loop runs 3 s and stops, so the state is frozen once every
    trace in flight is stalled (until the 300 s TTL): the page, the API and /metrics, read a refresh apart,
    must then agree exactly."""
    server = start({"ARK_OBS_STALL_SECONDS": "2"})
    loop = subprocess.run(
        [sys.executable, "-m", "ark_obs", "synthetic", "--target", server.url, "--fault", "kenny-errors",
         "--rate", "40", "--duration", "3", "--latency-scale", "0.1", "--json"],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert loop.returncode in (0, 1), loop.stderr.decode()  # 1: the quarantines are reported as a criterion
    found: list[int] = []
    wait_for(lambda: found.append(_frozen_stall(server.url)) or found[-1] > 0, "every trace in flight stalled at "
             "Kenny, alike on /status.json, /traces?status=stalled and /metrics", timeout=20)  # fmt: skip
    stalled = found[-1]
    assert stalled > 100  # more than the list shows, and than the page fetches (limit=100)

    dom = render(server.url, tmp_path, "status_kenny_stalled.png")
    assert _frozen_stall(server.url) == stalled  # still the same after the page's reads
    assert re.search(r'<div class="tile warn" id="tile-stalled">', dom)
    assert text_of(element(dom, "sum-stalled")) == f"{stalled:,}"  # all of them, not the 100 the page fetches
    assert re.search(rf'<div class="value" id="sum-stalled" data-total="{stalled}">', dom)
    # the runbook base is ARK_OBS_RUNBOOK_URL's default here (this serve sets none)
    detail = rf'id="sum-stalled-detail">{stalled:,} waiting on Kenny<a class="runbook" href="[^"]+#traces-stalled"'
    assert re.search(detail, dom), element(dom, "sum-stalled-detail")
    rows = re.findall(r'<tr data-stalled="([0-9a-f]{32})" data-waiting-on="([^"]+)">', dom)
    assert len(rows) == 10 and {agent for _, agent in rows} == {"Kenny"}
    listed = httpx.get(server.url + "/traces", params={"status": "stalled", "limit": 1000}, timeout=10).json()
    assert {t for t, _ in rows} <= {t["trace_id"] for t in listed["traces"]}
    assert f"and {stalled - 10:,} more" in dom
    assert f"(waiting on an agent now: {stalled:,} traces, the 10 most recently active shown)" in dom

    # the passes Kenny failed: complete, counted apart, not green
    failed = _metric(server.url, "ark_traces_failed_total")
    listed_failed = httpx.get(server.url + "/traces", params={"status": "failed", "limit": 1000}, timeout=10).json()
    # how many passes Kenny failed before the Watchdog quarantined him depends on the loop's timing: every
    # view must count the same number (the loop has stopped, so it no longer changes)
    n_failed = int(failed.get("Kenny", 0))
    assert set(failed) == {"Kenny"} and n_failed >= 1 and listed_failed["count"] == n_failed
    assert {t["failed_at"] for t in listed_failed["traces"]} == {"Kenny"}
    assert re.search(r'<div class="tile warn" id="tile-traces">', dom)
    note = re.search(r'<div class="detail" id="sum-failed" data-failed="(\d+)">(.*?)</div>', dom)
    assert note and note.group(1) == str(n_failed), note
    assert text_of(note.group(2)) == f"{n_failed} failed: {n_failed} at Kennyrunbook"
    assert re.search(r'href="[^"]+/runbook#traces-failed"', note.group(2))
    complete, incomplete = text_of(element(dom, "sum-traces")).split(" / ")
    assert int(complete) >= n_failed and incomplete == "0"  # none expired yet: the stalled wait for the TTL
    assert not {"tile-stalled", "tile-traces"} & set(green_tiles(dom))
    # decision latency, judged on the few completed passes, says the stalled ones are not among its events
    note = re.search(r'data-slo="decision_latency_p95".*?<div class="note" data-note="stalled" data-stalled="(\d+)">'
                     r'([^<]+)<a class="runbook" href="[^"]+#traces-stalled"', dom)  # fmt: skip
    assert note and note.group(1) == str(stalled), note
    assert note.group(2).startswith(f"{stalled:,} traces stalled now are not among these events")
    runbook_page = httpx.get(server.url + "/runbook", timeout=10).text
    assert '<h2 id="traces-stalled">' in runbook_page and '<h2 id="traces-failed">' in runbook_page
