"""Agents in several processes: one exposition aggregates every process (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

AGENT = """
import sys
from ark_obs import metrics
n = int(sys.argv[1])
for i in range(n):
    metrics.increment_counter("hrm_denials_total", labels={"rule_id": "max_position_size", "agent": "Kenny"})
    metrics.record_latency("ark_pass_latency_ms", 100.0 + i)
metrics.set_gauge("kyle_ingest_rate", float(n))
"""

SCRAPER = """
import json
from ark_obs import metrics
c = metrics.get_collector()
stats = c.get_histogram_stats("ark_pass_latency_ms")
print(json.dumps({"exposition": c.export_prometheus(), "stats": stats.as_dict()}))
"""


def run(code: str, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def test_exposition_aggregates_every_agent_process(tmp_path: Path) -> None:
    """Counters and histograms sum across processes; the gauge keeps the most recent write; no family twice."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in ("10", "20", "30"):
        run(AGENT, env, n)
    result = json.loads(run(SCRAPER, env))
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
