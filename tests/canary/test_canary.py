"""Canary analysis against a real Prometheus scraping real ark-obs services, one per track.

The module starts one uvicorn server per track in threads (each with its own ``MetricsCollector``
that the test drives through the library), and one Prometheus (1 s scrape and evaluation, the
shipped rules) that labels each target with its ``track``. Every scenario is a track of its own, so
they share the warm-up: ``stable`` is the baseline; ``healthy``, ``denials``, ``quarantine``, ``slow``
behave like it until a fixture injects their fault; ``idle`` records nothing.

Short windows stand in for the production ones where waiting is the only thing a long window would
test: the latency tripwire runs with ``latency_for=5s`` (default 3m: ``sustained_breach`` carries the
logic and is unit-tested), the baseline guard with 5 s of history (default 30m), history steps of 1 s
(the test Prometheus' evaluation interval).
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import math
import re
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from ark_obs import canary
from ark_obs.canary import (
    BaselineStats,
    CanaryAnalysis,
    CanaryConfig,
    CheckResult,
    SelectorError,
    Verdict,
    analyze,
    baseline_stats,
    parse_duration,
    parse_selector,
    promql_duration,
    spike_threshold,
    sustained_breach,
)
from ark_obs.canary.analysis import _Analysis
from ark_obs.metrics import MetricsCollector
from ark_obs.service import create_app
from ark_obs.settings import Settings
from plugins.net import free_port

if TYPE_CHECKING:
    from plugins.prometheus_server import PrometheusFactory, PrometheusServer

pytest_plugins = ["plugins.prometheus_server"]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules"
ROLLOUTS = ROOT / "deploy/rollouts"
RATE = 20  # decisions per second on every track with traffic
LATENCY_FOR = 5.0
TRACKS = ("stable", "healthy", "denials", "quarantine", "slow", "idle")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- unit tests: durations, selectors ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), (90, 90.0), ("1.5", 1.5), ("90s", 90.0), ("3m", 180.0), ("1h30m", 5400.0), ("500ms", 0.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    """Numbers are seconds; Prometheus durations (ms, s, m, h, d, w, combined) are converted."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "m3", "-5", "0", "0s", "nan", "inf", True, None, "3m junk"])
def test_parse_duration_rejects(text: object) -> None:
    """Anything that is not a positive finite duration is an error."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_promql_duration() -> None:
    """Whole seconds become `Ns`, fractions milliseconds: both are valid PromQL ranges."""
    assert promql_duration(180.0) == "180s"
    assert promql_duration(1.5) == "1500ms"


@pytest.mark.parametrize(
    ("text", "matcher"),
    [
        ("canary", 'track="canary"'),
        ('track="canary"', 'track="canary"'),
        ('{track="canary"}', 'track="canary"'),
        (' { track =~ "canary|canary-eu" } ', 'track=~"canary|canary-eu"'),
        ('track!="stable"', 'track!="stable"'),
    ],
)
def test_parse_selector(text: str, matcher: str) -> None:
    """A bare track value or one matcher on `track` becomes a PromQL matcher."""
    assert parse_selector(text) == matcher


@pytest.mark.parametrize(
    "text",
    [
        'instance="127.0.0.1:9871"',  # the recording rules keep only `track`
        'track="a",instance="b"',
        'track="a"} or vector(1) #',  # PromQL injection
        'track="a\\"} or vector(1)"',
        "track=canary",
        "",
        "a b",
    ],
)
def test_parse_selector_rejects(text: str) -> None:
    """Other labels, several matchers, and anything that could leave the PromQL string are refused."""
    with pytest.raises(SelectorError, match="track"):
        parse_selector(text)


# --- unit tests: the statistics ----------------------------------------------------------------------
def test_baseline_stats_match_stddev_over_time() -> None:
    """Mean and population standard deviation (PromQL's stddev_over_time); non-finite samples dropped."""
    samples = [(100.0, 0.04), (101.0, 0.05), (102.0, 0.06), (103.0, math.nan), (104.0, 0.05)]
    stats = baseline_stats(samples, at=110.0)
    assert stats == BaselineStats(
        mean=pytest.approx(0.05), stddev=pytest.approx(statistics.pstdev([0.04, 0.05, 0.06, 0.05])),
        points=4, span_seconds=10.0,
    )  # fmt: skip
    assert baseline_stats([(1.0, math.inf)], at=2.0) is None
    assert baseline_stats([], at=2.0) is None


def test_spike_threshold_floor_and_sampling_noise() -> None:
    """mean + k * max(sqrt(sd^2 + mean/n), floor): the floor for flat baselines, the Poisson term for small n."""
    # flat baseline, many canary decisions: the floor decides
    assert spike_threshold(0.05, 0.0, 1e9) == pytest.approx(0.05 + 3 * 0.01)
    # 6 canary decisions a minute (a 10% canary at 1/s): one denial (0.167) is within noise, two are not
    threshold = spike_threshold(0.05, 0.01, 6)
    assert threshold == pytest.approx(0.05 + 3 * math.sqrt(0.01**2 + 0.05 / 6))
    assert 1 / 6 < threshold < 2 / 6
    # without the sampling term a single denial would fail it
    assert 0.05 + 3 * 0.01 < 1 / 6
    # no canary decisions: nothing can exceed it
    assert spike_threshold(0.05, 0.01, 0) == math.inf
    assert spike_threshold(0.0, 0.0, 100, sigmas=2, floor=0.5) == pytest.approx(1.0)


@given(
    mean=st.floats(0, 10),
    sd=st.floats(0, 10),
    n=st.floats(1, 1e6),
    sigmas=st.floats(0.5, 6),
    floor=st.floats(0, 1),
)
def test_spike_threshold_bounds(mean: float, sd: float, n: float, sigmas: float, floor: float) -> None:
    """The threshold is at least mean + k*sd, mean + k*floor, and grows as the canary's sample shrinks."""
    threshold = spike_threshold(mean, sd, n, sigmas=sigmas, floor=floor)
    assert threshold >= mean + sigmas * sd - 1e-9
    assert threshold >= mean + sigmas * floor - 1e-9
    assert spike_threshold(mean, sd, n / 2, sigmas=sigmas, floor=floor) >= threshold - 1e-9


def points(start: float, values: list[float | None], step: float = 1.0) -> list[tuple[float, float]]:
    return [(start + i * step, v) for i, v in enumerate(values) if v is not None]


def test_sustained_breach_needs_every_step_above() -> None:
    """Like an alert's `for`: every step of the range above the threshold fails, one step below does not."""
    above = sustained_breach(points(0, [450, 500, 420, 410, 900, 401]), start=0, end=5, step=1, threshold=400)
    assert above.sustained and above.latest == 401 and above.above_seconds == 5
    dip = sustained_breach(points(0, [450, 500, 400, 410, 900, 401]), start=0, end=5, step=1, threshold=400)
    assert not dip.sustained and dip.above_seconds == 2


def test_sustained_breach_gap_resets() -> None:
    """A step without a sample (no decision that minute) breaks the run, as a missing sample resets `for`."""
    gap = sustained_breach(points(0, [450, 500, None, 410, 900, 401]), start=0, end=5, step=1, threshold=400)
    assert not gap.sustained and gap.above_seconds == 2
    late = sustained_breach(points(3, [410, 900, 401]), start=0, end=5, step=1, threshold=400)
    assert not late.sustained and late.above_seconds == 2
    empty = sustained_breach([], start=0, end=5, step=1, threshold=400)
    assert empty.latest is None and not empty.sustained


def test_sustained_breach_tolerates_off_grid_timestamps() -> None:
    """Range-query timestamps a hair off the step grid are matched to their step, NaN counts as below."""
    jitter = [(0.0004, 500.0), (1.9996, 500.0), (1.0, 500.0), (3.0002, 500.0)]
    assert sustained_breach(jitter, start=0, end=3, step=1, threshold=400).sustained
    with_nan = points(0, [500, math.nan, 500])
    assert not sustained_breach(with_nan, start=0, end=2, step=1, threshold=400).sustained


def test_overall_verdict_is_the_worst_check() -> None:
    """fail beats inconclusive beats pass; no check at all is inconclusive, never a pass."""

    def of(*verdicts: Verdict) -> CanaryAnalysis:
        checks = [CheckResult(name=f"c{i}", verdict=v, reason=str(v)) for i, v in enumerate(verdicts)]
        return CanaryAnalysis.of(
            checks, canary="c", baseline="b", prometheus="p", evaluated_at=None, duration_seconds=0
        )

    assert of(Verdict.PASS, Verdict.PASS).verdict is Verdict.PASS
    assert of(Verdict.PASS, Verdict.INCONCLUSIVE).verdict is Verdict.INCONCLUSIVE
    failed = of(Verdict.INCONCLUSIVE, Verdict.FAIL, Verdict.PASS)
    assert failed.verdict is Verdict.FAIL and failed.reason == "c1: fail"
    assert failed.counts == {Verdict.PASS: 1, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 1}
    assert of().verdict is Verdict.INCONCLUSIVE


# --- the same math as the alerts ---------------------------------------------------------------------
def rules() -> dict[str, Any]:
    records: set[str] = set()
    alerts: dict[str, dict[str, Any]] = {}
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    records.add(rule["record"])
                else:
                    alerts[rule["alert"]] = rule
    return {"records": records, "alerts": alerts}


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_queries_read_the_shipped_recording_rules() -> None:
    """Every `ark:` series a check queries is recorded by deploy/prometheus/rules: verdict and alerts share inputs."""
    shipped = rules()["records"]
    run_ = _Analysis(CanaryConfig(_env_file=None), 'track="canary"', 'track="stable"', 0.0)
    used = {m for _, expr, _ in run_.queries().values() for m in re.findall(r"ark:[a-z0-9_:]+", expr)}
    assert used, "the analysis reads no recording rule"
    assert used <= shipped, used - shipped
    assert {"ark:hrm_denials:rate1m", "ark:ark_pass_latency_ms:p95_rate1m", "ark:slo_objective:ratio"} <= used


def test_thresholds_match_the_alerts() -> None:
    """Defaults equal the ArkCanary* and burn-rate alerts' numbers: 3 sigma, floor 0.01, 30m, 10m, 400 ms for 3m."""
    alerts = rules()["alerts"]
    config = CanaryConfig(_env_file=None)
    spike = squash(alerts["ArkCanaryHrmDenialsSpike"]["expr"])
    assert f"+{config.sigmas:g}*clamp_min(stddev_over_time(" in spike
    assert f"[1h]),{config.sigma_floor:g})" in spike
    assert f"[1h]offset{canary.human_duration(config.baseline_min_age)})" in spike
    assert config.baseline_window == 3600
    latency = alerts["ArkCanaryDecisionLatencyHigh"]
    assert squash(latency["expr"]) == f"ark:ark_pass_latency_ms:p95_rate1m>{config.latency_threshold_ms:g}"
    assert parse_duration(latency["for"]) == config.latency_for
    # ark-slo.rules.yml has one ArkSloBudgetBurnPage rule per SLO and leg (ark_obs.slo.rules)
    pages = [
        squash(rule["expr"])
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "ArkSloBudgetBurnPage"
    ]
    for long, short, limit in canary.PAGE_BURNS:
        leg = re.compile(
            rf'ark:slo_burn_rate:ratio_rate{long}{{slo="(\w+)"}}>{limit:g}and'
            rf'ark:slo_burn_rate:ratio_rate{short}{{slo="\1"}}>{limit:g}'
        )
        assert any(leg.fullmatch(page) for page in pages), (long, short, limit)


def test_quarantine_query_is_the_alerts_expression() -> None:
    """The quarantine check runs ArkCanaryQuarantine's expression, with the canary's matcher added."""
    alert = squash(rules()["alerts"]["ArkCanaryQuarantine"]["expr"])
    run_ = _Analysis(CanaryConfig(_env_file=None), 'track="canary"', 'track="stable"', 0.0)
    query = squash(run_.queries()["quarantines"][1])
    expected = alert.replace("watchdog_quarantines_total", 'watchdog_quarantines_total{track="canary"}')
    expected = expected.replace("sumby(track,agent,reason)", "sumby(agent,reason)").removesuffix(">0")
    assert query == expected.replace("[10m]", "[600s]").replace("offset10m", "offset600s")


# --- the world: one ark-obs per track, one Prometheus ------------------------------------------------
@dataclass
class Track:
    """One in-test ark-obs service and the traffic it gets."""

    name: str
    traffic: bool = True
    denial_every: int = 20  # one HRM denial per N decisions: 5%
    slow: bool = False
    collector: MetricsCollector = field(default_factory=lambda: MetricsCollector(ticker=False))
    port: int = 0
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    decisions: int = 0

    def start(self) -> None:
        self.port = free_port()
        settings = Settings(port=self.port, _env_file=None)  # type: ignore[call-arg]
        app = create_app(settings, collector=self.collector)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"ark-obs-{self.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)

    def decide(self) -> None:
        """One decision through the library: pass latency, HRM evaluation, maybe a denial."""
        if not self.traffic:
            return
        self.decisions += 1
        # deterministic spread: healthy 50-300 ms, slow 500-950 ms
        latency = (500 + 50 * (self.decisions % 10)) if self.slow else (50 + 25 * (self.decisions % 11))
        self.collector.observe_histogram("ark_pass_latency_ms", latency)
        self.collector.observe_histogram("hrm_eval_latency_ms", 20 + self.decisions % 60)
        if self.decisions % self.denial_every == 0:
            self.collector.inc_counter("hrm_denials_total", labels={"rule_id": "max_position_size", "agent": "Kenny"})


@dataclass
class World:
    """The running tracks, their Prometheus and an analysis configuration for short test windows."""

    tracks: dict[str, Track]
    prom: PrometheusServer
    config: CanaryConfig

    def analyze(self, canary_: str, **overrides: Any) -> CanaryAnalysis:
        config = self.config.model_copy(update=overrides) if overrides else self.config
        result: CanaryAnalysis = run(analyze(config, canary=canary_, baseline="stable"))
        return result

    def wait_for(
        self, canary_: str, done: Callable[[CanaryAnalysis], bool], timeout: float, what: str
    ) -> tuple[CanaryAnalysis, float]:
        """Analyse every 0.25 s until ``done``; the analysis and the seconds it took."""
        started = time.monotonic()
        last: CanaryAnalysis | None = None
        while time.monotonic() - started < timeout:
            last = self.analyze(canary_)
            if done(last):
                return last, time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(
            f"{what}: not within {timeout} s; last analysis: {last and last.model_dump_json(indent=1)}"
        )


def short_config(prom_url: str) -> CanaryConfig:
    return CanaryConfig(
        prometheus_url=prom_url, step=1.0, baseline_min_age=5.0, baseline_min_points=5,
        latency_for=LATENCY_FOR, cache_seconds=0, _env_file=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(prometheus_factory: PrometheusFactory) -> Iterator[World]:
    """Six ark-obs services with RATE decisions/s each (idle: none), scraped by one Prometheus, warmed up."""
    from plugins.prometheus_server import ScrapeTarget

    tracks = {name: Track(name, traffic=name != "idle") for name in TRACKS}
    stop = threading.Event()

    def traffic() -> None:
        period, next_at = 1.0 / RATE, time.monotonic()
        while not stop.is_set():
            for track in tracks.values():
                track.decide()
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))

    driver = threading.Thread(target=traffic, name="canary-traffic", daemon=True)
    try:
        for track in tracks.values():
            track.start()
        for track in tracks.values():
            deadline = time.monotonic() + 10
            while not (track.server is not None and track.server.started):
                assert time.monotonic() < deadline, f"{track.name} never started"
                time.sleep(0.02)
        driver.start()
        prom = prometheus_factory([ScrapeTarget(f"127.0.0.1:{t.port}", {"track": t.name}) for t in tracks.values()])
        prom.wait_targets_up(samples=2, timeout=30)
        w = World(tracks, prom, short_config(prom.url))
        # warm: the baseline has its 5 s of history and the healthy canary a verdict on every check
        w.wait_for("healthy", lambda a: a.verdict is not Verdict.INCONCLUSIVE, 30, "healthy canary judged")
        yield w
    finally:
        stop.set()
        if driver.is_alive():
            driver.join(5)
        for track in tracks.values():
            track.stop()


def verdicts(result: CanaryAnalysis) -> dict[str, Verdict]:
    return {name: check.verdict for name, check in result.checks.items()}


# --- tripwires against the real Prometheus ----------------------------------------------------------
def test_healthy_canary_passes(world: World) -> None:
    """A canary that behaves like the baseline passes every tripwire, every SLO burn rate and ethics drift."""
    result = world.analyze("healthy")
    assert result.verdict is Verdict.PASS, result.model_dump_json(indent=1)
    assert set(result.checks) == {
        "hrm_denials_spike", "quarantine", "decision_latency", "burn_rate_availability",
        "burn_rate_decision_latency_p95", "burn_rate_hrm_eval_latency_p95", "ethics_drift",
    }  # fmt: skip
    spike = result.checks["hrm_denials_spike"]
    assert spike.value == pytest.approx(0.05, abs=0.02)  # 1 denial per 20 decisions
    assert spike.threshold is not None and spike.threshold > spike.value
    assert result.checks["decision_latency"].value is not None and result.checks["decision_latency"].value < 400
    assert result.evaluated_at is not None and abs(result.evaluated_at - time.time()) < 5


@pytest.fixture(scope="module")
def denial_spike(world: World) -> tuple[CanaryAnalysis, float]:
    """Denials go from 1 in 20 decisions to 1 in 2 on the `denials` track; the analysis until it fails."""
    world.tracks["denials"].denial_every = 2
    return world.wait_for(
        "denials", lambda a: a.checks["hrm_denials_spike"].verdict is Verdict.FAIL, 30, "denial spike fails"
    )


def test_denial_spike_fails_on_the_denial_tripwire(denial_spike: tuple[CanaryAnalysis, float]) -> None:
    """Ten times the baseline's denial ratio fails hrm_denials_spike within 15 s, and only that tripwire.

    Promised: a step from ratio m to r crosses m + 3 sigma after 60 s * (threshold - m) / (r - m) of the
    1m rate window (here about 4 s), plus a scrape and an evaluation interval.
    """
    result, elapsed = denial_spike
    assert elapsed < 15, elapsed
    assert result.verdict is Verdict.FAIL
    checks = verdicts(result)
    assert checks["quarantine"] is Verdict.PASS and checks["decision_latency"] is Verdict.PASS
    spike = result.checks["hrm_denials_spike"]
    assert spike.threshold is not None and spike.value is not None and spike.value > spike.threshold
    assert "baseline mean" in spike.reason


@pytest.fixture(scope="module")
def quarantined(world: World) -> tuple[CanaryAnalysis, float]:
    """The Watchdog quarantines Kenny once on the `quarantine` track; the analysis until it fails."""
    world.tracks["quarantine"].collector.inc_counter(
        "watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "consecutive_errors"}
    )
    return world.wait_for(
        "quarantine", lambda a: a.checks["quarantine"].verdict is Verdict.FAIL, 15, "quarantine fails"
    )


def test_quarantine_fails_on_the_quarantine_tripwire(quarantined: tuple[CanaryAnalysis, float]) -> None:
    """One quarantine (the first of a new series, born at 1) fails the canary from the next scrape.

    Promised: one scrape interval (1 s here) plus the query; 8 s leaves room for a loaded machine.
    """
    result, elapsed = quarantined
    assert elapsed < 8, elapsed
    assert result.verdict is Verdict.FAIL
    check = result.checks["quarantine"]
    assert check.value == 1 and "Kenny (consecutive_errors) x1" in check.reason
    checks = verdicts(result)
    assert checks["hrm_denials_spike"] is Verdict.PASS and checks["decision_latency"] is Verdict.PASS
    # 5 s of downtime over 5m is a 3.3x burn: below the page threshold, so only the tripwire fails
    assert checks["burn_rate_availability"] is Verdict.PASS


@pytest.fixture(scope="module")
def slow_decisions(world: World) -> tuple[CanaryAnalysis, float]:
    """Decisions on the `slow` track take 500-950 ms from now on; the analysis until latency fails."""
    world.tracks["slow"].slow = True
    return world.wait_for(
        "slow", lambda a: a.checks["decision_latency"].verdict is Verdict.FAIL, LATENCY_FOR + 20, "latency fails"
    )


def test_slow_decisions_fail_after_the_for_duration(slow_decisions: tuple[CanaryAnalysis, float]) -> None:
    """p95 above 400 ms fails decision_latency only once it has lasted `latency_for`, and soon after that."""
    result, elapsed = slow_decisions
    assert LATENCY_FOR <= elapsed < LATENCY_FOR + 10, elapsed
    check = result.checks["decision_latency"]
    assert check.value is not None and check.value > 400
    assert f"at every step of the last {LATENCY_FOR:g}s" in check.reason
    checks = verdicts(result)
    assert checks["quarantine"] is Verdict.PASS and checks["hrm_denials_spike"] is Verdict.PASS


def test_latency_above_threshold_is_pending_before_the_for_duration(
    world: World, slow_decisions: tuple[CanaryAnalysis, float]
) -> None:
    """With a `for` longer than the breach has lasted, p95 above 400 ms passes as 'pending', as the alert waits.

    The breach is the one ``slow_decisions`` starts (and times), whichever of the two tests runs first.
    """
    pending = world.analyze("slow", latency_for=3600.0)
    check = pending.checks["decision_latency"]
    assert check.value is not None and check.value > 400
    assert check.verdict is Verdict.PASS and "pending" in check.reason


def test_no_traffic_is_inconclusive(world: World) -> None:
    """A canary without decisions is inconclusive (too few events), never a pass, and no check fails."""
    result = world.analyze("idle")
    assert result.verdict is Verdict.INCONCLUSIVE, result.model_dump_json(indent=1)
    checks = verdicts(result)
    assert Verdict.FAIL not in checks.values()
    for name in ("hrm_denials_spike", "decision_latency"):
        assert checks[name] is Verdict.INCONCLUSIVE
        assert "too few events" in result.checks[name].reason
    assert checks["burn_rate_decision_latency_p95"] is Verdict.INCONCLUSIVE
    # time-based checks still judge: nothing was quarantined while the target was up
    assert checks["quarantine"] is Verdict.PASS and checks["burn_rate_availability"] is Verdict.PASS


def test_selector_matching_no_target_is_inconclusive(world: World) -> None:
    """A canary selector that matches no scrape target makes every check inconclusive, saying so."""
    result = world.analyze("no-such-track")
    assert result.verdict is Verdict.INCONCLUSIVE
    assert set(verdicts(result).values()) == {Verdict.INCONCLUSIVE}
    assert 'selector {track="no-such-track"} matches no scrape target' in result.reason


def test_baseline_matching_no_target_makes_the_spike_check_inconclusive(world: World) -> None:
    """Without a baseline only the denial check, which needs it, is inconclusive."""
    result = run(analyze(world.config, canary="healthy", baseline="no-such-track"))
    checks = verdicts(result)
    assert checks["hrm_denials_spike"] is Verdict.INCONCLUSIVE
    assert "baseline selector" in result.checks["hrm_denials_spike"].reason
    assert checks["quarantine"] is Verdict.PASS and checks["decision_latency"] is Verdict.PASS
    assert result.verdict is Verdict.INCONCLUSIVE


def test_short_baseline_is_inconclusive(world: World) -> None:
    """A baseline whose history is shorter than baseline_min_age gives no spike verdict (the alert's 30m guard)."""
    result = world.analyze("healthy", baseline_min_age=1800.0)
    check = result.checks["hrm_denials_spike"]
    assert check.verdict is Verdict.INCONCLUSIVE and "less than 30m" in check.reason


def test_too_few_decisions_is_inconclusive(world: World) -> None:
    """Fewer canary decisions in the last minute than min_decisions: denial and latency checks are inconclusive."""
    result = world.analyze("healthy", min_decisions=10 * RATE * 60)
    for name in ("hrm_denials_spike", "decision_latency"):
        assert result.checks[name].verdict is Verdict.INCONCLUSIVE
        assert "too few events" in result.checks[name].reason


def test_unreachable_prometheus_is_inconclusive() -> None:
    """Nothing listening at the URL: inconclusive with the reason, fast, never an exception."""
    config = CanaryConfig(prometheus_url=f"http://127.0.0.1:{free_port()}", _env_file=None)
    result = run(analyze(config))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "unreachable" in result.reason and result.evaluated_at is None
    assert result.reason.startswith("hrm_denials_spike, quarantine, decision_latency, ethics_drift: Prometheus: ")
    assert result.duration_seconds < 2


def test_silent_prometheus_times_out_inconclusive() -> None:
    """A server that accepts connections but never answers: inconclusive after the configured timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accept(): the kernel completes the handshake, nobody answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = CanaryConfig(prometheus_url=url, timeout_seconds=0.3, _env_file=None)
        result = run(analyze(config))
    assert result.verdict is Verdict.INCONCLUSIVE and "within the timeout" in result.reason
    assert result.duration_seconds < 1.5


def test_not_prometheus_is_inconclusive(world: World) -> None:
    """A URL that answers but is not Prometheus (here: ark-obs itself) is inconclusive, not a crash."""
    url = f"http://127.0.0.1:{world.tracks['stable'].port}"
    result = run(analyze(CanaryConfig(prometheus_url=url, _env_file=None)))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "HTTP 405" in result.reason or "HTTP 404" in result.reason


def test_prometheus_without_ark_rules_is_inconclusive(world: World, prometheus_factory: PrometheusFactory) -> None:
    """A Prometheus without the ARK recording rules: the queries return nothing, every check is inconclusive."""
    from plugins.prometheus_server import ScrapeTarget

    bare = prometheus_factory([ScrapeTarget(f"127.0.0.1:{world.tracks['healthy'].port}", {"track": "healthy"})],
                              rule_files=())  # fmt: skip
    try:
        result = run(analyze(short_config(bare.url), canary="healthy"))
    finally:
        bare.stop()
    assert result.verdict is Verdict.INCONCLUSIVE
    assert set(verdicts(result).values()) == {Verdict.INCONCLUSIVE}
    assert "recording rules are not loaded" in result.reason


# --- HTTP: Argo Rollouts web provider, Flagger webhook -----------------------------------------------
def jsonpath(body: Any, path: str) -> Any:
    """The `{$.a.b}` subset of Kubernetes JSONPath that the shipped templates use."""
    match = re.fullmatch(r"\{\$((?:\.[A-Za-z0-9_]+)*)\}", path)
    assert match, f"unsupported jsonPath {path}"
    for key in match.group(1).split(".")[1:]:
        body = body[key]
    return body


async def call(app: FastAPI, method: str, url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ark-obs") as client:
        return await client.request(method, url, **kw)


def canary_app(config: CanaryConfig) -> FastAPI:
    app = FastAPI()
    app.include_router(canary.router(config))
    return app


def test_get_analysis_is_always_200_with_the_verdict(world: World, quarantined: tuple[CanaryAnalysis, float]) -> None:
    """GET /canary/analysis answers 200 with `verdict` for pass, fail and inconclusive: Argo reads the body."""
    app = canary_app(world.config)
    for track, expected in (("healthy", "pass"), ("quarantine", "fail"), ("idle", "inconclusive")):
        response = run(call(app, "GET", f"/canary/analysis?canary={track}&baseline=stable"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert jsonpath(body, "{$.verdict}") == expected, body
        assert body["canary"] == f'track="{track}"' and body["baseline"] == 'track="stable"'
        assert set(body["counts"]) == {"pass", "fail", "inconclusive"}
        assert jsonpath(body, "{$.checks.quarantine.verdict}") in ("pass", "fail", "inconclusive")


def test_post_analysis_status_codes_for_flagger(world: World, quarantined: tuple[CanaryAnalysis, float]) -> None:
    """POST (Flagger's webhook): 200 pass, 412 fail, 409 inconclusive (200 with inconclusive_status=200)."""
    app = canary_app(world.config)
    payload = {"name": "ark", "namespace": "ark", "phase": "Progressing", "metadata": {"baseline": "stable"}}
    for track, status in (("healthy", 200), ("quarantine", 412), ("idle", 409)):
        hook = {**payload, "metadata": {**payload["metadata"], "canary": track}}
        response = run(call(app, "POST", "/canary/analysis", json=hook))
        assert response.status_code == status, response.text
        assert response.json()["canary"] == f'track="{track}"'
    relaxed = run(call(app, "POST", "/canary/analysis?canary=idle&inconclusive_status=200", json=payload))
    assert relaxed.status_code == 200 and relaxed.json()["verdict"] == "inconclusive"
    still_failing = run(call(app, "POST", "/canary/analysis?canary=quarantine&inconclusive_status=200"))
    assert still_failing.status_code == 412


def test_bad_selector_is_422(world: World) -> None:
    """A selector that is not a track matcher is refused by the schema's pattern, before any query is sent."""
    app = canary_app(world.config)
    response = run(call(app, "GET", "/canary/analysis", params={"canary": 'instance="x"'}))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "canary"]
    hook = {"metadata": {"canary": 'track="a"} or vector(1)', "other": "kept"}}
    response = run(call(app, "POST", "/canary/analysis", json=hook))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "canary"


def test_wrong_method_names_both_methods() -> None:
    """A wrong method gets 405 with `Allow: GET, POST`, also when the router is included in a larger app."""
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    app.include_router(canary.router(CanaryConfig(prometheus_url=f"http://127.0.0.1:{free_port()}", _env_file=None)))
    for method in ("PUT", "OPTIONS", "DELETE"):
        response = run(call(app, method, "/canary/analysis"))
        assert response.status_code == 405 and response.headers["allow"] == "GET, POST", method


def test_schema_pattern_is_parse_selector() -> None:
    """The OpenAPI pattern of a selector accepts exactly what parse_selector accepts (what is documented works)."""
    samples = ["canary", "canary-eu.1", 'track="x"', '{ track =~ "a|b" }', 'track!~""', 'pod="x"', "a b",
               'track="a"} or vector(1)', "-x", 'track = "x', "", "t" * 70]  # fmt: skip
    for text in samples:
        try:
            parse_selector(text)
            parsed = True
        except SelectorError:
            parsed = False
        assert bool(re.fullmatch(canary.SELECTOR_PATTERN, text)) == parsed, text


def test_unreachable_prometheus_over_http_is_inconclusive_not_an_error() -> None:
    """The endpoint never turns a Prometheus failure into a 5xx for Argo: 200 with verdict inconclusive."""
    app = canary_app(CanaryConfig(prometheus_url=f"http://127.0.0.1:{free_port()}", cache_seconds=0, _env_file=None))
    response = run(call(app, "GET", "/canary/analysis"))
    assert response.status_code == 200 and response.json()["verdict"] == "inconclusive"


class CountingProxy:
    """A loopback HTTP proxy in front of the real Prometheus that counts the API requests it forwards."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, PromQL) in arrival order
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the canary client POSTs every query (form-encoded)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                query = urllib.parse.parse_qs(body.decode()).get("query", [""])[0]
                with lock:
                    proxy.requests.append((self.path, query))
                answer = httpx.post(
                    upstream + self.path, content=body, headers={"Content-Type": self.headers["Content-Type"]}
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # an analysis sends its queries all at once: a listen backlog of 5 would reset some of them
        server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128})
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="counting-proxy", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_prometheus(world: World) -> Iterator[CountingProxy]:
    """A counting proxy in front of the world's Prometheus."""
    proxy = CountingProxy(world.prom.url)
    try:
        yield proxy
    finally:
        proxy.close()


def test_concurrent_requests_share_one_analysis(world: World, counting_prometheus: CountingProxy) -> None:
    """Five concurrent callers of the same selectors share one analysis (Prometheus receives one
    analysis' queries, once: a single time() query), all get the same body, and a sixth call within
    cache_seconds reuses that verdict without any query; other selectors get an analysis of their own."""
    proxy = counting_prometheus
    config = world.config.model_copy(update={"prometheus_url": proxy.url, "cache_seconds": 30.0})
    solo = run(analyze(config.model_copy(update={"cache_seconds": 0.0}), canary="healthy"))
    per_analysis = len(proxy.requests)  # time() plus every check's queries
    assert solo.verdict is Verdict.PASS and per_analysis > 5
    assert proxy.requests.count(("/api/v1/query", "time()")) == 1
    proxy.requests.clear()
    app = canary_app(config)

    async def burst() -> tuple[list[httpx.Response], httpx.Response, int, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ark-obs") as client:
            first = await asyncio.gather(*(client.get("/canary/analysis?canary=healthy") for _ in range(5)))
            after_burst = len(proxy.requests)
            again = await client.get("/canary/analysis?canary=healthy")
            other = await client.get("/canary/analysis?canary=stable")
            return list(first), again, after_burst, other

    first, again, after_burst, other = run(burst())
    assert after_burst == per_analysis, proxy.requests  # one analysis for the five concurrent callers
    bodies = [r.json() for r in first]
    assert all(b == bodies[0] for b in bodies) and bodies[0]["verdict"] == "pass"
    assert again.json() == bodies[0]  # the cached verdict, duration and all
    # ... and only the other selector pair was analysed again
    assert other.json()["canary"] == 'track="stable"' and other.json()["verdict"] == "pass", other.json()
    assert len(proxy.requests) == 2 * per_analysis, proxy.requests
    assert [q for _, q in proxy.requests].count("time()") == 2


# --- CLI ---------------------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ark-obs canary-check")
    for flags, options in canary.ARGUMENTS:
        parser.add_argument(*flags, **options)
    return parser.parse_args(argv)


def cli_args(world: World, *argv: str) -> argparse.Namespace:
    return parse("--prometheus", world.prom.url, "--step", "1s", "--baseline-min-age", "5s",
                 "--baseline-min-points", "5", "--latency-for", f"{LATENCY_FOR:g}s", *argv)  # fmt: skip


def test_cli_exit_status_pass_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """A healthy canary exits 0 with a table naming every check."""
    assert canary.main(cli_args(world, "--canary", "healthy", "--baseline", "stable")) == 0
    out = capsys.readouterr().out
    for name in ("hrm_denials_spike", "quarantine", "decision_latency", "burn_rate_availability", "PASS"):
        assert name in out


def test_cli_exit_status_fail_json(
    world: World, quarantined: tuple[CanaryAnalysis, float], capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing canary exits 1; --json prints the same model as the HTTP endpoint."""
    assert canary.main(cli_args(world, "--canary", 'track="quarantine"', "--json")) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["verdict"] == "fail" and body["checks"]["quarantine"]["verdict"] == "fail"
    CanaryAnalysis.model_validate(body)


def test_cli_exit_status_inconclusive(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """An idle canary exits 2, as does an unreachable Prometheus."""
    assert canary.main(cli_args(world, "--canary", "idle", "--json")) == 2
    assert json.loads(capsys.readouterr().out)["verdict"] == "inconclusive"
    assert canary.main(parse("--prometheus", f"http://127.0.0.1:{free_port()}")) == 2
    assert "INCONCLUSIVE" in capsys.readouterr().out


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad selectors and durations are argparse errors (exit 2); a bad URL is reported under --prometheus, exit 2."""
    for argv in (("--prometheus", "http://x", "--canary", 'pod="x"'), ("--prometheus", "http://x", "--step", "1x")):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 2
    assert canary.main(parse("--prometheus", "ftp://127.0.0.1")) == 2
    err = capsys.readouterr().err
    assert "--prometheus: must be an http:// or https:// URL" in err and "prometheus_url" not in err


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ARK_OBS_CANARY_* set the defaults of the endpoint and the command; options override them."""
    monkeypatch.setenv("ARK_OBS_CANARY_PROMETHEUS_URL", "http://prom.example:9090/")
    monkeypatch.setenv("ARK_OBS_CANARY_SELECTOR", "canary-eu")
    monkeypatch.setenv("ARK_OBS_CANARY_LATENCY_FOR", "5m")
    config = CanaryConfig(_env_file=None)
    assert (config.prometheus_url, config.selector, config.latency_for) == (
        "http://prom.example:9090", 'track="canary-eu"', 300.0,
    )  # fmt: skip
    args = parse("--prometheus", "http://127.0.0.1:9090", "--latency-for", "1m")
    monkeypatch.chdir(ROOT / "deploy")  # no .env there
    overridden = canary.config_from_args(args)
    assert overridden.prometheus_url == "http://127.0.0.1:9090" and overridden.latency_for == 60.0
    assert overridden.selector == 'track="canary-eu"'


# --- deploy/rollouts ---------------------------------------------------------------------------------
def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(ROLLOUTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_argo_analysis_template_reads_the_endpoint(world: World, quarantined: tuple[CanaryAnalysis, float]) -> None:
    """Every web metric of the AnalysisTemplate GETs /canary/analysis, and its jsonPath resolves to a verdict.

    Its success/failure conditions compare with "pass" and "fail", so "inconclusive" matches neither:
    Argo's inconclusive measurement. Failure limits are spelled out on every metric.
    """
    (template,) = [d for d in manifests() if d["kind"] == "AnalysisTemplate"]
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    args = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    app = canary_app(world.config)
    metrics = template["spec"]["metrics"]
    assert {m["name"] for m in metrics} >= {"ark-canary-verdict", "ark-quarantine", "ark-decision-latency"}
    for metric in metrics:
        assert metric["successCondition"] == 'result == "pass"'
        assert metric["failureCondition"] == 'result == "fail"'
        for limit in ("failureLimit", "inconclusiveLimit", "consecutiveErrorLimit"):
            assert isinstance(metric[limit], int), (metric["name"], limit)
        web = metric["provider"]["web"]
        url = re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: str(args[m.group(1)]), web["url"])
        assert url.startswith(str(args["ark-obs-url"]) + "/canary/analysis?")
        path = url.removeprefix(str(args["ark-obs-url"]))
        assert "canary=canary" in path and "baseline=stable" in path
        body = run(call(app, "GET", path.replace("canary=canary", "canary=quarantine"))).json()
        value = jsonpath(body, web["jsonPath"])
        assert value in ("pass", "fail", "inconclusive"), (metric["name"], value)
        if metric["name"] in ("ark-canary-verdict", "ark-quarantine"):
            assert value == "fail"


def test_flagger_canary_and_metric_template(world: World) -> None:
    """Flagger's webhooks POST to /canary/analysis; each MetricTemplate query runs in Prometheus and reads ARK rules."""
    docs = manifests()
    (flagger_canary,) = [d for d in docs if d["kind"] == "Canary"]
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "MetricTemplate"}
    assert templates
    analysis = flagger_canary["spec"]["analysis"]
    hooks = {h["type"]: h for h in analysis["webhooks"]}
    assert "inconclusive_status=200" in hooks["rollout"]["url"]
    assert {"confirm-traffic-increase", "confirm-promotion"} <= set(hooks)
    for hook in hooks.values():
        assert "/canary/analysis" in hook["url"] and hook["metadata"]["canary"]
    assert isinstance(analysis["threshold"], int)
    shipped = rules()["records"]
    for metric in analysis["metrics"]:
        template = templates[metric["templateRef"]["name"]]
        query = template["spec"]["query"]
        variables = metric.get("templateVariables", {})
        query = re.sub(r"\{\{\s*variables\.(\w+)\s*\}\}", lambda m, v=variables: v[m.group(1)], query)
        query = re.sub(r"\{\{\s*interval\s*\}\}", metric.get("interval", "1m"), query)
        assert "{{" not in query, query
        assert set(re.findall(r"ark:[a-z0-9_:]+", query)) <= shipped
        query = query.replace('track="canary"', 'track="healthy"')
        result = world.prom.query(query)  # parses and evaluates
        assert result, f"{metric['name']}: {query} returned nothing for a healthy canary"
        value = float(result[0]["value"][1])
        low, high = metric["thresholdRange"].get("min", -math.inf), metric["thresholdRange"].get("max", math.inf)
        assert low <= value <= high, (metric["name"], value)
