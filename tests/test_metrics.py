"""The seed's recording API on the ARK registry: examples, isolation, errors, drops, concurrency, stats."""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from ark_obs import catalog, metrics, registry
from ark_obs.context import bind_trace_id
from ark_obs.metrics import MetricsCollector
from ark_obs.registry import EXEMPLAR_REFRESH_SECONDS, LabelError, MetricTypeError, UnknownMetricError
from plugins.clock import FakeClock as Clock


@pytest.fixture
def collector() -> MetricsCollector:
    return MetricsCollector(ticker=False)


def sample(c: MetricsCollector, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(c.export_prometheus()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_seed_examples_run_unchanged(collector: MetricsCollector) -> None:
    """The seed's section-1 examples work as written and land in the exposition."""
    collector.inc_counter("hrm_denials_total", labels={"rule_id": "max_position_size"})
    collector.set_gauge("kyle_ingest_rate", 1.02)
    collector.observe_histogram("ark_pass_latency_ms", 285.3)
    stats = collector.get_histogram_stats("ark_pass_latency_ms")
    assert stats["count"] == 1 and stats["p95"] == pytest.approx(285.3)
    export = collector.export_prometheus()
    assert 'hrm_denials_total{agent="",rule_id="max_position_size"} 1.0' in export
    assert "kyle_ingest_rate 1.02" in export
    assert 'ark_pass_latency_ms_bucket{le="300.0"} 1.0' in export


def test_seed_integration_examples_use_module_functions() -> None:
    """increment_counter / set_gauge / record_latency record on the default collector."""
    c = metrics.get_collector()
    before = c.metric("watchdog_quarantines_total").labels(agent="Kenny", reason="errors").get()
    metrics.increment_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "errors"})
    metrics.set_gauge("redis_stream_depth", 42, labels={"stream": "signals"})
    metrics.record_latency("hrm_eval_latency_ms", 12.5)
    assert c.metric("watchdog_quarantines_total").labels(agent="Kenny", reason="errors").get() == before + 1
    assert c.metric("redis_stream_depth").labels(stream="signals").get() == 42
    assert metrics.get_collector() is c


def test_metric_objects_import_by_name() -> None:
    """``from ark_obs.metrics import <name>`` gives the default collector's metric object."""
    from ark_obs.metrics import hrm_denials_total  # type: ignore[attr-defined]

    assert hrm_denials_total is metrics.get_collector().metric("hrm_denials_total")
    with pytest.raises(ImportError):
        from ark_obs.metrics import no_such_metric  # type: ignore[attr-defined]  # noqa: F401


def test_aliases_resolve_to_the_same_counter(collector: MetricsCollector) -> None:
    """agent_heartbeat_failures and hrm_denials (the seed's spellings) are the _total counters."""
    collector.inc_counter("agent_heartbeat_failures", labels={"agent": "Joey"})
    collector.inc_counter("agent_heartbeat_failures_total", labels={"agent": "Joey"})
    collector.inc_counter("hrm_denials", labels={"rule_id": "r1", "agent": "Kenny"})
    assert sample(collector, "agent_heartbeat_failures_total", agent="Joey") == 2.0
    assert sample(collector, "hrm_denials_total", rule_id="r1") == 1.0


def test_collectors_are_isolated() -> None:
    """Two collectors never share state or raise duplicate-registration errors."""
    a, b = MetricsCollector(ticker=False), MetricsCollector(ticker=False)
    a.inc_counter("graveyard_validations_total", 3)
    assert sample(a, "graveyard_validations_total") == 3.0
    assert sample(b, "graveyard_validations_total") == 0.0


def test_every_catalogue_metric_is_declared_with_its_labels(collector: MetricsCollector) -> None:
    """The registry holds each recorded catalogue entry with exactly the catalogue's labels and type."""
    for spec in catalog.CATALOG:
        if spec.collected:
            continue
        metric = collector.metric(spec.name)
        assert metric.spec == spec
        assert tuple(metric.raw._labelnames) == spec.labels
        assert metric.raw._type == spec.kind.value


def test_unknown_metric_names_the_closest(collector: MetricsCollector) -> None:
    """A typo raises at once and suggests the intended metric."""
    with pytest.raises(UnknownMetricError, match="did you mean hrm_denials_total"):
        collector.inc_counter("hrm_denial_total")


def test_wrong_labels_list_the_expected_ones(collector: MetricsCollector) -> None:
    """Missing or unknown label names raise, naming the expected labels."""
    with pytest.raises(LabelError, match=r"expects labels \(agent, reason\).*missing: reason"):
        collector.inc_counter("watchdog_quarantines_total", labels={"agent": "Kenny"})
    with pytest.raises(LabelError, match="unknown: rule"):
        collector.inc_counter("hrm_denials_total", labels={"rule": "x"})
    with pytest.raises(LabelError, match="needs labels"):
        collector.inc_counter("watchdog_quarantines_total")


def test_counter_decrement_is_dropped_and_type_mismatch_raises(collector: MetricsCollector) -> None:
    """A negative increment is bad data (dropped, counted); using a gauge as a counter is a programming error."""
    collector.inc_counter("graveyard_validations_total", -1)
    assert sample(collector, "graveyard_validations_total") == 0.0
    assert sample(collector, "ark_obs_dropped_total", metric="graveyard_validations_total", reason="negative") == 1.0
    with pytest.raises(MetricTypeError, match="gauge, not a counter"):
        collector.inc_counter("kyle_ingest_rate")
    with pytest.raises(MetricTypeError):
        collector.declare(catalog.gauge("graveyard_validations_total", "x"))


def test_redeclaring_the_same_spec_is_idempotent(collector: MetricsCollector) -> None:
    """Declaring a metric twice with the same type returns the same object."""
    spec = catalog.latency_ms("kyle_process_latency_ms", "Kyle processing latency.", labels=("agent", "method"))
    assert collector.declare(spec) is collector.declare(spec)


def test_bad_runtime_values_are_dropped_counted_and_logged_once(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN and infinities never raise: they are dropped, counted per metric and reason, logged once."""
    with caplog.at_level(logging.WARNING, logger="ark_obs"):
        collector.observe_histogram("ark_pass_latency_ms", math.nan)
        collector.observe_histogram("ark_pass_latency_ms", math.inf)
        collector.set_gauge("kyle_ingest_rate", math.nan)
        collector.inc_counter("graveyard_validations_total", math.inf)
    assert sample(collector, "ark_obs_dropped_total", metric="ark_pass_latency_ms", reason="non_finite") == 2.0
    assert sample(collector, "ark_obs_dropped_total", metric="kyle_ingest_rate", reason="non_finite") == 1.0
    assert sample(collector, "ark_pass_latency_ms_count") == 0.0
    assert sample(collector, "graveyard_validations_total") == 0.0
    logged = [r for r in caplog.records if "ark_pass_latency_ms" in r.getMessage()]
    assert len(logged) == 1


def test_dropped_recordings_are_logged_once_per_metric_and_reason(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line for each (metric, reason) pair: a second reason on a metric, or a second metric with a
    reason already logged, gets its own line; a repeat of a pair gets none."""
    with caplog.at_level(logging.WARNING, logger="ark_obs"):
        for _ in range(2):
            collector.observe_histogram("ark_pass_latency_ms", math.nan)  # (latency, non_finite)
            collector.observe_histogram("ark_pass_latency_ms", -1.0)  # (latency, negative)
            collector.observe_histogram("hrm_eval_latency_ms", math.nan)  # (hrm, non_finite)
    lines = [r.getMessage() for r in caplog.records if "dropped a recording" in r.getMessage()]
    assert sorted(lines) == sorted(
        f"ark-obs dropped a recording of {metric} ({reason}); further drops are only counted in ark_obs_dropped_total"
        for metric, reason in (
            ("ark_pass_latency_ms", "non_finite"),
            ("ark_pass_latency_ms", "negative"),
            ("hrm_eval_latency_ms", "non_finite"),
        )
    )


def test_long_label_values_and_cardinality_blowups_are_dropped() -> None:
    """Label values over 128 characters and series past the cap are dropped and counted."""
    c = MetricsCollector(ticker=False, max_series=5)
    c.inc_counter("hrm_denials_total", labels={"rule_id": "x" * 129, "agent": "Kenny"})
    for i in range(8):
        c.inc_counter("hrm_denials_total", labels={"rule_id": f"rule-{i}", "agent": "Kenny"})
    assert c.metric("hrm_denials_total").series_count == 5
    assert sample(c, "ark_obs_dropped_total", metric="hrm_denials_total", reason="label_too_long") == 1.0
    assert sample(c, "ark_obs_dropped_total", metric="hrm_denials_total", reason="cardinality") == 3.0


def test_trace_id_label_becomes_an_exemplar_not_a_series(collector: MetricsCollector) -> None:
    """The seed's record_latency(..., labels={"trace_id": ...}) creates no series per trace."""
    for i in range(50):
        collector.observe_histogram("ark_pass_latency_ms", 285.3, labels={"trace_id": f"trace-{i}"})
    assert collector.metric("ark_pass_latency_ms").series_count == 1
    text = openmetrics_latest(collector.registry.prometheus).decode()
    line = next(x for x in text.splitlines() if x.startswith('ark_pass_latency_ms_bucket{le="300.0"}'))
    assert '# {trace_id="trace-0"} 285.3' in line  # refreshed at most once a second per bucket


def test_bound_trace_id_is_the_exemplar(collector: MetricsCollector) -> None:
    """An observation made while a trace id is bound carries it as the bucket's exemplar."""
    with bind_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"):
        collector.observe_histogram("hrm_eval_latency_ms", 80.0)
    text = openmetrics_latest(collector.registry.prometheus).decode()
    assert 'trace_id="4bf92f3577b34da6a3ce929d0e0e4736"' in text


def bucket_exemplars(c: MetricsCollector, family: str) -> dict[str, tuple[str, float]]:
    """``le`` -> (trace id, observed value) of every bucket of ``family`` that carries an exemplar."""
    text = openmetrics_latest(c.registry.prometheus).decode()
    (fam,) = [f for f in parse_openmetrics(text) if f.name == family]
    return {
        s.labels["le"]: (s.exemplar.labels["trace_id"], s.exemplar.value)
        for s in fam.samples
        if s.name == f"{family}_bucket" and s.exemplar is not None
    }


@pytest.fixture
def exemplar_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock the exemplar refresh reads (the registry's ``time.monotonic``), moved by the test."""
    clock = Clock(5_000.0)
    monkeypatch.setattr(registry, "time", SimpleNamespace(monotonic=clock, time=time.time))
    return clock


def test_exemplar_is_refreshed_once_per_interval_per_bucket(collector: MetricsCollector, exemplar_clock: Clock) -> None:
    """A bucket's exemplar is kept for EXEMPLAR_REFRESH_SECONDS (newer traces in that bucket do not
    replace it), then the first observation at or after the interval replaces it with its own trace
    id and value; each bucket has its own interval."""
    assert EXEMPLAR_REFRESH_SECONDS == 1.0  # the README's "at most once a second per bucket"
    observe = collector.observe_histogram
    observe("ark_pass_latency_ms", 285.3, labels={"trace_id": "trace-a"})
    assert bucket_exemplars(collector, "ark_pass_latency_ms") == {"300.0": ("trace-a", 285.3)}

    exemplar_clock.advance(EXEMPLAR_REFRESH_SECONDS - 0.001)
    observe("ark_pass_latency_ms", 290.0, labels={"trace_id": "trace-b"})  # too soon: not more often
    assert bucket_exemplars(collector, "ark_pass_latency_ms") == {"300.0": ("trace-a", 285.3)}

    exemplar_clock.advance(0.001)  # the interval has passed: the next trace becomes the exemplar
    observe("ark_pass_latency_ms", 295.0, labels={"trace_id": "trace-c"})
    assert bucket_exemplars(collector, "ark_pass_latency_ms") == {"300.0": ("trace-c", 295.0)}

    # same instant: this bucket was just refreshed, another bucket takes its first exemplar at once
    observe("ark_pass_latency_ms", 296.0, labels={"trace_id": "trace-d"})
    observe("ark_pass_latency_ms", 40.0, labels={"trace_id": "trace-e"})
    ex = bucket_exemplars(collector, "ark_pass_latency_ms")
    assert ex["300.0"] == ("trace-c", 295.0)
    assert [v for k, v in ex.items() if k != "300.0"] == [("trace-e", 40.0)]

    exemplar_clock.advance(10 * EXEMPLAR_REFRESH_SECONDS)  # long after: still refreshed, not kept forever
    with bind_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"):
        observe("ark_pass_latency_ms", 299.0)
    assert bucket_exemplars(collector, "ark_pass_latency_ms")["300.0"] == ("4bf92f3577b34da6a3ce929d0e0e4736", 299.0)


def test_ten_threads_count_exactly(collector: MetricsCollector) -> None:
    """10 threads x 10,000 increments give exactly 100,000, by name and through a child."""
    child = collector.metric("hrm_denials_total").labels(rule_id="r", agent="Kenny")

    def work() -> None:
        for _ in range(5_000):
            collector.inc_counter("hrm_denials_total", labels={"rule_id": "r", "agent": "Kenny"})
            child.inc()

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert child.get() == 100_000


async def test_thousand_tasks_count_exactly(collector: MetricsCollector) -> None:
    """1,000 asyncio tasks x 100 increments give exactly 100,000."""

    async def work() -> None:
        for i in range(100):
            collector.inc_counter("graveyard_validations_total")
            if i % 10 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(work() for _ in range(1_000)))
    assert collector.metric("graveyard_validations_total").raw._value.get() == 100_000


def test_stats_slide_with_the_window() -> None:
    """Stats cover the sliding window: old observations leave it, new ones count at once."""
    clock = Clock()
    c = MetricsCollector(ticker=False, clock=clock, retention_seconds=600, slice_seconds=10)
    c.tick()
    for v in (100.0, 200.0, 300.0):
        c.observe_histogram("ark_pass_latency_ms", v)
    for _ in range(40):  # 400 s later, ticking each slice
        clock.t += 10
        c.tick()
    assert c.get_histogram_stats("ark_pass_latency_ms")["count"] == 3
    recent = c.get_histogram_stats("ark_pass_latency_ms", window_seconds=300)
    assert recent.count == 0 and recent.p95 is None and recent.min is None and recent.avg is None
    c.observe_histogram("ark_pass_latency_ms", 50.0)
    recent = c.get_histogram_stats("ark_pass_latency_ms", window_seconds=300)
    assert (recent.count, recent.min, recent.max, recent.sum) == (1, 50.0, 50.0, 50.0)


def test_stats_of_an_empty_window_are_none_not_zero(collector: MetricsCollector) -> None:
    """An empty window gives count 0 and None values, never an exception or a fake zero latency."""
    stats = collector.get_histogram_stats("hrm_eval_latency_ms")
    assert stats.as_dict() == {
        "count": 0, "sum": 0.0, "avg": None, "p50": None, "p95": None, "p99": None,
        "min": None, "max": None, "window_seconds": 3600.0, "lower_bounds": [],
    }  # fmt: skip


def test_stats_aggregate_or_select_labelled_series(collector: MetricsCollector) -> None:
    """Labels select series; None aggregates every series of the metric."""
    for op, agent, v in (("write", "Kenny", 10.0), ("write", "Joey", 30.0), ("read", "Kenny", 20.0)):
        collector.observe_histogram("state_write_latency_ms", v, labels={"operation": op, "agent": agent})
    assert collector.get_histogram_stats("state_write_latency_ms").count == 3
    kenny = collector.get_histogram_stats("state_write_latency_ms", labels={"agent": "Kenny"})
    assert (kenny.count, kenny.min, kenny.max) == (2, 10.0, 20.0)
    with pytest.raises(MetricTypeError):
        collector.get_histogram_stats("kyle_ingest_rate")


def test_stats_memory_does_not_grow_with_observations() -> None:
    """Memory held by a collector with a full window is the same after 1,000 and 100,000 observations.

    Measured in a fresh interpreter: in this one, threads other tests left running (servers, sweepers,
    tickers) allocate while it measures, and must not decide the verdict.
    """
    script = textwrap.dedent(
        """
        import gc, tracemalloc
        from ark_obs.metrics import MetricsCollector

        class Clock:
            t = 1_700_000_000.0
            def __call__(self):
                return self.t

        def held(n):
            clock = Clock()
            gc.collect()
            tracemalloc.start()
            c = MetricsCollector(ticker=False, clock=clock, retention_seconds=600, slice_seconds=10)
            h = c.metric("ark_pass_latency_ms")
            for i in range(62):  # fill every slot of the ring
                for j in range(n // 62):
                    h.observe(float((i * j) % 900))
                clock.t += 10
                c.tick()
            gc.collect()
            size = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            assert c.get_histogram_stats("ark_pass_latency_ms", window_seconds=600).count > 0
            return size

        print(held(1_000), held(100_000))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    small, large = map(int, out.stdout.split())
    assert small > 0 and large < small * 1.1, (small, large)


def test_drops_are_counted_even_when_every_other_metric_is_capped() -> None:
    """ark_obs_dropped_total is never capped itself: counting a drop never recurses or raises."""
    c = MetricsCollector(ticker=False, max_series=1)
    for name in ("kyle_ingest_rate", "joey_pattern_confidence_avg", "kenny_exec_success_rate"):
        c.set_gauge(name, math.nan)
    assert sample(c, "ark_obs_dropped_total", metric="kenny_exec_success_rate", reason="non_finite") == 1.0


def test_non_string_label_values_never_share_a_cached_series(collector: MetricsCollector) -> None:
    """1, 1.0 and True are equal dict keys but different label values: each lands on its own series."""
    for value in (1, True, "1"):
        collector.inc_counter("agent_heartbeat_failures_total", labels={"agent": value})
    assert sample(collector, "agent_heartbeat_failures_total", agent="1") == 2.0
    assert sample(collector, "agent_heartbeat_failures_total", agent="True") == 1.0


def test_negative_infinity_is_bad_data_not_a_decrement(collector: MetricsCollector) -> None:
    """-inf is dropped as non-finite, not as a negative amount."""
    collector.inc_counter("graveyard_validations_total", -math.inf)
    assert sample(collector, "ark_obs_dropped_total", metric="graveyard_validations_total", reason="non_finite") == 1.0


def test_a_window_starting_inside_the_slice_of_its_only_observations_is_empty() -> None:
    """One observation in the slice [0 s, 10 s); at 18 s, a 12 s window starts at 6 s, inside that slice: the
    interpolated share (0.4 events) rounds to none, so the answer is the empty shape, no value from a fraction."""
    clock = Clock()
    c = MetricsCollector(clock=clock, ticker=False)
    c.tick()
    clock.advance(1)
    c.observe_histogram("ark_pass_latency_ms", 50.0)
    clock.advance(9)
    c.tick()
    clock.advance(8)
    c.tick()
    inside = c.increase("ark_pass_latency_ms", 12)
    assert inside is not None and 0 < sum(inside[0][:-1]) < 0.5  # a fraction of an event, not nothing
    assert c.get_histogram_stats("ark_pass_latency_ms", window_seconds=12).as_dict() == {
        "count": 0, "sum": 0.0, "avg": None, "p50": None, "p95": None, "p99": None,
        "min": None, "max": None, "window_seconds": 12, "lower_bounds": [],
    }  # fmt: skip
    assert c.get_histogram_stats("ark_pass_latency_ms", window_seconds=18).count == 1  # the whole slice: counted
