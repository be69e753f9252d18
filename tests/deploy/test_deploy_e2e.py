"""deploy/ end to end: a real Prometheus with the shipped rules scrapes a real ark-obs service.

One ark-obs and one Prometheus (1 s scrape and evaluation) serve the whole module. The service is
the app ``ark-obs serve`` runs (``build_collector`` + ``create_app`` from the same ``Settings``) under
uvicorn in a background thread on a free loopback port, so the test records traffic straight into
the served collector with the library (``observe_histogram``, ``inc_counter``, ``set_gauge``,
``record_trace_span``) and knows exactly which events Prometheus must see. That is more faithful
than ``ark-obs synthetic --target``, whose agent metrics stay in their own process, and less flaky
than a multiprocess directory (no exemplars there, and ``tests/service/test_service.py`` already covers the
``ark-obs serve`` process itself). Heartbeats come over HTTP from real agent subprocesses, one of
which is killed with SIGKILL.

Traffic goes in two phases, each followed by ``Feed.settle()`` (Prometheus has scraped every count
and evaluated every rule group since): phase 1 creates every labelled series (a denial per rule, a
quarantine, an expired incomplete trace), so that in phase 2 their increase is visible to ``rate()``
and the dashboard's rate panels show real rates rather than flat zeros.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ark_obs.catalog import LATENCY_BUCKETS_MS
from ark_obs.metrics import MetricsCollector
from plugins.inprocess import heartbeat_agent, running_service
from plugins.prometheus_server import SHIPPED_RULE_FILES, PrometheusFactory, PrometheusQueryError, PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/ark-overview.json"
ALERT_RULES = ROOT / "deploy/prometheus/rules/ark-alerts.rules.yml"

SCRAPE_S = 1.0  # scrape and evaluation interval of the test Prometheus
EVAL_S = 1.0
HEARTBEAT_S = 1.0  # ARK_OBS_HEARTBEAT_INTERVAL_SECONDS (the default)
TRACE_TTL_S = 2.0  # short, so incomplete traces expire (and are counted) within the test
# On top of the scrape and evaluation intervals, what a loaded 2-core machine may add before an alert
# is active: the scrape's own duration and append, and a rule group evaluated late.
ALERT_SLACK_S = 1.0
# Ratios are exact event counts on both sides (the thresholds are bucket boundaries), and every series
# they use is younger than every window here: Prometheus' rate() scales numerator and denominator by
# the same extrapolation factor (each histogram series was scraped at 0 before any traffic, so none is
# extrapolated below its first sample), and a quarantine series born in the window is counted whole.
# So the only difference left is float rounding. (Once series are older than a window, increase()
# extrapolates at the window's edges and the two may differ by about scrape interval / window.)
RATIO_TOLERANCE = 1e-9

# Decision latencies (ms): 184 of 200 at or under 400 ms (compliance 0.92 < 0.95: a violation), the
# p95 (rank 190) inside the (400, 450] bucket: 400 + 50 * (190 - 184) / 8 = 437.5.
DECISIONS_MS = (
    [20.0 + (i * 7) % 75 for i in range(100)]
    + [120.0 + (i * 37) % 270 for i in range(84)]
    + [405.0 + 5 * (i % 8) for i in range(8)]
    + [520.0 + 10 * i for i in range(8)]
)
# HRM evaluations (ms): 25 of 100 at or under 120 ms (compliance 0.25: a 15x burn, which pages), the
# p95 (rank 95) inside (200, 225]: Prometheus says 200 + 25 * (95 - 85) / 15 = 216.7; ark-obs narrows
# the bucket to the largest value seen, 215, and says 210. Same bucket, different estimates.
HRM_EVAL_MS = [5.0 + 4 * i for i in range(25)] + [141.0 + (i % 19) for i in range(60)] + [201.0 + i for i in range(15)]
# Phase 2 denials per (rule_id, agent), on top of one each in phase 1.
DENIALS = {("GY-001", "Kenny"): 7, ("GY-007", "Joey"): 3}
# Phase 2 incomplete traces by first missing agent, on top of one missing Kenny in phase 1.
INCOMPLETE = {"Kenny": 6, "HRM": 4}
PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")


def unix(rfc3339: str) -> float:
    """Unix seconds of a Prometheus API timestamp (nanosecond fractions, 'Z' or an offset)."""
    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    return datetime.fromisoformat(m[1] + m[3].replace("Z", "+00:00")).timestamp() + float(m[2] or 0)


def bucket_of(value: float) -> tuple[float, float]:
    """The (lower, upper] latency bucket holding ``value``."""
    lower = 0.0
    for upper in LATENCY_BUCKETS_MS:
        if value <= upper:
            return lower, upper
        lower = upper
    return lower, math.inf


def true_p95_bucket(values: list[float]) -> tuple[float, float]:
    """The bucket of the 0.95 quantile of ``values``, by PromQL's rank rule (first bucket reaching 0.95 n)."""
    rank = 0.95 * len(values)
    for bound in LATENCY_BUCKETS_MS:
        if sum(v <= bound for v in values) >= rank:
            return bucket_of(bound)
    raise AssertionError("p95 beyond the last bucket")


def alert_rule(name: str) -> dict[str, Any]:
    """The shipped alerting rule called ``name``."""
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return next(r for g in groups for r in g["rules"] if r.get("alert") == name)


def promised_delay(name: str) -> float:
    """Longest time from its condition becoming true to the alert being active, by the rule itself.

    The condition is seen at the first scrape after it holds, evaluated at the next evaluation, and
    then must hold for the rule's ``for`` (none for the alerts tested here).
    """
    hold = alert_rule(name).get("for")
    assert hold is None, f"{name} has a `for` ({hold}); extend promised_delay"
    return SCRAPE_S + EVAL_S + ALERT_SLACK_S


def active_alerts(prom: PrometheusServer, name: str, state: str = "firing") -> dict[str, dict[str, Any]]:
    """Alerts ``name`` in ``state``, keyed by their ``agent`` label (empty string when none)."""
    return {a["labels"].get("agent", ""): a for a in prom.alerts(state) if a["labels"]["alertname"] == name}


# --- the service, the agents, Prometheus ----------------------------------------------------------
@dataclass
class Ark:
    """The served ark-obs: its collector (to record into) and URL."""

    collector: MetricsCollector
    url: str


@pytest.fixture(scope="module")
def ark() -> Iterator[Ark]:
    """The app ``ark-obs serve`` runs, on a socket bound to a free loopback port, in a background thread."""
    with running_service(
        "/readyz", heartbeat_interval_seconds=HEARTBEAT_S, trace_ttl_seconds=TRACE_TTL_S, pipeline=PIPELINE
    ) as running:
        yield Ark(running.collector, running.url)


@pytest.fixture(scope="module")
def agents(ark: Ark) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Kyle and Joey: real processes that POST /heartbeats/{agent} every heartbeat interval."""
    procs = {agent: heartbeat_agent(f"{ark.url}/heartbeats/{agent}", HEARTBEAT_S) for agent in ("Kyle", "Joey")}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def prom(prometheus_factory: PrometheusFactory, ark: Ark, agents: dict[str, Any]) -> Iterator[PrometheusServer]:
    """A Prometheus with the shipped rules scraping ark-obs, up with 2 scrapes (so rate() works)."""
    server = prometheus_factory([ark.url.removeprefix("http://")], scrape_interval="1s", evaluation_interval="1s")
    try:
        server.wait_targets_up(samples=2)
        yield server
    finally:
        server.stop()


# --- traffic ---------------------------------------------------------------------------------------------
@dataclass
class Feed:
    """What the test recorded into the served collector: the truth both sides are checked against."""

    ark: Ark
    prom: PrometheusServer
    decisions: list[float] = field(default_factory=list)
    hrm_evals: list[float] = field(default_factory=list)
    denials: int = 0
    quarantines: int = 0
    incomplete: Counter[str] = field(default_factory=Counter)
    complete: int = 0
    trace_ids: set[str] = field(default_factory=set)

    def quarantine(self, agent: str, reason: str, times: int = 1) -> None:
        """The Watchdog quarantines ``agent`` ``times`` times."""
        for _ in range(times):
            self.ark.collector.inc_counter("watchdog_quarantines_total", labels={"agent": agent, "reason": reason})
        self.quarantines += times

    def deny(self, rule_id: str, agent: str, times: int = 1) -> None:
        """HRM denies ``agent``'s action under ``rule_id`` ``times`` times."""
        for _ in range(times):
            self.ark.collector.inc_counter("hrm_denials_total", labels={"rule_id": rule_id, "agent": agent})
        self.denials += times

    def trace(self, missing: str | None = None, decision_ms: float | None = None) -> None:
        """One signal through the pipeline, stopping before ``missing``; its decision latency as exemplar."""
        trace_id = uuid.uuid4().hex
        collector = self.ark.collector
        for agent in PIPELINE[: PIPELINE.index(missing)] if missing else PIPELINE:
            collector.record_trace_span(trace_id, agent, duration_ms=1.0)
        if missing:
            self.incomplete[missing] += 1
        else:
            self.complete += 1
        if decision_ms is not None:
            collector.observe_histogram("ark_pass_latency_ms", decision_ms, {"trace_id": trace_id})
            self.decisions.append(decision_ms)
            self.trace_ids.add(trace_id)

    def wait_traces_expired(self) -> None:
        """Until the service has finalized every incomplete trace (one TTL plus a sweep)."""

        def counted() -> bool:
            readings = self.ark.collector.readings("ark_traces_incomplete_total")
            return sum(r.values[0] for r in readings) == self.incomplete.total()

        self.prom.wait_until(counted, timeout=TRACE_TTL_S + 10, what="incomplete traces expired")

    def settle(self) -> None:
        """Until Prometheus has scraped every count recorded and evaluated every rule group since."""
        prom = self.prom
        expected = {
            "sum(ark_pass_latency_ms_count)": len(self.decisions),
            "sum(hrm_eval_latency_ms_count)": len(self.hrm_evals),
            "sum(hrm_denials_total)": self.denials,
            "sum(watchdog_quarantines_total)": self.quarantines,
            "sum(ark_traces_incomplete_total)": self.incomplete.total(),
            "sum(ark_traces_complete_total)": self.complete,
        }

        def scraped() -> bool:
            return all((prom.query_value(q) or 0) == v for q, v in expected.items())

        prom.wait_until(scraped, timeout=15, what=f"Prometheus scraped {expected}")
        # A group evaluation that *started* one interval after the counts were visible ran at an
        # evaluation timestamp after their scrape (timestamps are aligned down to the interval).
        seen = time.time() + EVAL_S

        def evaluated() -> bool:
            return all(unix(g["lastEvaluation"]) > seen for g in prom.rules())

        prom.wait_until(evaluated, timeout=15, what="every rule group evaluated after the scrape")


@pytest.fixture(scope="module")
def feed(ark: Ark, prom: PrometheusServer) -> Feed:
    """Traffic with violations: slow decisions, overloaded HRM, denials, quarantines, stuck traces."""
    f = Feed(ark, prom)
    collector = ark.collector
    # Phase 1: every labelled series is born (a series is created at its first increment).
    f.deny("GY-001", "Kenny")
    f.deny("GY-007", "Joey")
    f.quarantine("Kenny", "error_burst")
    f.trace(missing="Kenny")
    f.wait_traces_expired()
    f.settle()
    # Phase 2: the bulk.
    for ms in DECISIONS_MS:
        f.trace(decision_ms=ms)
    for agent, n in INCOMPLETE.items():
        for _ in range(n):
            f.trace(missing=agent)
    for ms in HRM_EVAL_MS:
        collector.observe_histogram("hrm_eval_latency_ms", ms)
        collector.inc_counter("graveyard_validations_total")
        f.hrm_evals.append(ms)
    for (rule_id, agent), n in DENIALS.items():
        f.deny(rule_id, agent, n)
    f.quarantine("Kenny", "error_burst", 3)
    f.quarantine("Joey", "heartbeat_missed")  # a new series, born at 1 in the window
    collector.set_gauge("redis_stream_depth", 1234, {"stream": "ark:signals"})
    collector.set_gauge("ark_ethics_drift", 0)
    assert f.incomplete == Counter({"Kenny": 1 + INCOMPLETE["Kenny"], "HRM": INCOMPLETE["HRM"]})
    f.wait_traces_expired()
    f.settle()
    return f


def slos(feed: Feed) -> dict[str, Any]:
    """``GET /slos`` of the service, SLOs keyed by id."""
    report = httpx.get(feed.ark.url + "/slos", timeout=10).json()
    return {"report": report, **{s["name"]: s for s in report["slos"]}}


# --- the target and the recording rules ---------------------------------------------------------------
def test_target_is_up_and_ark_obs_down_does_not_fire(feed: Feed) -> None:
    """Prometheus scrapes ark-obs (job ark-obs, health up, up == 1) and ArkObsDown is not active."""
    prom = feed.prom
    (target,) = prom.targets()
    assert (target["labels"]["job"], target["health"]) == ("ark-obs", "up"), target
    assert prom.query_value('up{job="ark-obs"}') == 1.0
    assert "ArkObsDown" not in {a["labels"]["alertname"] for a in prom.alerts()}


def test_every_recording_rule_returns_data(feed: Feed) -> None:
    """Every shipped recording rule (each name and label set) evaluates healthy to finite samples."""
    rules = [r for g in feed.prom.rules("record") for r in g["rules"]]
    shipped = [r for f in SHIPPED_RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == sum("record" in r for r in shipped)
    empty, unhealthy = [], {}
    for rule in rules:
        if rule["health"] != "ok":
            unhealthy[rule["name"]] = rule.get("lastError")
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(rule.get("labels", {}).items()))
        result = feed.prom.query(f"{rule['name']}{{{selector}}}")
        if not result or not all(math.isfinite(float(r["value"][1])) for r in result):
            empty.append(f"{rule['name']}{{{selector}}}: {result}")
    assert unhealthy == {}
    assert empty == []


# --- the dashboard ---------------------------------------------------------------------------------------
def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query target of the overview dashboard, rows included."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t) for p in panels(doc["panels"]) for t in p.get("targets", [])]


# May legitimately read 0 everywhere once traffic stops: every complete trace is finalized at once and
# every incomplete one after the TTL, so nothing is in flight when the dashboard is queried.
MAY_BE_ZERO = {"ark_traces_in_flight"}


def test_every_dashboard_query_parses_and_returns_data(feed: Feed) -> None:
    """Each PromQL target of ark-overview.json parses and returns finite samples, not all zero.

    Grafana's ``$__rate_interval`` and friends become 1m (the range queries run as instant ones); the
    dashboard's variables take their defaults (job ark-obs, every instance and track: this Prometheus
    scrapes one service without a track label). tests/deploy/test_dashboard_tracks.py selects each of two tracks.
    """
    targets = dashboard_targets()
    assert len(targets) >= 17
    problems = []
    for title, target in targets:
        expr = re.sub(r"\$__\w+", "1m", target["expr"])
        expr = expr.replace("$job", "ark-obs").replace("$instance", ".*").replace("$track", ".*").replace("$slo", ".*")
        try:
            result = feed.prom.query(expr)
        except PrometheusQueryError as exc:  # a parse error, named with its panel
            problems.append(f"{title}: {expr}: {exc}")
            continue
        values = [float(r["value"][1]) for r in result]
        if not values or not all(math.isfinite(v) for v in values):
            problems.append(f"{title}: {expr}: no finite data: {result}")
        elif not any(m in expr for m in MAY_BE_ZERO) and not any(values):
            problems.append(f"{title}: {expr}: all zero")
    assert problems == []


def test_latency_panel_exemplars_link_to_recorded_traces(feed: Feed) -> None:
    """Prometheus stores the decision latency exemplars, each carrying a trace_id the test recorded."""
    assert any(t.get("exemplar") for _, t in dashboard_targets())
    now = time.time()
    found = feed.prom.exemplars("ark_pass_latency_ms_bucket", now - 300, now)
    trace_ids = {e["labels"].get("trace_id") for series in found for e in series["exemplars"]}
    assert trace_ids and trace_ids <= feed.trace_ids


# --- parity: Prometheus' rules against ark-obs' /slos -------------------------------------------------
def test_slo_values_agree_with_prometheus_rules(feed: Feed) -> None:
    """Availability, latency compliance, burn rates and p95: /slos equals the recording rules, and the truth.

    Ratios agree to RATIO_TOLERANCE (both are exact counts, see its comment). A p95 is interpolated in
    the bucket holding it on both sides, but ark-obs narrows that bucket to the observed min and max
    where they fall inside it: so both must lie in the bucket holding the true p95, and may differ by
    at most that bucket's width.
    """
    feed.settle()
    prom, s = feed.prom, slos(feed)

    def rule(expr: str) -> float:
        value = prom.query_value(expr)
        assert value is not None, f"{expr} is empty"
        return value

    # Availability: downtime = quarantines x 5 s.
    expected = 1 - feed.quarantines * 5 / 300
    assert s["availability"]["value"] == pytest.approx(expected, abs=RATIO_TOLERANCE)
    assert rule("ark:availability:ratio_5m") == pytest.approx(expected, abs=RATIO_TOLERANCE)
    for window, ratio in s["report"]["availability_ratio"].items():
        assert rule(f"ark:availability:ratio_{window}") == pytest.approx(ratio, abs=RATIO_TOLERANCE), window
    # Latency compliance and burn rates per SLO and window.
    truth = {
        "decision_latency_p95": (feed.decisions, 400.0, "ark_pass_latency_ms"),
        "hrm_eval_latency_p95": (feed.hrm_evals, 120.0, "hrm_eval_latency_ms"),
    }
    for slo, (values, threshold, metric) in truth.items():
        compliance = sum(v <= threshold for v in values) / len(values)
        assert s[slo]["compliance"] == pytest.approx(compliance, abs=RATIO_TOLERANCE), slo
        assert rule(f'ark:slo_good:ratio_rate5m{{slo="{slo}"}}') == pytest.approx(compliance, abs=RATIO_TOLERANCE)
        assert s[slo]["status"] == "violated"
        for window, burn in s[slo]["burn_rates"].items():
            promql = f'ark:slo_burn_rate:ratio_rate{window}{{slo="{slo}"}}'
            assert rule(promql) == pytest.approx(burn, rel=RATIO_TOLERANCE), promql
        lower, upper = true_p95_bucket(values)
        ours, theirs = s[slo]["value"], rule(f"ark:{metric}:p95_rate5m")
        assert lower <= ours <= upper and lower <= theirs <= upper, (slo, ours, theirs, (lower, upper))
        assert abs(ours - theirs) <= upper - lower
    assert s["availability"]["burn_rates"]["5m"] == pytest.approx(
        rule('ark:slo_burn_rate:ratio_rate5m{slo="availability"}'), rel=RATIO_TOLERANCE
    )


def test_seed_availability_rule_disagrees_with_slos(feed: Feed) -> None:
    """The seed's ``1 - rate(q[5m]) * 5 / 300``, evaluated live, misses the outage /slos reports.

    Quarantines added after their series were scraped are visible to rate(), so the seed's number is
    not empty, just divided by the window twice: it says the SLO is met while ark-obs and the shipped
    rule both say it is violated.
    """
    feed.settle()
    prom, s = feed.prom, slos(feed)
    truth = s["availability"]["value"]
    assert s["availability"]["status"] == "violated" and truth < 0.995
    seed = prom.query("1 - (rate(watchdog_quarantines_total[5m]) * 5 / 300)")
    assert seed, "the seed's expression returned nothing"
    for series in seed:
        assert float(series["value"][1]) > 0.995, series  # "met"
        assert abs(float(series["value"][1]) - truth) > 0.05
    seed_total = prom.query_value("1 - (sum(rate(watchdog_quarantines_total[5m])) * 5 / 300)")
    assert seed_total is not None and seed_total > 0.995 and abs(seed_total - truth) > 0.05
    assert prom.query_value("ark:availability:ratio_5m") == pytest.approx(truth, abs=RATIO_TOLERANCE)


# --- alerts -------------------------------------------------------------------------------------------
def test_quarantine_fires_the_canary_tripwire_at_once(feed: Feed) -> None:
    """A quarantine of a new agent fires ArkCanaryQuarantine for it within one scrape and one evaluation."""
    prom = feed.prom
    assert "Aletheia" not in active_alerts(prom, "ArkCanaryQuarantine", "firing")
    assert "Kenny" in active_alerts(prom, "ArkCanaryQuarantine", "firing")  # from the feed
    before = time.time()
    feed.quarantine("Aletheia", "audit_gap")
    alert = prom.wait_until(
        lambda: active_alerts(prom, "ArkCanaryQuarantine").get("Aletheia"),
        timeout=15,
        what="ArkCanaryQuarantine for Aletheia",
    )
    # activeAt is the evaluation timestamp; the scrape that saw the quarantine may have started (and
    # be timestamped) just before it was recorded, so there is no lower bound beyond "not before".
    delay = unix(alert["activeAt"]) - before
    assert delay <= promised_delay("ArkCanaryQuarantine"), delay
    assert alert["labels"]["reason"] == "audit_gap" and float(alert["value"]) == 1.0


def test_killed_agent_fires_agent_silent_within_two_intervals(
    feed: Feed, agents: dict[str, subprocess.Popen[bytes]]
) -> None:
    """SIGKILL on a heartbeating agent fires ArkAgentSilent for it, after 2 intervals of silence and
    within one scrape and one evaluation more; the agent still heartbeating never fires."""
    prom, kyle = feed.prom, agents["Kyle"]
    assert kyle.poll() is None and agents["Joey"].poll() is None
    assert [a for a in prom.alerts() if a["labels"]["alertname"] == "ArkAgentSilent"] == []
    kyle.send_signal(signal.SIGKILL)
    kyle.wait(5)
    killed = time.time()
    alert = prom.wait_until(
        lambda: active_alerts(prom, "ArkAgentSilent").get("Kyle"),
        timeout=2 * HEARTBEAT_S + 15,
        what="ArkAgentSilent for Kyle",
    )
    active = unix(alert["activeAt"])
    (last,) = [a.last_beat for a in feed.ark.collector.heartbeats.status() or () if a.agent == "Kyle"]
    # Silence is measured at the scrape (timestamp() - last beat) and an evaluation only sees scrapes
    # timestamped at or before it, so the alert cannot be active before 2 intervals have passed.
    promise = 2 * HEARTBEAT_S + promised_delay("ArkAgentSilent")
    assert last + 2 * HEARTBEAT_S < active <= last + promise, (active - last, promise)
    assert active - killed <= promise
    assert set(active_alerts(prom, "ArkAgentSilent")) == {"Kyle"}


def test_burn_rate_page_fires_only_for_the_slo_burning_fast(feed: Feed) -> None:
    """HRM evaluations burning at 15x page (ArkSloBudgetBurnPage); decisions burning at 1.6x do not."""
    feed.settle()
    page = {
        a["labels"]["slo"] for a in feed.prom.alerts("firing") if a["labels"]["alertname"] == "ArkSloBudgetBurnPage"
    }
    assert "hrm_eval_latency_p95" in page
    assert "decision_latency_p95" not in page
