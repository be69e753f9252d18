"""Heartbeats: outages detected by the monitor within two intervals, counted once, recovered on resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from ark_obs.metrics import MetricsCollector
from ark_obs.traces.heartbeats import HEARTBEAT_METRIC, HeartbeatMonitor, HeartbeatStore
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.redis_store import RedisStore
from plugins.clock import FakeClock

T0 = 1_700_000_000.0


def sample(collector: MetricsCollector, name: str, **labels: str) -> float | None:
    return collector.registry.prometheus.get_sample_value(name, labels)


def failures(collector: MetricsCollector, agent: str) -> float:
    return sample(collector, "agent_heartbeat_failures_total", agent=agent) or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def monitor_on(store: HeartbeatStore, clock: FakeClock, **kw: Any) -> HeartbeatMonitor:
    kw.setdefault("sweep", True)
    kw.setdefault("background", False)
    return HeartbeatMonitor(MetricsCollector(clock=clock, ticker=False), 1.0, store=store, **kw)


def beat(monitor: HeartbeatMonitor, agent: str) -> None:
    monitor.beat(agent)
    monitor.store.flush()  # type: ignore[attr-defined]


def test_silent_agent_is_down_within_two_intervals_once_per_outage(
    store_factory: Callable[[], HeartbeatStore], clock: FakeClock
) -> None:
    """Silent for more than 1.5 intervals: down, counted once; beats resume: up; a new outage counts again."""
    monitor = monitor_on(store_factory(), clock)
    c = monitor.collector
    beat(monitor, "Kenny")
    monitor.sweep()
    assert monitor.is_up("Kenny") is True
    clock.advance(1.5)
    monitor.sweep()
    assert monitor.is_up("Kenny") is True  # exactly 1.5 intervals of silence is still up
    clock.advance(0.1)
    monitor.sweep()
    assert monitor.is_up("Kenny") is False
    assert failures(c, "Kenny") == 1
    clock.advance(10)
    monitor.sweep()
    monitor.sweep()
    assert failures(c, "Kenny") == 1  # one outage, one count
    beat(monitor, "Kenny")
    monitor.sweep()
    assert monitor.is_up("Kenny") is True
    clock.advance(2)
    monitor.sweep()
    assert monitor.is_up("Kenny") is False
    assert failures(c, "Kenny") == 2


def test_scrape_exports_last_beat_up_and_interval(
    store_factory: Callable[[], HeartbeatStore], clock: FakeClock
) -> None:
    """Scrape time: last heartbeat timestamp and up per agent, and the expected interval."""
    monitor = monitor_on(store_factory(), clock)
    c = monitor.collector
    beat(monitor, "Kyle")
    clock.advance(1)
    beat(monitor, "Joey")
    clock.advance(0.9)
    assert sample(c, "ark_agent_last_heartbeat_timestamp_seconds", agent="Kyle") == T0
    assert sample(c, "ark_agent_last_heartbeat_timestamp_seconds", agent="Joey") == T0 + 1
    assert sample(c, "ark_agent_up", agent="Kyle") == 0.0  # silent 1.9 s > 1.5 intervals
    assert sample(c, "ark_agent_up", agent="Joey") == 1.0
    assert sample(c, "ark_agent_heartbeat_interval_seconds") == 1.0
    assert failures(c, "Kyle") == 1  # the scrape sweeps too


def test_replicas_count_each_outage_once(redis_url: str, clock: FakeClock) -> None:
    """Two monitors reading one Redis both see the outage; only one counts it."""
    stores = [RedisStore.from_url(redis_url) for _ in range(2)]
    monitors = [monitor_on(s, clock) for s in stores]
    try:
        beat(monitors[0], "HRM")
        clock.advance(3)
        for m in monitors:
            m.sweep()
            assert m.is_up("HRM") is False
        assert sum(failures(m.collector, "HRM") for m in monitors) == 1
    finally:
        for s in stores:
            s.close()


def test_agent_names_are_bounded(clock: FakeClock) -> None:
    """Too many agents or over-long names are dropped and counted; a non-string name raises."""
    monitor = monitor_on(MemoryStore(), clock, max_agents=2)
    c = monitor.collector
    for agent in ("a", "b", "c"):
        monitor.beat(agent)
    monitor.beat("x" * 200)
    assert sample(c, "ark_obs_dropped_total", metric=HEARTBEAT_METRIC, reason="cardinality") == 1
    assert sample(c, "ark_obs_dropped_total", metric=HEARTBEAT_METRIC, reason="label_too_long") == 1
    monitor.sweep()
    assert [s.agent for s in monitor.status() or ()] == ["a", "b"]
    with pytest.raises(TypeError):
        monitor.beat(None)  # type: ignore[arg-type]


def test_long_silent_agents_are_forgotten(clock: FakeClock) -> None:
    """An agent silent for forget_after_seconds is dropped from the exported state."""
    monitor = monitor_on(MemoryStore(), clock, forget_after_seconds=60)
    monitor.beat("old")
    clock.advance(61)
    monitor.sweep()
    assert monitor.status() == []
    assert "ark_agent_up{" not in monitor.collector.export_prometheus()


def test_down_after_must_stay_within_two_intervals() -> None:
    """Detection later than two intervals is refused at construction."""
    with pytest.raises(ValueError, match="down_after_intervals"):
        HeartbeatMonitor(MetricsCollector(ticker=False), store=MemoryStore(), down_after_intervals=2.5)


def test_default_monitor_shares_the_trace_store() -> None:
    """``collector.record_heartbeat`` works out of the box on the trace monitor's store, with a 1 s interval."""
    collector = MetricsCollector(ticker=False)
    collector.record_heartbeat("Aletheia")
    assert collector.heartbeats.store is collector.traces.store
    assert collector.heartbeats.interval == 1.0
    assert sample(collector, "ark_agent_up", agent="Aletheia") == 1.0
    collector.heartbeats.close()
    collector.traces.close()


def test_redis_down_heartbeats_are_dropped_and_up_is_left_out(redis_server: Any, redis_url: str) -> None:
    """With Redis stopped, beat() neither raises nor blocks, drops are counted, and ark_agent_up is left out."""
    store = RedisStore.from_url(redis_url, timeout=0.2, retry_seconds=0.2)
    monitor = HeartbeatMonitor(MetricsCollector(ticker=False), 1.0, store=store, sweep=True, background=False)
    try:
        monitor.beat("Kenny")
        store.flush()
        assert 'ark_agent_up{agent="Kenny"} 1.0' in monitor.collector.export_prometheus()
        redis_server.stop()
        deadline = time.monotonic() + 5
        while store.health().healthy:
            assert time.monotonic() < deadline
            monitor.beat("Kenny")
            store.flush()
        started = time.perf_counter()
        monitor.beat("Kenny")
        text = monitor.collector.export_prometheus()
        assert time.perf_counter() - started < 0.5
        assert (
            sample(monitor.collector, "ark_obs_dropped_total", metric=HEARTBEAT_METRIC, reason="store_unavailable") or 0
        ) >= 1
        assert "ark_agent_up{" not in text
        assert "ark_agent_heartbeat_interval_seconds 1.0" in text
        assert failures(monitor.collector, "Kenny") == 0  # an unreadable store is not an outage
    finally:
        redis_server.start()
        store.close()


AGENT = textwrap.dedent(
    """
    import sys, time
    from ark_obs.metrics import record_heartbeat
    interval = float(sys.argv[1])
    while True:
        record_heartbeat("Kenny")
        time.sleep(interval)
    """
)


def test_killed_agent_process_is_reported_down_within_two_intervals(redis_url: str) -> None:
    """A real agent process heartbeats into Redis, is killed, and the monitor reports it down within 2 intervals."""
    interval = 0.5
    store = RedisStore.from_url(redis_url)
    collector = MetricsCollector(ticker=False)
    monitor = HeartbeatMonitor(collector, interval, store=store, sweep=True)
    env = {**os.environ, "ARK_OBS_TRACE_STORE": redis_url}
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(interval)], env=env)
    try:
        deadline = time.monotonic() + 15
        while monitor.is_up("Kenny") is not True:
            assert agent.poll() is None, "the agent process died"
            assert time.monotonic() < deadline, "no heartbeat from the agent process"
            time.sleep(0.01)
        time.sleep(2 * interval)  # a few beats, and still up
        assert monitor.is_up("Kenny") is True
        assert failures(collector, "Kenny") == 0
        agent.kill()
        killed = time.monotonic()
        agent.wait(5)
        while monitor.is_up("Kenny") is not False:
            assert time.monotonic() - killed < 5 * interval, "the dead agent was never reported down"
            time.sleep(0.005)
        elapsed = time.monotonic() - killed
        assert elapsed <= 2 * interval, f"reported down {elapsed:.3f} s after the kill"
        assert failures(collector, "Kenny") == 1
        assert sample(collector, "ark_agent_up", agent="Kenny") == 0.0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        monitor.close()
        store.close()


def test_agents_that_only_send_spans_are_up_while_their_spans_arrive(
    store_factory: Callable[[], HeartbeatStore], clock: FakeClock
) -> None:
    """A span counts as a beat for an agent that never heartbeats: up while spans arrive, unknown again (not
    down, no outage: traffic may just have paused) once none came for spans_alive_seconds; an agent that
    heartbeats is judged on its beats alone."""
    from ark_obs.traces import TraceMonitor

    collector = MetricsCollector(clock=clock, ticker=False)
    collector.traces = TraceMonitor(collector, store_factory(), sweep=True, background=False)
    monitor = HeartbeatMonitor(collector, 1.0, sweep=True, background=False, spans_alive_seconds=6)
    try:
        for i in range(8):  # a span every second for 8 s: up all along
            collector.traces.record_span(f"t{i}", "Otel")
            collector.traces.record_span(f"t{i}", "Joey")
            if i < 2:
                beat(monitor, "Joey")  # Joey heartbeats, then stops: his spans do not keep him up
            collector.traces.flush()
            clock.advance(1)
            assert monitor.sweep()
            assert monitor.is_up("Otel") is True, i
        assert monitor.is_up("Joey") is False and failures(collector, "Joey") == 1
        clock.advance(5.5)  # 6.5 s since Otel's last span
        monitor.sweep()
        assert monitor.is_up("Otel") is None and failures(collector, "Otel") == 0
        assert sample(collector, "ark_agent_up", agent="Otel") is None
        collector.traces.record_span("again", "Otel")
        collector.traces.flush()
        monitor.sweep()
        assert monitor.is_up("Otel") is True
    finally:
        monitor.close()
        collector.traces.close()
