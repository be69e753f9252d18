"""Agents in several processes: one exposition aggregates every process (real subprocesses)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from plugins.browser import headless
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


def test_latency_past_the_highest_bucket_is_reported_as_a_bound(start: Any, tmp_path: Path) -> None:
    """Multiprocess mode shares no max: decisions of 20 s (past the 10 s bucket) read p95 = max = 10000 ms,
    which the stats, /slos and the status page (in Chromium) report as a bound, "> 10000", not a value."""
    files = tmp_path / "multiproc"
    files.mkdir()
    server = start({"PROMETHEUS_MULTIPROC_DIR": str(files)})
    run_agent(
        "from ark_obs import metrics\n"
        "for _ in range(20):\n"
        "    metrics.record_latency('ark_pass_latency_ms', 20000.0)\n",
        files,
    )
    stats = httpx.get(server.url + "/metrics/json", timeout=10).json()["histograms"]["ark_pass_latency_ms"]
    assert stats["count"] == 20 and stats["p95"] == stats["max"] == 10000.0
    assert {"p50", "p95", "p99", "max"} <= set(stats["lower_bounds"])
    slo = next(
        s for s in httpx.get(server.url + "/slos", timeout=10).json()["slos"] if s["name"] == "decision_latency_p95"
    )
    assert slo["value"] == 10000.0 and slo["value_is_lower_bound"] is True and slo["status"] == "violated"
    latency = httpx.get(server.url + "/status.json", timeout=10).json()["decision_latency"]
    assert {"p95", "max"} <= set(latency["lower_bounds"])
    dom = headless(server.url + "/", tmp_path / "profile", "--dump-dom").stdout
    tile = re.search(r'data-slo="decision_latency_p95".*?</div>\s*</div>', dom, re.S)
    assert tile is not None and "value <b>&gt; 10000 ms</b>" in tile.group(0), tile
    assert "p95 <b>&gt; 10000 ms</b>" in dom


# A process that finds a counter file under its own pid (a dead process' file, the pid reused): what the
# file held is its baseline, not its quarantines; its boot and start time are in the marker it leaves.
REUSED_PID = """
import json, os, sys
from prometheus_client.mmap_dict import MmapedDict
old = MmapedDict(os.path.join(sys.argv[1], f"counter_{os.getpid()}.db"))
key = json.dumps(("watchdog_quarantines", "watchdog_quarantines_total", {"agent": "Joey", "reason": "old"}, "h"))
old.write_value(key, 5.0, 0.0)
old.close()
from ark_obs import metrics
c = metrics.get_collector()
totals = c.process_totals

def mine():
    return {f.name: [s.value for s in f.samples if s.labels.get("boot") == totals.boot] for f in totals.collect()}

before = mine()
metrics.increment_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "stuck"})
print(json.dumps({"before": before, "after": mine(), "boot": totals.boot, "started": totals.started}))
"""


def test_a_reused_pid_counts_from_its_own_start(tmp_path: Path) -> None:
    """Multiprocess mode: a process whose pid's counter file already holds 5 quarantines exports its own
    series from 0 (1 after its first quarantine), with the boot and start time of its marker file."""
    out = json.loads(run_agent(REUSED_PID, tmp_path, str(tmp_path)))
    assert out["before"]["ark_watchdog_quarantines_process"] == [0.0]
    assert out["after"]["ark_watchdog_quarantines_process"] == [1.0]
    assert out["before"]["ark_hrm_denials_process"] == [0.0]
    assert out["after"]["ark_obs_start_time_seconds"] == [out["started"]]
    (marker,) = tmp_path.glob("ark_obs_process_*.json")
    assert json.loads(marker.read_text())["boot"] == out["boot"]
    assert json.loads(marker.read_text())["baseline"]["watchdog_quarantines_total"] == 5.0
