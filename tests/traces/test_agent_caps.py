"""Made-up agent names cannot lock the pipeline (or the known agents) out: the per-trace agent cap counts
only agents outside ``ARK_OBS_PIPELINE``, in every store, and the heartbeat cap admits the known agents."""

from __future__ import annotations

import pytest

from ark_obs.metrics import MetricsCollector
from ark_obs.traces import DEFAULT_PIPELINE, TraceMonitor, TraceState
from ark_obs.traces.heartbeats import HeartbeatMonitor
from ark_obs.traces.memory import MemoryStore


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The embedded store, a real redis-server, a real Redis Cluster (its Lua)."""
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url"))


@pytest.mark.parametrize("batched", [False, True])
def test_made_up_agents_filling_the_cap_do_not_keep_the_pipeline_out(store_url: str, batched: bool) -> None:
    """32 made-up agents fill a trace's cap; the five pipeline agents are still admitted and complete it;
    a 33rd made-up agent is refused (trace_full)."""
    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, store_url, pipeline=DEFAULT_PIPELINE, max_agents_per_trace=32, sweep=False)
    trace = "ab" * 16
    try:
        made_up = [f"fake{i}" for i in range(33)]
        for agent in [*made_up, *DEFAULT_PIPELINE]:
            monitor.record_span(trace, agent)
            if not batched:  # else one flush: one batch (one Lua call per shard), as POST /spans sends it
                monitor.store.flush()
        monitor.store.flush()
        record = monitor.store.get(trace)
    finally:
        monitor.close()
    assert record is not None and record.state is TraceState.COMPLETE
    agents = {s.agent for s in record.spans}
    assert set(DEFAULT_PIPELINE) <= agents and len(agents) == 32 + 5 and "fake32" not in agents
    value = collector.registry.prometheus.get_sample_value(
        "ark_obs_dropped_total", {"metric": "trace_span", "reason": "trace_full"}
    )
    assert value == 1


def test_known_agents_are_admitted_past_the_heartbeat_cap_and_never_forgotten() -> None:
    """The heartbeat cap full of made-up names: the Watchdog (a known agent) still beats, and it stays
    reported (down) after the forget time, while made-up names are forgotten."""
    from plugins.clock import FakeClock

    clock = FakeClock()
    collector = MetricsCollector(ticker=False, clock=clock)
    monitor = HeartbeatMonitor(
        collector,
        1.0,
        store=MemoryStore(),
        pipeline=("Kyle",),
        known=("Watchdog",),
        max_agents=3,
        forget_after_seconds=60,
        background=False,
    )
    try:
        for i in range(5):
            monitor.beat(f"ghost{i}")
        monitor.beat("Watchdog")
        monitor.sweep()
        assert {s.agent for s in monitor.status() or ()} == {"ghost0", "ghost1", "ghost2", "Watchdog"}
        clock.advance(120)
        monitor.sweep()
        assert {s.agent for s in monitor.status() or ()} == {"Watchdog"}
        assert monitor.is_up("Watchdog") is False
    finally:
        monitor.close()
