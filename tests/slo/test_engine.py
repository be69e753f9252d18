"""SLOs: specs and their file format, every config mistake at once, and evaluation on the sliding window."""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ark_obs import metrics
from ark_obs.catalog import LATENCY_BUCKETS_MS, counter
from ark_obs.metrics import MetricsCollector
from ark_obs.slo import (
    AvailabilitySlo,
    GaugeSlo,
    LatencySlo,
    RatioSlo,
    SloConfigError,
    SloEngine,
    SloReport,
    SloSpec,
    Status,
    default_slos,
    format_duration,
    load_slo_file,
    parse_duration,
)
from plugins.clock import FakeClock as Clock
from plugins.multiprocess import Monitor, run_agent

SLICE = 10.0
BOUNDS = (*LATENCY_BUCKETS_MS, math.inf)


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)  # a round evaluated_at would look like the digits the test forbids


@pytest.fixture
def collector(clock: Clock) -> MetricsCollector:
    return MetricsCollector(clock=clock, ticker=False)


def advance(collector: MetricsCollector, clock: Clock, seconds: float) -> None:
    """Let ``seconds`` pass, ticking at every slice boundary like the background ticker."""
    end = clock.t + seconds
    while clock.t + SLICE <= end:
        clock.t += SLICE
        collector.tick()
    clock.t = end
    collector.tick()


def status(report: SloReport, name: str) -> Any:
    return next(s for s in report.slos if s.name == name)


def observe(collector: MetricsCollector, value: float, n: int, name: str = "ark_pass_latency_ms") -> None:
    for _ in range(n):
        collector.observe_histogram(name, value)


def restart(collector: MetricsCollector, name: str, *labels: str) -> None:
    """Put a metric's cumulative values back to zero, as a restarted process (or worker) does."""
    raw = collector.metric(name).raw
    raw = raw.labels(*labels) if labels else raw
    if hasattr(raw, "_buckets"):
        for bucket in raw._buckets:
            bucket.set(0.0)
        raw._sum.set(0.0)
    else:
        raw._value.set(0.0)


# --- specs and defaults --------------------------------------------------------------------------------
def test_defaults_are_the_seeds_four_slos() -> None:
    """The defaults are the seed's table: availability >= 99.5%/5m, p95s <= 400/120 ms over 5m, drift == 0."""
    specs = {s.id: s for s in default_slos()}
    assert list(specs) == ["availability", "decision_latency_p95", "hrm_eval_latency_p95", "ethics_drift"]
    avail, decision, hrm, drift = specs.values()
    assert isinstance(avail, AvailabilitySlo) and avail.objective == Decimal("0.995") and avail.window == 300
    assert avail.metric == "watchdog_quarantines_total"
    assert isinstance(decision, LatencySlo) and decision.metric == "ark_pass_latency_ms"
    assert (decision.threshold, decision.quantile, decision.window) == (400, Decimal("0.95"), 300)
    assert isinstance(hrm, LatencySlo) and hrm.metric == "hrm_eval_latency_ms"
    assert (hrm.threshold, hrm.quantile, hrm.window) == (120, Decimal("0.95"), 300)
    assert isinstance(drift, GaugeSlo) and drift.metric == "ark_ethics_drift"
    assert (drift.operator, drift.objective) == ("==", 0)


def test_objectives_print_exactly(collector: MetricsCollector) -> None:
    """Objectives and budgets print as 0.995 and 0.005, never 0.9950000000000001."""
    text = json.dumps(collector.check_slos().as_dict())
    assert '"objective": 0.995' in text and '"compliance_objective": 0.995' in text
    assert "0000000" not in text and "9999999" not in text
    quarantine(collector)
    assert '"value": 0.983333333333' in json.dumps(collector.check_slos().as_dict())
    dumped = json.dumps([s.model_dump(mode="json") for s in default_slos()])
    assert '"objective": 0.995' in dumped and '"window": "5m"' in dumped


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("300s", 300), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), (90, 90), (1.5, 1.5)],
)
def test_durations_parse_like_prometheus(text: object, seconds: float) -> None:
    """Windows are seconds or Prometheus-style durations; formatting gives the shortest form back."""
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "m5", "-5m", "0s", True, None, "5m3"])
def test_bad_durations_are_rejected(text: object) -> None:
    """Anything that is not a positive duration is refused with a message."""
    with pytest.raises(ValueError):
        parse_duration(text)


# --- config files: every mistake at once --------------------------------------------------------------
FIVE_MISTAKES_TOML = """
[[slos]]
id = "availability"
kind = "availability"
objective = 1.5            # 1: not a ratio
window = "5m"

[[slos]]
id = "decision_latency_p95"
kind = "latency"
metric = "ark_pass_latency_ms"
threshold = 400
window = "5 minutes"       # 2: not a duration

[[slos]]
id = "hrm_eval_latency_p95"
kind = "latency"
metric = "hrm_eval_latency_ms"
threshold = 115            # 3: not a bucket boundary
window = "5m"

[[slos]]
id = "state_writes"
kind = "latency"
metric = "ark_pas_latency_ms"  # 4: no such metric
threshold = 400
window = "5m"

[[slos]]
id = "decision_latency_p95"  # 5: id used twice
kind = "gauge"
metric = "ark_ethics_drift"
operator = "=="
objective = 0
"""


def test_a_file_with_five_mistakes_yields_five_errors_with_field_paths(
    tmp_path: Path, collector: MetricsCollector
) -> None:
    """Validation does not stop at the first mistake: each one is reported with its field path."""
    path = tmp_path / "slos.toml"
    path.write_text(FIVE_MISTAKES_TOML)
    with pytest.raises(SloConfigError) as info:
        load_slo_file(path, collector.registry)
    errors = info.value.errors
    assert len(errors) == 5, errors
    paths = [e.split(":", 1)[0] for e in errors]
    assert paths == [
        "slos[0].objective",
        "slos[1].window",
        "slos[2].threshold",
        "slos[3].metric",
        "slos[4].id",
    ]
    assert "less than 1" in errors[0]
    assert "not a duration" in errors[1]
    assert "not a bucket boundary" in errors[2] and "110, 120" in errors[2]
    assert "did you mean ark_pass_latency_ms" in errors[3]
    assert "already used by slos[1]" in errors[4]
    assert str(path) in str(info.value) and "5 error(s)" in str(info.value)


def test_yaml_files_work_the_same_and_check_types_and_labels(tmp_path: Path, collector: MetricsCollector) -> None:
    """A YAML file has the same fields; a wrong metric type, unknown label or field are errors too."""
    path = tmp_path / "slos.yaml"
    path.write_text(
        """
slos:
  - id: drift
    kind: gauge
    metric: ark_pass_latency_ms
    operator: "=="
    objective: 0
  - id: hrm
    kind: latency
    metric: hrm_eval_latency_ms
    threshold: 120
    window: 5m
    labels: {agent: HRM}
  - id: typo
    kind: latency
    metric: hrm_eval_latency_ms
    treshold: 120
    threshold: 120
    window: 5m
  - id: what
    kind: percentile
"""
    )
    with pytest.raises(SloConfigError) as info:
        load_slo_file(path, collector.registry)
    assert info.value.errors == [
        "slos[0].metric: ark_pass_latency_ms is a histogram, a gauge SLO needs a gauge",
        "slos[1].labels.agent: hrm_eval_latency_ms has no label 'agent' (labels: none)",
        "slos[2].treshold: Extra inputs are not permitted",
        "slos[3].kind: 'percentile' is not one of latency, availability, gauge, ratio",
    ]


def test_a_valid_file_replaces_the_defaults(tmp_path: Path, collector: MetricsCollector) -> None:
    """SloEngine.from_file evaluates exactly the file's SLOs (YAML or TOML)."""
    path = tmp_path / "slos.yml"
    path.write_text(
        "slos:\n"
        "  - {id: fast_decisions, kind: latency, metric: ark_pass_latency_ms, threshold: 200,"
        " quantile: 0.99, window: 10m, min_events: 5}\n"
    )
    engine = SloEngine.from_file(collector, path)
    report = engine.check()
    assert [s.name for s in report.slos] == ["fast_decisions"]
    only = report.slos[0]
    assert (only.objective, only.compliance_objective, only.window, only.min_events) == (200, 0.99, "10m", 5)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("slos = [", ".toml", "(syntax)"),
        ("slos: [", ".yaml", "(syntax)"),
        ("[]", ".yaml", "expected a mapping"),
        ("other: 1", ".yaml", "other: unknown top-level key"),
        ("x", ".json", "unknown format"),
    ],
)
def test_unreadable_files_are_config_errors(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    """Syntax errors, wrong shapes and unknown formats are SloConfigErrors, not tracebacks."""
    path = tmp_path / f"slos{suffix}"
    path.write_text(content)
    with pytest.raises(SloConfigError, match=re.escape(message)):
        load_slo_file(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist is reported as a config error naming the path."""
    with pytest.raises(SloConfigError, match="cannot read"):
        load_slo_file(tmp_path / "nope.toml")


def test_engine_rejects_specs_that_do_not_fit_the_collector(clock: Clock) -> None:
    """Building an engine validates against the registry and the retention, every error at once."""
    collector = MetricsCollector(clock=clock, ticker=False, retention_seconds=600)
    specs: list[SloSpec] = [
        LatencySlo(id="slow", kind="latency", metric="ark_pass_latency_ms", threshold=400, window="1h"),
        AvailabilitySlo(id="up", kind="availability", objective=Decimal("0.99"), window="5m", metric="nope_total"),
    ]
    with pytest.raises(SloConfigError) as info:
        SloEngine(collector, specs)
    assert [e.split(":")[0] for e in info.value.errors] == ["slos[0].window", "slos[1].metric"]


# --- evaluation ------------------------------------------------------------------------------------------
def quarantine(collector: MetricsCollector, n: int = 1) -> None:
    collector.inc_counter("watchdog_quarantines_total", n, labels={"agent": "Kenny", "reason": "latency"})


def test_check_slos_keeps_the_seeds_shape(collector: MetricsCollector) -> None:
    """check_slos() has the seed's keys (slos, total, met, violated, violations) and per-SLO details."""
    report = collector.check_slos()
    data = report.as_dict()
    assert {"slos", "total", "met", "violated", "violations"} <= data.keys()
    assert (report["total"], data["total"]) == (4, 4)
    assert data["met"] + data["violated"] + data["no_data"] == 4
    assert isinstance(data["violations"], list)
    fields = {
        "name", "value", "objective", "operator", "window", "status", "good_events", "total_events",
        "compliance", "error_budget_remaining", "burn_rate",
    }  # fmt: skip
    assert all(fields <= s.keys() for s in data["slos"])
    assert collector.slos.check().total == 4
    assert metrics.check_slos()["total"] == 4  # the module-level function, on the default collector


def test_an_empty_window_is_no_data_never_met_never_nan(collector: MetricsCollector) -> None:
    """Without events latency SLOs are no_data with no value; nothing in the JSON is NaN."""
    report = collector.check_slos()
    for name in ("decision_latency_p95", "hrm_eval_latency_p95"):
        s = status(report, name)
        assert (s.status, s.met, s.value, s.compliance, s.burn_rate) == (Status.NO_DATA, False, None, None, None)
        assert s.burn_rates == {} and s.total_events == 0
    assert status(report, "availability").status is Status.MET
    assert status(report, "ethics_drift").status is Status.MET  # the unlabelled gauge exists at 0
    assert (report.met, report.violated, report.no_data, report.violations) == (2, 0, 2, [])
    json.dumps(report.as_dict(), allow_nan=False)


def test_latency_violation_and_recovery_as_the_window_slides(collector: MetricsCollector, clock: Clock) -> None:
    """Slow events violate the SLO while in the window and stop counting once it has slid past them."""
    observe(collector, 500.0, 100)  # a burst of slow decisions at t=1000
    first = status(collector.check_slos(), "decision_latency_p95")
    assert (first.status, first.good_events, first.total_events, first.compliance) == ("violated", 0, 100, 0)
    assert first.burn_rate == 20.0 and first.error_budget_remaining == -19.0  # error 1.0 / budget 0.05
    for _ in range(15):  # 150 s of fast decisions, 10 per slice
        observe(collector, 100.0, 10)
        advance(collector, clock, SLICE)
    middle = status(collector.check_slos(), "decision_latency_p95")
    assert (middle.status, middle.good_events, middle.total_events) == ("violated", 150, 250)
    assert middle.compliance == 0.6
    for _ in range(16):  # 160 s more: the slow burst is now older than 5 minutes
        observe(collector, 100.0, 10)
        advance(collector, clock, SLICE)
    last = status(collector.check_slos(), "decision_latency_p95")
    assert last.status == "met" and last.compliance == 1.0 and last.burn_rates["5m"] == 0.0
    assert last.burn_rates["30m"] == pytest.approx((100 / 410) / 0.05)  # the long window still sees it
    assert last.error_budget_remaining == 1.0
    assert last.value is not None and 75 < last.value <= 100  # the p95 lies in the (75, 100] bucket


def test_values_exactly_at_the_threshold_are_good(collector: MetricsCollector) -> None:
    """Compliance is counted exactly at the bucket boundary: 400.0 ms is good, 400.001 ms is not."""
    observe(collector, 400.0, 95)
    observe(collector, 400.001, 5)
    s = status(collector.check_slos(), "decision_latency_p95")
    assert (s.good_events, s.total_events, s.compliance, s.status) == (95, 100, 0.95, "met")
    assert s.value == 400.0 and s.error_budget_remaining == 0.0
    observe(collector, 400.001, 1)  # 95 of 101: one too many
    assert status(collector.check_slos(), "decision_latency_p95").status == "violated"
    observe(collector, 120.0, 19, "hrm_eval_latency_ms")
    observe(collector, 120.5, 1, "hrm_eval_latency_ms")
    hrm = status(collector.check_slos(), "hrm_eval_latency_p95")
    assert (hrm.good_events, hrm.total_events, hrm.status, hrm.value) == (19, 20, "met", 120.0)


def test_fewer_events_than_min_events_is_no_data(collector: MetricsCollector) -> None:
    """Below min_events the value and counts are shown but nothing is judged; at min_events it is."""
    engine = SloEngine(collector, min_events=20)
    observe(collector, 900.0, 19)
    s = status(engine.check(), "decision_latency_p95")
    assert (s.status, s.met, s.min_events, s.total_events) == ("no_data", False, 20, 19)
    assert s.value is not None and s.compliance == 0.0  # facts, not a verdict
    assert (s.burn_rate, s.error_budget_remaining, s.burn_rates) == (None, None, {})
    observe(collector, 900.0, 1)
    s = status(engine.check(), "decision_latency_p95")
    assert (s.status, s.burn_rate, s.burn_rates["5m"]) == ("violated", 20.0, 20.0)


def test_min_events_per_slo_overrides_the_engine(collector: MetricsCollector) -> None:
    """An SLO's own min_events wins over the engine's default."""
    spec = LatencySlo(id="d", kind="latency", metric="ark_pass_latency_ms", threshold=400, window="5m", min_events=3)
    engine = SloEngine(collector, [spec], min_events=100)
    observe(collector, 10.0, 3)
    assert engine.check().slos[0].status == "met"


def test_counter_resets_count_like_prometheus_increase(collector: MetricsCollector, clock: Clock) -> None:
    """A histogram or counter that restarts from zero adds its new values; nothing goes negative."""
    observe(collector, 100.0, 50)
    quarantine(collector, 2)
    advance(collector, clock, 30)
    restart(collector, "ark_pass_latency_ms")  # the process restarted
    restart(collector, "watchdog_quarantines_total", "Kenny", "latency")
    observe(collector, 500.0, 10)
    quarantine(collector, 1)
    advance(collector, clock, 30)
    report = collector.check_slos()
    s = status(report, "decision_latency_p95")
    assert (s.good_events, s.total_events, s.status) == (50, 60, "violated")
    a = status(report, "availability")
    assert a.value == pytest.approx(1 - 3 * 5 / 300) and a.good_events == 285


def test_availability_is_downtime_over_the_window(collector: MetricsCollector, clock: Clock) -> None:
    """One quarantine = 5 s down: 1 - 5/300 over 5m, violated; met again once it leaves the window."""
    quarantine(collector)
    report = collector.check_slos()
    a = status(report, "availability")
    assert (a.value, a.status, a.good_events, a.total_events) == (0.983333333333, "violated", 295, 300)
    assert a.burn_rate == pytest.approx((5 / 300) / 0.005) and a.burn_rates["30m"] == pytest.approx((5 / 1800) / 0.005)
    assert report.availability_ratio == {"5m": 0.983333333333, "30m": 0.997222222222, "1h": 0.998611111111}
    assert report.violations == ["availability"]
    advance(collector, clock, 310)
    a = status(collector.check_slos(), "availability")
    assert (a.value, a.status, a.burn_rate) == (1.0, "met", 0.0)


def test_availability_downtime_is_configurable_and_clamped(collector: MetricsCollector) -> None:
    """The seconds per quarantine come from the engine or the SLO; availability never goes below 0."""
    engine = SloEngine(collector, availability_downtime_per_quarantine_seconds=1.0)
    quarantine(collector)
    assert status(engine.check(), "availability").value == pytest.approx(1 - 1 / 300)
    spec = AvailabilitySlo(
        id="a", kind="availability", objective=Decimal("0.9"), window="1m", downtime_per_event_seconds=30
    )
    engine = SloEngine(collector, [spec])
    assert engine.check().slos[0].value == 0.5
    quarantine(collector, 100)
    s = engine.check().slos[0]
    assert (s.value, s.good_events, s.compliance, s.status) == (0.0, 0.0, 0.0, "violated")


def test_ethics_drift_is_a_gauge_comparison(collector: MetricsCollector) -> None:
    """ark_ethics_drift == 0 is met at 0 (its default) and violated as soon as a rule changed."""
    assert status(collector.check_slos(), "ethics_drift").status == "met"
    collector.set_gauge("ark_ethics_drift", 1)
    s = status(collector.check_slos(), "ethics_drift")
    assert (s.status, s.value, s.objective, s.operator, s.window) == ("violated", 1.0, 0.0, "==", None)
    collector.set_gauge("ark_ethics_drift", 0)
    assert status(collector.check_slos(), "ethics_drift").met


def test_a_gauge_is_compared_by_its_decimal_value(collector: MetricsCollector) -> None:
    """A gauge at 0.1 meets `<= 0.1`: the comparison uses 0.1, not the binary float's expansion."""
    spec = GaugeSlo(id="g", kind="gauge", metric="kyle_ingest_rate", operator="<=", objective=Decimal("0.1"))
    collector.set_gauge("kyle_ingest_rate", 0.1)
    assert SloEngine(collector, [spec], register=False).check().slos[0].status == "met"


def test_a_gauge_without_series_is_no_data(collector: MetricsCollector) -> None:
    """A labelled gauge that was never set has no value: no_data, not met."""
    spec = GaugeSlo(
        id="backlog", kind="gauge", metric="redis_stream_depth", operator="<=", objective=Decimal(5000),
        labels={"stream": "signals"},
    )  # fmt: skip
    engine = SloEngine(collector, [spec])
    assert engine.check().slos[0].status == "no_data"
    collector.set_gauge("redis_stream_depth", 4000, labels={"stream": "signals"})
    collector.set_gauge("redis_stream_depth", 9000, labels={"stream": "other"})
    assert engine.check().slos[0].status == "met"


def test_ratio_slo_counts_good_over_total(collector: MetricsCollector, clock: Clock) -> None:
    """A ratio SLO is increase(good) / increase(total) over its window, no_data without events."""
    collector.declare(counter("orders_filled_total", "Filled orders."))
    collector.declare(counter("orders_total", "Orders."))
    spec = RatioSlo(
        id="fills", kind="ratio", good_metric="orders_filled_total", total_metric="orders_total",
        objective=Decimal("0.99"), window="5m",
    )  # fmt: skip
    engine = SloEngine(collector, [spec])
    assert engine.check().slos[0].status == "no_data"
    collector.inc_counter("orders_total", 200)
    collector.inc_counter("orders_filled_total", 199)
    s = engine.check().slos[0]
    assert (s.value, s.status, s.compliance_objective, s.burn_rate) == (0.995, "met", 0.99, 0.5)
    advance(collector, clock, 60)
    collector.inc_counter("orders_total", 100)
    collector.inc_counter("orders_filled_total", 90)
    s = engine.check().slos[0]
    assert (s.good_events, s.total_events, s.status) == (289, 300, "violated")


def test_a_ratio_of_a_series_to_itself_is_refused() -> None:
    """good and total on the same series would always be 1: a config mistake."""
    with pytest.raises(ValueError, match="same series"):
        RatioSlo(id="r", kind="ratio", good_metric="a_total", total_metric="a_total", objective=0.9, window=60)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=12_000.0), min_size=1, max_size=300))
def test_interpolated_p95_lies_in_the_bucket_of_the_true_p95(values: list[float]) -> None:
    """The p95 shown is interpolated, but always inside the bucket holding the exact (nearest-rank) p95,
    so the verdict and the shown value agree at the threshold."""
    collector = MetricsCollector(clock=Clock(), ticker=False)
    spec = LatencySlo(id="p95", kind="latency", metric="ark_pass_latency_ms", threshold=400, window="5m")
    engine = SloEngine(collector, [spec], register=False)
    for v in values:
        collector.observe_histogram("ark_pass_latency_ms", v)
    s = engine.check().slos[0]
    true_p95 = sorted(values)[math.ceil(0.95 * len(values)) - 1]
    assert s.value is not None
    i = bisect_left(BOUNDS, true_p95)
    low = BOUNDS[i - 1] if i else -math.inf
    assert low < s.value <= BOUNDS[i] or s.value == true_p95 == min(values)
    assert s.met == (s.value <= 400)


AGENT = """
import sys
from ark_obs import metrics
for i in range(int(sys.argv[1])):
    metrics.record_latency("ark_pass_latency_ms", 400.0 if i % 10 else 450.0)
metrics.increment_counter("watchdog_quarantines_total", labels={"agent": "Joey", "reason": "stale"})
metrics.set_gauge("ark_ethics_drift", float(sys.argv[2]))
"""


def run_agents(tmp_path: Path) -> dict[str, Any]:
    """A monitor process starts, two agent processes record, then the monitor evaluates and scrapes."""
    monitor = Monitor(tmp_path, '{"report": c.check_slos().as_dict(), "exposition": c.export_prometheus()}')
    run_agent(AGENT, tmp_path, "100", "0")
    run_agent(AGENT, tmp_path, "100", "1")
    result = monitor.result()
    return {"exposition": result["exposition"], **{s["name"]: s for s in result["report"]["slos"]}}


def test_multiprocess_agents_are_evaluated_together(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, the SLOs count every agent process' events, and scrapes show them."""
    result = run_agents(tmp_path)
    decision = result["decision_latency_p95"]
    assert (decision["good_events"], decision["total_events"], decision["status"]) == (180, 200, "violated")
    assert result["availability"]["value"] == pytest.approx(1 - 10 / 300)
    assert 'ark_slo_met{slo="decision_latency_p95"} 0.0' in result["exposition"]


def test_multiprocess_gauge_slo_reads_the_aggregated_gauge(tmp_path: Path) -> None:
    """ark_ethics_drift (multiprocess mode "max") is judged on the worst process' value."""
    assert run_agents(tmp_path)["ethics_drift"]["value"] == 1.0


# --- SLIs from spans ------------------------------------------------------------------------------------
def test_latency_slos_fall_back_to_span_slis_and_never_count_twice(collector: MetricsCollector, clock: Clock) -> None:
    """Agents that only send spans: decision latency is judged on ark_trace_latency_ms (complete traces) and
    HRM's on the durations of HRM's spans, and each SLO names that source. Once the in-process histograms
    have events they are the only source judged: a pass is never counted from both."""
    from ark_obs.traces import DEFAULT_PIPELINE, TraceMonitor

    collector.traces = TraceMonitor(collector, "memory", background=False, sweep=True)
    engine = SloEngine(collector)
    advance(collector, clock, SLICE)
    for i in range(20):  # 20 passes of 5 spans, 60 ms each and back to back: 300 ms per pass; HRM 60 ms
        for k, agent in enumerate(DEFAULT_PIPELINE):
            collector.traces.record_span(f"t{i}", agent, at=clock.t - 1 + k * 0.06, duration_ms=60)
    advance(collector, clock, SLICE)
    report = engine.check()
    decision, hrm = status(report, "decision_latency_p95"), status(report, "hrm_eval_latency_p95")
    assert (decision.status, decision.total_events, decision.source) == (Status.MET, 20, "ark_trace_latency_ms")
    assert 250 < decision.value <= 400 and decision.value_is_lower_bound is False  # judged on the fallback's buckets
    assert (hrm.status, hrm.total_events, hrm.source) == (Status.MET, 20, 'ark_span_latency_ms{agent="HRM"}')
    assert status(report, "availability").source == "watchdog_quarantines_total"
    gauges = collector.registry.prometheus
    assert gauges.get_sample_value("ark_slo_met", {"slo": "hrm_eval_latency_p95"}) == 1.0
    assert gauges.get_sample_value("ark_spans_total", {"agent": "HRM", "outcome": "ok"}) == 20

    observe(collector, 500.0, 3)  # in-process recording too: it alone is judged, the spans are not added
    observe(collector, 50.0, 2, "hrm_eval_latency_ms")
    advance(collector, clock, SLICE)
    report = engine.check()
    decision, hrm = status(report, "decision_latency_p95"), status(report, "hrm_eval_latency_p95")
    assert (decision.status, decision.total_events, decision.source) == (Status.VIOLATED, 3, "ark_pass_latency_ms")
    assert (hrm.total_events, hrm.source) == (2, "hrm_eval_latency_ms")
    collector.traces.close()
