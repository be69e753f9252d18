"""Agents in several processes: one exposition aggregates every process (real subprocesses)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from plugins.multiprocess import Monitor, run_agent

AGENT = """
import sys
from ark_obs import metrics
n = int(sys.argv[1])
for i in range(n):
    metrics.increment_counter("hrm_denials_total", labels={"rule_id": "max_position_size", "agent": "Kenny"})
    metrics.record_latency("ark_pass_latency_ms", 100.0 + i)
metrics.set_gauge("kyle_ingest_rate", float(n))
"""

STATS = '{"exposition": c.export_prometheus(), "stats": c.get_histogram_stats("ark_pass_latency_ms").as_dict()}'


def test_exposition_aggregates_every_agent_process(tmp_path: Path) -> None:
    """Counters and histograms sum across processes; the gauge keeps the most recent write; no family twice."""
    monitor = Monitor(tmp_path, STATS)
    for n in ("10", "20", "30"):
        run_agent(AGENT, tmp_path, n)
    result = monitor.result()
    families = list(text_string_to_metric_families(result["exposition"]))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family was emitted twice"
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    assert values[("hrm_denials_total", (("agent", "Kenny"), ("rule_id", "max_position_size")))] == 60.0
    assert values[("ark_pass_latency_ms_count", ())] == 60.0
    assert values[("kyle_ingest_rate", ())] == 30.0  # mostrecent: the last process to write
    stats = result["stats"]
    assert stats["count"] == 60
    assert 100.0 <= stats["p50"] <= 130.0
    # min/max are not shared between processes: they are bounded by the non-empty buckets instead
    assert stats["min"] == 75.0 and stats["max"] == 130.0  # 100.0 lies in (75, 100], 129.0 in (120, 130]


def test_a_restarted_monitor_does_not_count_old_files_as_recent(tmp_path: Path) -> None:
    """Totals in the files before the monitor started (dead agents, an earlier run) are a baseline: the
    exposition still shows them, but the windowed stats count only what happened since."""
    run_agent(AGENT, tmp_path, "40")  # before the (re)start
    monitor = Monitor(tmp_path, STATS)
    run_agent(AGENT, tmp_path, "5")
    result = monitor.result()
    assert "ark_pass_latency_ms_count 45.0" in result["exposition"]
    assert result["stats"]["count"] == 5


STREAM_WATCHER = """
from prometheus_client.core import GaugeMetricFamily

class Streams:  # what the trace monitor serves when Redis streams are watched
    def describe(self):
        return [GaugeMetricFamily("redis_stream_depth", "d", labels=["stream"])]

    def collect(self):
        family = GaugeMetricFamily("redis_stream_depth", "d", labels=["stream"])
        family.add_metric(["signals"], 7.0)
        return [family]

c.registry.prometheus.unregister(c.metric("redis_stream_depth").raw)  # as the trace monitor does
c.add_collector(Streams())
"""


def test_a_family_served_at_scrape_time_is_not_also_taken_from_the_files(tmp_path: Path) -> None:
    """An agent that sets redis_stream_depth while the monitor watches streams: one family, the monitor's."""
    monitor = Monitor(tmp_path, "c.export_prometheus()", setup=STREAM_WATCHER)
    run_agent(AGENT + '\nmetrics.set_gauge("redis_stream_depth", 99, labels={"stream": "signals"})\n', tmp_path, "1")
    exposition = monitor.result()
    names = [f.name for f in text_string_to_metric_families(exposition)]
    assert names.count("redis_stream_depth") == 1
    assert 'redis_stream_depth{stream="signals"} 7.0' in exposition
