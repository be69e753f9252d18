"""Trace continuity: one behaviour suite run against the memory and the Redis store, plus Redis-only cases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from ark_obs import metrics
from ark_obs.metrics import MetricsCollector
from ark_obs.traces import (
    DEFAULT_PIPELINE,
    SPAN_METRIC,
    TraceMonitor,
    TraceReport,
    TraceStatus,
    TraceStore,
)
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.redis_store import RedisStore, open_store
from plugins.clock import FakeClock

PIPELINE = list(DEFAULT_PIPELINE)
T0 = 1_700_000_000.0


def sample(collector: MetricsCollector, name: str, **labels: str) -> float:
    """A sample's value in the exposition, 0 when absent."""
    value = collector.registry.prometheus.get_sample_value(name, labels)
    return 0.0 if value is None else value


def dropped(collector: MetricsCollector, reason: str, metric: str = SPAN_METRIC) -> float:
    return sample(collector, "ark_obs_dropped_total", metric=metric, reason=reason)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_monitor(store_factory: Callable[[], TraceStore], clock: FakeClock) -> Iterator[Callable[..., TraceMonitor]]:
    """Sweeping monitors on a fake clock with no background sweep; the test drives ``sweep()``."""
    monitors: list[TraceMonitor] = []

    def make(store: TraceStore | None = None, **kw: Any) -> TraceMonitor:
        collector = MetricsCollector(clock=kw.pop("clock", clock), ticker=False)
        kw.setdefault("sweep", True)
        kw.setdefault("background", False)
        monitor = TraceMonitor(collector, store or store_factory(), **kw)
        collector.traces = monitor
        monitors.append(monitor)
        return monitor

    yield make
    for monitor in monitors:
        monitor.close()


# --- the seed's contract -----------------------------------------------------------------------------
def test_seed_example_runs_unchanged(make_monitor: Callable[..., TraceMonitor]) -> None:
    """The seed's section 3 example: three spans, then validation against the full pipeline."""
    collector = make_monitor().collector
    trace_id = "abc-123"

    collector.record_trace_span(trace_id, "Kyle")
    collector.record_trace_span(trace_id, "Joey")
    collector.record_trace_span(trace_id, "HRM")
    result = collector.validate_trace_continuity(
        trace_id="abc-123", expected_agents=["Kyle", "Joey", "HRM", "Kenny", "Aletheia"]
    )

    assert result["complete"] is False
    assert result["missing_agents"] == ["Kenny", "Aletheia"]
    assert result["agents_seen"] == ["Kyle", "Joey", "HRM"]
    assert isinstance(result["latency_ms"], float)
    assert set(dict(result)) >= {"complete", "missing_agents", "agents_seen", "latency_ms"}
    assert isinstance(result, TraceReport) and result.trace_id == trace_id and result.known

    collector.record_trace_span(trace_id, "Kenny")
    collector.record_trace_span(trace_id, "Aletheia")
    result = collector.validate_trace_continuity(trace_id="abc-123", expected_agents=PIPELINE)
    assert result["complete"] is True
    assert result["missing_agents"] == []
    assert result["agents_seen"] == PIPELINE


def test_module_level_record_trace_uses_the_default_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """``record_trace(trace_id, agent)`` records on ``get_collector()``'s trace monitor."""
    collector = MetricsCollector(ticker=False)
    monkeypatch.setattr(metrics, "_default", collector)
    for agent in PIPELINE:
        metrics.record_trace("t-module", agent)
    report = metrics.get_collector().validate_trace_continuity("t-module")
    assert report.complete and report.status is TraceStatus.COMPLETE
    assert sample(collector, "ark_traces_complete_total") == 1
    collector.traces.close()


# --- continuity -----------------------------------------------------------------------------------------
def test_complete_trace_is_counted_once_with_latency_and_exemplar(
    make_monitor: Callable[..., TraceMonitor],
) -> None:
    """Completion counts the trace, observes first start to last end in ms, with the trace id as exemplar."""
    monitor = make_monitor()
    for i, agent in enumerate(PIPELINE):
        monitor.record_span("t-1", agent, at=T0 + i * 0.05, duration_ms=20)
    monitor.flush()
    c = monitor.collector
    assert sample(c, "ark_traces_complete_total") == 1
    assert sample(c, "ark_trace_latency_ms_count") == 1
    assert sample(c, "ark_trace_latency_ms_sum") == pytest.approx(220.0)
    exposition = openmetrics_latest(c.registry.prometheus).decode()
    assert '# {trace_id="t-1"} 220.0' in exposition
    report = monitor.validate("t-1")
    assert report.status is TraceStatus.COMPLETE and report.complete
    assert report.latency_ms == pytest.approx(220.0)
    assert monitor.in_flight() == 0


def test_agents_seen_follow_span_start_and_out_of_order_is_reported(
    make_monitor: Callable[..., TraceMonitor],
) -> None:
    """agents_seen is in start order; an agent seen before one that precedes it in the pipeline is out of order."""
    monitor = make_monitor()
    # arrival order differs from start order: start order wins
    monitor.record_span("a", "Kyle", at=T0)
    monitor.record_span("a", "HRM", at=T0 + 2)
    monitor.record_span("a", "Joey", at=T0 + 1)
    report = monitor.validate("a")
    assert report.agents_seen == ("Kyle", "Joey", "HRM") and report.out_of_order == ()
    # HRM really ran before Joey
    monitor.record_span("b", "Kyle", at=T0)
    monitor.record_span("b", "HRM", at=T0 + 1)
    monitor.record_span("b", "Joey", at=T0 + 2)
    report = monitor.validate("b")
    assert report.agents_seen == ("Kyle", "HRM", "Joey")
    assert report.out_of_order == ("HRM",)
    assert report.missing_agents == ("Kenny", "Aletheia")
    assert report.latency_ms == pytest.approx(2000.0)


def test_repeated_and_failed_spans(make_monitor: Callable[..., TraceMonitor]) -> None:
    """A retried agent appears once with its span widened; a failed span is listed in failed_agents."""
    monitor = make_monitor()
    monitor.record_span("r", "Kyle", at=T0 + 1, duration_ms=100)
    monitor.record_span("r", "Kyle", at=T0, duration_ms=50, ok=False)
    monitor.record_span("r", "Joey", at=T0 + 2)
    report = monitor.validate("r")
    assert report.agents_seen == ("Kyle", "Joey")
    assert report.span_count == 3
    assert report.failed_agents == ("Kyle",)
    kyle = report.spans[0]
    assert (kyle.start, kyle.end, kyle.ok) == (T0, pytest.approx(T0 + 1.1), False)


def test_unknown_trace_is_reported_unknown_never_complete(make_monitor: Callable[..., TraceMonitor]) -> None:
    """An unknown trace is not an exception and never complete, even with no expected agents."""
    monitor = make_monitor()
    report = monitor.validate("never-seen")
    assert report.status is TraceStatus.UNKNOWN and not report.known
    assert report["known"] is False
    assert report.complete is False and report.latency_ms is None
    assert report.missing_agents == tuple(PIPELINE) and report.agents_seen == ()
    assert monitor.validate("never-seen", expected_agents=[]).complete is False


def test_custom_expected_agents_and_pipeline(make_monitor: Callable[..., TraceMonitor]) -> None:
    """validate() checks any expected list; completion (and accounting) follows the monitor's pipeline."""
    monitor = make_monitor(pipeline=["Kyle", "Joey"])
    monitor.record_span("p", "Kyle")
    assert monitor.validate("p", ["Kyle"]).complete
    assert not monitor.validate("p").complete
    monitor.record_span("p", "Joey")
    monitor.flush()
    assert monitor.validate("p").status is TraceStatus.COMPLETE
    assert sample(monitor.collector, "ark_traces_complete_total") == 1


# --- bounds: TTL, late spans, capacity ----------------------------------------------------------------
def test_idle_trace_expires_incomplete_under_its_first_missing_agent(
    make_monitor: Callable[..., TraceMonitor], clock: FakeClock
) -> None:
    """After ttl_seconds without a span a trace is finalized incomplete, counted by its first missing agent."""
    monitor = make_monitor(ttl_seconds=300)
    monitor.record_span("stuck", "Kyle")
    monitor.record_span("stuck", "Joey")
    clock.advance(299)
    monitor.sweep()
    assert monitor.validate("stuck").status is TraceStatus.STALLED
    assert monitor.in_flight() == 1
    clock.advance(2)
    monitor.sweep()
    c = monitor.collector
    assert sample(c, "ark_traces_incomplete_total", missing_agent="HRM") == 1
    assert sample(c, "ark_traces_complete_total") == 0
    report = monitor.validate("stuck")
    assert report.status is TraceStatus.INCOMPLETE and report.known and not report.complete
    assert [r.trace_id for r in monitor.recent_incomplete(10)] == ["stuck"]
    assert monitor.recent_incomplete(10)[0].missing_agents == ("HRM", "Kenny", "Aletheia")
    assert monitor.in_flight() == 0
    monitor.sweep()  # counted once
    assert sample(c, "ark_traces_incomplete_total", missing_agent="HRM") == 1


def test_each_span_renews_the_idle_ttl(make_monitor: Callable[..., TraceMonitor], clock: FakeClock) -> None:
    """The TTL counts from the last span, not the first."""
    monitor = make_monitor(ttl_seconds=300)
    monitor.record_span("slow", "Kyle")
    clock.advance(200)
    monitor.record_span("slow", "Joey")
    clock.advance(150)
    monitor.sweep()
    assert monitor.validate("slow").status is TraceStatus.STALLED
    clock.advance(151)
    monitor.sweep()
    assert monitor.validate("slow").status is TraceStatus.INCOMPLETE


def test_a_trace_that_keeps_getting_spans_outlives_twice_its_ttl(
    store_factory: Callable[[], TraceStore],
) -> None:
    """Real time: spans every ttl/3 for 3 x ttl keep the trace in flight and complete (Redis renews key expiry)."""
    monitor = TraceMonitor(MetricsCollector(ticker=False), store_factory(), ttl_seconds=0.3, sweep=True)
    try:
        agents = iter(PIPELINE)
        monitor.record_span("long", next(agents))
        for _ in range(9):
            time.sleep(0.1)
            monitor.record_span("long", "Kyle")  # a retry renews the idle TTL
        report = monitor.validate("long")
        assert report.status is TraceStatus.IN_FLIGHT
        assert report.span_count == 10 and report.latency_ms is not None and report.latency_ms >= 850
        for agent in agents:
            monitor.record_span("long", agent)
        assert monitor.validate("long").complete
        monitor.flush()
        assert sample(monitor.collector, "ark_traces_evicted_total", reason="lost") == 0
    finally:
        monitor.close()


def test_late_spans_are_counted_and_change_nothing(make_monitor: Callable[..., TraceMonitor], clock: FakeClock) -> None:
    """A span for a finalized trace (complete or expired) counts as late and leaves the trace as it was."""
    monitor = make_monitor(ttl_seconds=60)
    for agent in PIPELINE:
        monitor.record_span("done", agent)
    before = monitor.validate("done")
    clock.advance(5)
    monitor.record_span("done", "Aletheia")
    monitor.record_span("done", "Watchdog")
    after = monitor.validate("done")
    assert after.agents_seen == before.agents_seen and after.latency_ms == before.latency_ms
    monitor.record_span("gone", "Kyle")
    clock.advance(61)
    monitor.sweep()
    monitor.record_span("gone", "Joey")
    monitor.flush()
    c = monitor.collector
    assert sample(c, "ark_trace_late_spans_total") == 3
    assert sample(c, "ark_traces_complete_total") == 1
    assert monitor.validate("gone").agents_seen == ("Kyle",)
    assert monitor.in_flight() == 0


def test_spans_after_completion_in_one_batch_are_late(make_monitor: Callable[..., TraceMonitor]) -> None:
    """Spans recorded after the completing span count as late even when they are written together."""
    monitor = make_monitor()
    for agent in [*PIPELINE, "Aletheia", "Watchdog"]:
        monitor.record_span("batch", agent)
    monitor.flush()
    assert sample(monitor.collector, "ark_trace_late_spans_total") == 2
    assert monitor.validate("batch").agents_seen == tuple(PIPELINE)


def test_settings_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor made without settings (an agent's default) takes ARK_OBS_PIPELINE, TTL and capacity from the env."""
    monkeypatch.setenv("ARK_OBS_PIPELINE", "Kyle, HRM")
    monkeypatch.setenv("ARK_OBS_TRACE_TTL_SECONDS", "42")
    monkeypatch.setenv("ARK_OBS_MAX_IN_FLIGHT_TRACES", "not-a-number")
    monitor = TraceMonitor(MetricsCollector(ticker=False), "memory", background=False)
    try:
        assert monitor.pipeline == ("Kyle", "HRM")
        assert monitor.settings.ttl_seconds == 42
        assert monitor.settings.max_in_flight == 100_000  # a bad value is logged, never raised into an agent
    finally:
        monitor.close()


def test_capacity_evicts_least_recently_touched_in_flight_traces(
    make_monitor: Callable[..., TraceMonitor], store_factory: Callable[..., TraceStore], backend: str, clock: FakeClock
) -> None:
    """At most max_in_flight traces are in flight; the least recently touched is evicted and counted.

    On a cluster the order is kept per shard (test_store_cluster checks the sharded bound), so this runs
    on a one-shard cluster store."""
    monitor = make_monitor(store_factory(shards=1) if backend == "cluster" else None, max_in_flight=3)
    for i in range(3):
        monitor.record_span(f"t{i}", "Kyle")
        clock.advance(1)
    monitor.record_span("t0", "Joey")  # t0 is now the most recent
    clock.advance(1)
    monitor.record_span("t3", "Kyle")
    monitor.flush()
    assert sample(monitor.collector, "ark_traces_evicted_total", reason="capacity") == 1
    assert monitor.in_flight() == 3
    assert monitor.validate("t1").status is TraceStatus.UNKNOWN
    assert monitor.validate("t0").status is TraceStatus.IN_FLIGHT


# --- stalled and failed traces ---------------------------------------------------------------------------
def stalled_gauge(monitor: TraceMonitor) -> dict[str, float]:
    """``ark_traces_stalled`` by waiting_on, as a scrape sees it."""
    return {agent: sample(monitor.collector, "ark_traces_stalled", waiting_on=agent) for agent in PIPELINE}


def test_stalled_traces_are_counted_by_the_agent_they_wait_on(
    make_monitor: Callable[..., TraceMonitor], clock: FakeClock
) -> None:
    """A trace without a span for stall_seconds is stalled at its first missing pipeline agent: counted at
    scrape time, listed newest first with how long it waited; a span makes it fresh again, completion and
    expiry take it out."""
    monitor = make_monitor(stall_seconds=6, ttl_seconds=300)
    for trace_id, agents in (("a", PIPELINE[:2]), ("b", PIPELINE[:3]), ("c", [*PIPELINE[:3], "Aletheia"])):
        for agent in agents:
            monitor.record_span(trace_id, agent)
        clock.advance(0.5)
    clock.advance(4)
    monitor.record_span("d", "Kyle")
    clock.advance(1.5)  # a, b, c idle 7, 6.5 and 6 s: stalled; d idle 1.5 s: not
    monitor.flush()
    assert stalled_gauge(monitor) == {"Kyle": 0, "Joey": 0, "HRM": 1, "Kenny": 2, "Aletheia": 0}
    listed = monitor.recent_stalled(10)
    assert [(r.trace_id, r.waiting_on, r.waited_seconds) for r in listed] == [
        ("c", "Kenny", pytest.approx(6.0)), ("b", "Kenny", pytest.approx(6.5)), ("a", "HRM", pytest.approx(7.0))
    ]  # fmt: skip
    assert all(r.status is TraceStatus.STALLED for r in listed)
    assert [r.trace_id for r in monitor.recent_stalled(1)] == ["c"]
    report = monitor.validate("d")
    assert (report.status, report.waiting_on, report.waited_seconds) == (TraceStatus.IN_FLIGHT, "Joey", 1.5)

    monitor.record_span("a", "HRM")  # fresh again, now waiting on Kenny
    monitor.record_span("b", "Kenny")
    monitor.record_span("b", "Aletheia")  # complete
    monitor.flush()
    assert stalled_gauge(monitor) == {"Kyle": 0, "Joey": 0, "HRM": 0, "Kenny": 1, "Aletheia": 0}
    assert monitor.validate("a").status is TraceStatus.IN_FLIGHT
    clock.advance(6)
    assert stalled_gauge(monitor)["Kenny"] == 2 and stalled_gauge(monitor)["Joey"] == 1
    clock.advance(300)
    monitor.sweep()
    assert stalled_gauge(monitor) == dict.fromkeys(PIPELINE, 0)
    assert monitor.recent_stalled(10) == [] and monitor.in_flight() == 0
    assert sum(sample(monitor.collector, "ark_traces_incomplete_total", missing_agent=a) for a in PIPELINE) == 3


def test_evicted_stalled_traces_leave_the_count(
    make_monitor: Callable[..., TraceMonitor], store_factory: Callable[..., TraceStore], backend: str, clock: FakeClock
) -> None:
    """A stalled trace evicted for capacity is no longer counted stalled (one-shard cluster: eviction order)."""
    monitor = make_monitor(store_factory(shards=1) if backend == "cluster" else None, max_in_flight=2, stall_seconds=1)
    for trace_id in ("t0", "t1"):
        monitor.record_span(trace_id, "Kyle")
    clock.advance(2)
    monitor.flush()
    assert stalled_gauge(monitor)["Joey"] == 2
    monitor.record_span("t2", "Kyle")
    monitor.flush()
    assert stalled_gauge(monitor)["Joey"] == 1 and monitor.in_flight() == 2


def test_failed_traces_are_complete_and_failed_at_their_agent(
    make_monitor: Callable[..., TraceMonitor], clock: FakeClock
) -> None:
    """Every agent seen, one failed: complete for continuity, status failed at that agent, counted in both
    ark_traces_complete_total and ark_traces_failed_total{agent}, and listed; agents outside the pipeline
    are counted as 'other'. A trace still missing agents is not failed yet."""
    monitor = make_monitor()
    for agent in PIPELINE:
        monitor.record_span("f", agent, ok=agent != "Kenny")
    clock.advance(1)
    for agent in ("Watchdog", *PIPELINE):
        monitor.record_span("w", agent, ok=agent != "Watchdog")
    monitor.record_span("open", "Kyle", ok=False)
    monitor.flush()
    report = monitor.validate("f")
    assert report.complete and report.status is TraceStatus.FAILED and report.failed_at == "Kenny"
    assert report["status"] == "failed" and report.known
    assert monitor.validate("open").status is TraceStatus.IN_FLIGHT and monitor.validate("open").failed_at is None
    c = monitor.collector
    assert sample(c, "ark_traces_complete_total") == 2
    assert sample(c, "ark_traces_failed_total", agent="Kenny") == 1
    assert sample(c, "ark_traces_failed_total", agent="other") == 1
    assert [(r.trace_id, r.failed_at) for r in monitor.recent_failed(10)] == [("w", "Watchdog"), ("f", "Kenny")]


def test_status_never_contradicts_complete_with_expected_agents(make_monitor: Callable[..., TraceMonitor]) -> None:
    """Judged against ?expected=: all seen is complete whatever the pipeline says, a finalized trace
    missing an expected agent is incomplete, an open one in flight."""
    monitor = make_monitor()
    monitor.record_span("x", "Kyle")
    monitor.record_span("x", "Joey")
    report = monitor.validate("x", ["Kyle", "Joey"])
    assert (report.status, report.complete) == (TraceStatus.COMPLETE, True)
    assert monitor.validate("x", ["Kyle", "HRM"]).status is TraceStatus.IN_FLIGHT
    for agent in PIPELINE[2:]:
        monitor.record_span("x", agent)
    monitor.flush()
    report = monitor.validate("x", [*PIPELINE, "Extra"])
    assert (report.status, report.complete, report.missing_agents) == (TraceStatus.INCOMPLETE, False, ("Extra",))


def test_finished_traces_stay_answerable_for_the_history_then_the_answer_says_why(
    make_monitor: Callable[..., TraceMonitor], store_factory: Callable[..., TraceStore], backend: str, clock: FakeClock
) -> None:
    """history_seconds keeps finished traces (complete and expired) answerable past the TTL, at most
    max_in_flight of them (one-shard cluster: one cap); past that they are unknown, and forgotten_why
    says what is kept and how far back it reaches."""
    store = store_factory(shards=1) if backend == "cluster" else None
    monitor = make_monitor(store, ttl_seconds=300, history_seconds=3600, max_in_flight=3)
    for agent in PIPELINE:
        monitor.record_span("old", agent)
    monitor.record_span("stuck", "Kyle")
    monitor.flush()
    clock.advance(301)
    monitor.sweep()  # "stuck" expires incomplete
    clock.advance(3000)
    monitor.sweep()
    assert monitor.validate("old").status is TraceStatus.COMPLETE
    assert monitor.validate("stuck").status is TraceStatus.INCOMPLETE
    for i in range(3):  # three more finished traces: the oldest finished one ("old") goes first
        for agent in PIPELINE:
            monitor.record_span(f"new{i}", agent)
        monitor.flush()
    monitor.sweep()
    assert monitor.validate("old").status is TraceStatus.UNKNOWN
    assert monitor.validate("new0").status is TraceStatus.COMPLETE
    clock.advance(3601)
    monitor.sweep()
    assert monitor.validate("new2").status is TraceStatus.UNKNOWN
    why = monitor.forgotten_why("new2")
    assert "ARK_OBS_TRACE_HISTORY_SECONDS=3600 s, at most 3 traces" in why and "none is held now" in why


def test_expiry_runs_in_the_background(store_factory: Callable[[], TraceStore]) -> None:
    """With the real clock the background sweep finalizes idle traces and forgets finalized ones after the TTL."""
    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, store_factory(), ttl_seconds=0.3, sweep=True, sweep_interval=0.05)
    try:
        monitor.record_span("bg", "Kyle")
        for agent in PIPELINE:
            monitor.record_span("bg-done", agent)
        deadline = time.monotonic() + 5
        while sample(collector, "ark_traces_incomplete_total", missing_agent="Joey") < 1:
            assert time.monotonic() < deadline, "the background sweep did not expire the trace"
            time.sleep(0.02)
        assert sample(collector, "ark_traces_complete_total") == 1
        while monitor.validate("bg-done").status is not TraceStatus.UNKNOWN:
            assert time.monotonic() < deadline, "a finalized trace was kept past its TTL"
            time.sleep(0.02)
    finally:
        monitor.close()


# --- bad data and scrape-time state -------------------------------------------------------------------
def test_bad_span_data_is_dropped_or_raises_for_programming_errors(
    make_monitor: Callable[..., TraceMonitor],
) -> None:
    """Non-finite times and over-long ids are dropped and counted; wrong types and negative durations raise."""
    monitor = make_monitor()
    c = monitor.collector
    monitor.record_span("nan", "Kyle", at=float("nan"))
    monitor.record_span("inf", "Kyle", duration_ms=float("inf"))
    monitor.record_span("x" * 200, "Kyle")
    assert dropped(c, "non_finite") == 2
    assert dropped(c, "label_too_long") == 1
    assert monitor.validate("nan").status is TraceStatus.UNKNOWN
    with pytest.raises(TypeError):
        monitor.record_span(None, "Kyle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        monitor.record_span("neg", "Kyle", duration_ms=-1)


def test_in_flight_gauge_is_read_at_scrape_time(make_monitor: Callable[..., TraceMonitor]) -> None:
    """ark_traces_in_flight counts traces not finalized yet."""
    monitor = make_monitor()
    monitor.record_span("one", "Kyle")
    monitor.record_span("two", "Kyle")
    for agent in PIPELINE:
        monitor.record_span("three", agent)
    monitor.flush()
    assert "ark_traces_in_flight 2.0" in monitor.collector.export_prometheus()


def test_recorder_monitor_on_shared_store_does_no_accounting(redis_url: str) -> None:
    """On a shared store a monitor is a recorder unless told to sweep: no scrape-time families, no sweeps."""
    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, redis_url)
    try:
        assert not monitor.sweeping
        monitor.record_span("rec", "Kyle")
        assert monitor.validate("rec").agents_seen == ("Kyle",)
        assert "ark_traces_in_flight" not in collector.export_prometheus()
    finally:
        monitor.close()


# --- Redis: sharing, outages, keys --------------------------------------------------------------------
def test_replicas_count_every_outcome_once(redis_url: str, clock: FakeClock) -> None:
    """Two sweeping monitors on one Redis: each completion and expiry is counted by exactly one of them."""
    collectors = [MetricsCollector(clock=clock, ticker=False) for _ in range(2)]
    stores = [RedisStore.from_url(redis_url) for _ in range(2)]
    monitors = [
        TraceMonitor(c, s, ttl_seconds=60, sweep=True, background=False)
        for c, s in zip(collectors, stores, strict=True)
    ]
    try:
        for i in range(20):
            recorder = monitors[i % 2]
            for agent in PIPELINE if i % 4 else PIPELINE[:2]:
                recorder.record_span(f"r{i}", agent)
        for m in monitors:
            m.store.flush()
        clock.advance(61)
        for m in monitors:
            m.sweep()
            m.flush()
        complete = sum(sample(c, "ark_traces_complete_total") for c in collectors)
        incomplete = sum(sample(c, "ark_traces_incomplete_total", missing_agent="HRM") for c in collectors)
        assert (complete, incomplete) == (15, 5)
    finally:
        for m in monitors:
            m.close()
        for s in stores:
            s.close()


SUBPROCESS_RECORDER = textwrap.dedent(
    """
    import sys
    from ark_obs.metrics import record_trace
    for agent in sys.argv[2:]:
        record_trace(sys.argv[1], agent)
    # no flush: spans buffered at exit are still written
    """
)


def test_spans_from_another_process_are_shared_through_redis(redis_url: str) -> None:
    """Agents in another process (ARK_OBS_TRACE_STORE=redis://...) record spans this process validates.

    The recorder exits right after its last span: buffered spans are flushed at exit.
    """
    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, RedisStore.from_url(redis_url), sweep=True, background=False)
    env = {**os.environ, "ARK_OBS_TRACE_STORE": redis_url}
    try:
        monitor.record_span("shared", "Kyle")
        subprocess.run(
            [sys.executable, "-c", SUBPROCESS_RECORDER, "shared", *PIPELINE[1:]], env=env, check=True, timeout=30
        )
        report = monitor.validate("shared")
        assert report.complete and report.agents_seen == tuple(PIPELINE)
        monitor.flush()
        assert sample(collector, "ark_traces_complete_total") == 1
    finally:
        monitor.close()
        monitor.store.close()


def test_redis_writes_are_visible_to_other_readers_within_a_second(redis_url: str) -> None:
    """Batched writes reach Redis without an explicit flush well within a second."""
    writer = RedisStore.from_url(redis_url)
    reader = RedisStore.from_url(redis_url)
    try:
        writer.add("vis", "Kyle", T0, T0, True, T0)
        started = time.monotonic()
        while reader.get("vis") is None:
            assert time.monotonic() - started < 1.0
            time.sleep(0.01)
    finally:
        writer.close()
        reader.close()


def test_every_redis_key_has_a_ttl(redis_url: str, clock: FakeClock, redis_server: Any) -> None:
    """Nothing the store writes lives forever: every key has an expiry."""
    collector = MetricsCollector(clock=clock, ticker=False)
    store = RedisStore.from_url(redis_url)
    monitor = TraceMonitor(collector, store, ttl_seconds=60, max_in_flight=5, sweep=True, background=False)
    try:
        for i in range(10):
            for agent in PIPELINE[: 1 + i % 5]:
                monitor.record_span(f"k{i}", agent)
        store.beat("Kyle", clock())
        monitor.record_span("k4", "Kyle")  # late
        store.flush()
        clock.advance(61)
        monitor.sweep()
        store.claim_outage("Kyle", clock())
        client = redis_server.client()
        keys = client.keys("*")
        assert len(keys) > 5
        assert {k: client.pttl(k) for k in keys if client.pttl(k) < 0} == {}
        client.close()
    finally:
        monitor.close()
        store.close()


def test_redis_outage_never_blocks_or_raises_and_is_reported(redis_server: Any, redis_url: str) -> None:
    """Stopping Redis mid-run: spans are dropped and counted, nothing blocks, the store reports unhealthy."""
    collector = MetricsCollector(ticker=False)
    store = RedisStore.from_url(redis_url, timeout=0.2, retry_seconds=0.2)
    monitor = TraceMonitor(collector, store, sweep=True, sweep_interval=0.1)
    try:
        monitor.record_span("before", "Kyle")
        assert monitor.validate("before").agents_seen == ("Kyle",)
        assert monitor.healthy()
        redis_server.stop()
        slowest = 0.0
        deadline = time.monotonic() + 5
        i = 0
        while monitor.healthy():
            assert time.monotonic() < deadline, "the store did not notice the outage"
            started = time.perf_counter()
            monitor.record_span(f"during-{i}", "Kyle")
            slowest = max(slowest, time.perf_counter() - started)
            i += 1
            time.sleep(0.001)
        for j in range(100):
            started = time.perf_counter()
            monitor.record_span(f"after-{j}", "Kyle")
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.05, f"recording blocked for {slowest * 1000:.1f} ms"
        assert dropped(collector, "store_unavailable") >= 100
        health = monitor.check()
        assert not health.healthy and health.backend == "redis" and "unavailable" in health.detail
        started = time.perf_counter()
        report = monitor.validate("before")
        text = collector.export_prometheus()
        assert time.perf_counter() - started < 0.5
        assert report.status is TraceStatus.UNAVAILABLE and not report.complete
        assert "ark_traces_in_flight " not in text  # left out of the scrape, the scrape still works
        assert monitor.recent_incomplete() == []
    finally:
        redis_server.start()
    try:
        deadline = time.monotonic() + 5
        while not monitor.healthy():
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.05)
        monitor.record_span("recovered", "Kyle")
        assert monitor.validate("recovered").agents_seen == ("Kyle",)
    finally:
        monitor.close()
        store.close()


def test_stream_depths_are_read_at_scrape_time(redis_url: str, redis_server: Any) -> None:
    """redis_stream_depth{stream} is XLEN at scrape time; agent-set values for other streams stay exported once."""
    client = redis_server.client()
    for i in range(3):
        client.xadd("ark:signals", {"i": i})
    client.close()
    collector = MetricsCollector(ticker=False)
    collector.set_gauge("redis_stream_depth", 7, {"stream": "elsewhere"})
    monitor = TraceMonitor(collector, redis_url, sweep=True, background=False, streams=["ark:signals", "ark:none"])
    try:
        text = collector.export_prometheus()
        assert 'redis_stream_depth{stream="ark:signals"} 3.0' in text
        assert 'redis_stream_depth{stream="ark:none"} 0.0' in text
        assert 'redis_stream_depth{stream="elsewhere"} 7.0' in text
        assert text.count("# TYPE redis_stream_depth gauge") == 1
    finally:
        monitor.close()
    text = collector.export_prometheus()  # closed: the agents' gauge is exported by the registry again
    assert 'redis_stream_depth{stream="elsewhere"} 7.0' in text and 'stream="ark:signals"' not in text


def test_unreachable_stream_redis_leaves_the_gauge_out(redis_url: str) -> None:
    """When the streams' Redis cannot be reached the scrape succeeds quickly without the watched streams."""
    from plugins.redis_server import free_port

    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(
        collector,
        MemoryStore(),
        sweep=True,
        background=False,
        streams=["ark:signals"],
        streams_url=f"redis://127.0.0.1:{free_port()}/0",
        stream_timeout=0.2,
    )
    try:
        started = time.perf_counter()
        text = collector.export_prometheus()
        assert time.perf_counter() - started < 1.0
        assert 'stream="ark:signals"' not in text
        assert "ark_traces_in_flight 0.0" in text
    finally:
        monitor.close()


def test_open_store_parses_store_urls(redis_url: str) -> None:
    """``memory`` and ``redis://host:port/db`` open the two backends; anything else is a configuration error."""
    assert isinstance(open_store("memory"), MemoryStore)
    store = open_store(redis_url, timeout=0.1, prefix="x:")
    try:
        assert isinstance(store, RedisStore) and store.prefix == "x:"
        kwargs = store.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.1 and kwargs["db"] == 0
    finally:
        store.close()
    with pytest.raises(ValueError, match="unknown trace store"):
        open_store("postgres://nope")
    monitor = TraceMonitor(MetricsCollector(ticker=False), redis_url, store_timeout=0.05, background=False)
    try:
        assert monitor.store.client.connection_pool.connection_kwargs["socket_timeout"] == 0.05  # type: ignore[attr-defined]
    finally:
        monitor.close()
