"""The seed's return values are dicts: stats, SLO reports and trace reports pass every dict operation."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from ark_obs.metrics import HistogramStats, MetricsCollector
from ark_obs.slo import SloReport, SloStatus
from ark_obs.traces import TraceReport


def collector_with_data() -> MetricsCollector:
    collector = MetricsCollector(ticker=False)
    for ms in (120.0, 250.0, 390.0, 410.0):
        collector.observe_histogram("ark_pass_latency_ms", ms)
    for agent in ("Kyle", "Joey", "HRM"):
        collector.record_trace_span("3f2504e0-4f89-41d3-9a0c-0305e82c3301", agent)
    collector.tick()
    return collector


def results() -> list[tuple[str, Any, type]]:
    collector = collector_with_data()
    stats = collector.get_histogram_stats("ark_pass_latency_ms")
    slos = collector.check_slos()
    report = collector.validate_trace_continuity("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    return [
        ("stats", stats, HistogramStats),
        ("slos", slos, SloReport),
        ("slo item", slos["slos"][0], SloStatus),
        ("trace", report, TraceReport),
    ]


@pytest.mark.parametrize("index", range(4), ids=["stats", "slos", "slo_item", "trace"])
def test_every_dict_operation(index: int) -> None:
    """Membership, get, keys/items/values, iteration, dict(), json.dumps, equality: each as on the seed's dict."""
    _, result, cls = results()[index]
    assert isinstance(result, cls) and isinstance(result, dict)
    plain = json.loads(json.dumps(result))  # what the seed's dict was: JSON types only
    assert isinstance(plain, dict) and plain
    keys = list(plain)
    assert list(result) == keys and list(result.keys()) == keys and len(result) == len(keys)
    for key in keys:
        assert key in result
        assert result[key] == plain[key] and result.get(key) == plain[key]
        typed = getattr(result, key)  # typed access reads the same value (sequences typed as tuples)
        if isinstance(typed, tuple) and not (typed and hasattr(typed[0], "__slots__")):
            typed = list(typed)
        if not isinstance(typed, tuple):
            assert typed == plain[key]
    assert "no-such-key" not in result and result.get("no-such-key") is None and result.get("x", 7) == 7
    with pytest.raises(KeyError):
        result["no-such-key"]
    assert [k for k, _ in result.items()] == keys and list(result.values()) == [plain[k] for k in keys]
    assert dict(result) == plain and result == plain and plain == result
    assert json.loads(json.dumps(dict(result))) == plain
    assert {**result} == plain
    assert result.as_dict() == plain and json.dumps(result.as_dict()) == json.dumps(result)
    # still immutable: a seed's reader never changes what another reader sees
    with pytest.raises(TypeError):
        result["extra"] = 1
    with pytest.raises(TypeError):
        result.update(extra=1)
    assert copy.deepcopy(result) == result and pickle.loads(pickle.dumps(result)) == result


def test_seed_usage_lines() -> None:
    """The lines the issue quotes from code written against the seed run and give the seed's answers."""
    collector = collector_with_data()
    stats = collector.get_histogram_stats("ark_pass_latency_ms")
    assert "p95" in stats and stats["count"] == 4 == stats.count
    report = collector.validate_trace_continuity("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert report.get("complete") is False and report["missing_agents"] == ["Kenny", "Aletheia"]
    assert report["agents_seen"] == ["Kyle", "Joey", "HRM"] and report.agents_seen == ("Kyle", "Joey", "HRM")
    dumped = json.loads(json.dumps(collector.check_slos()))
    assert dumped["total"] == 4 and {s["name"] for s in dumped["slos"]} >= {"decision_latency_p95"}
    assert isinstance(dumped["slos"][0]["status"], str)
