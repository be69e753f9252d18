"""The fast OpenMetrics writer: byte for byte prometheus_client's output, and its fallback."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as client_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from ark_obs.context import bind_trace_id
from ark_obs.service import build_collector
from ark_obs.service.openmetrics import generate_openmetrics
from ark_obs.settings import Settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Fixed:
    """A collector yielding the given families."""

    def __init__(self, *families: Any) -> None:
        self.families = families

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        return iter(self.families)


def same(registry: Any) -> bytes:
    """Both writers' output, asserted equal."""
    ours = generate_openmetrics(registry)
    assert ours == client_openmetrics(registry)
    return ours


def test_the_whole_ark_registry_is_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ARK family (recorded, traces with exemplars, heartbeats, SLOs) comes out identical, and
    without falling back to the client's writer."""
    import ark_obs.service.openmetrics

    def no_fallback(*_: Any) -> bytes:
        raise AssertionError("fell back to prometheus_client")

    monkeypatch.setattr(ark_obs.service.openmetrics._client, "generate_latest", no_fallback)
    collector, owned = build_collector(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        for i in range(20):
            for agent in ("Kyle", "Joey", "HRM", "Kenny", "Aletheia"):
                collector.record_trace_span(f"{i + 1:032x}", agent, duration_ms=3.0)
        with bind_trace_id(TRACE):
            collector.observe_histogram("ark_pass_latency_ms", 285.3)
        collector.inc_counter("hrm_denials_total", labels={"rule_id": 'quote"back\\slash\nnewline', "agent": "Kenny"})
        collector.set_gauge("kyle_ingest_rate", 1.02)
        collector.set_gauge("redis_stream_depth", 1e20, labels={"stream": "ark:signals"})
        collector.record_heartbeat("Kyle")
        text = same(collector.exposition_registry())
    finally:
        for monitor in owned:
            monitor.close()
    families = {f.name: f for f in parse_openmetrics(text.decode())}
    assert any(s.exemplar for s in families["ark_pass_latency_ms"].samples)
    assert "ark_slo_met" in families and "ark_agent_up" in families


def test_special_values_units_and_timestamps() -> None:
    """NaN, infinities, big and tiny numbers, units and sample timestamps are written identically."""
    registry = CollectorRegistry()
    g = GaugeMetricFamily("odd_values", "Odd values.", labels=["v"], unit="seconds")
    for label, value in (("nan", math.nan), ("inf", math.inf), ("ninf", -math.inf), ("big", 1.5e21), ("tiny", 1e-9)):
        g.add_metric([label], value, timestamp=1700000000.25)
    registry.register(Fixed(g))
    Counter("plain_events", "Events.", registry=registry).inc(3)
    h = Histogram("latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0), registry=registry)
    h.labels("/x").observe(0.5, {"trace_id": TRACE})
    Gauge("help_with_specials", 'A "help" with \\ and\nnewline.', registry=registry).set(1)
    same(registry)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.text(max_size=20), min_size=1, max_size=5),
    number=st.floats(allow_nan=True, allow_infinity=True),
)
def test_any_label_values_and_numbers(values: list[str], number: float) -> None:
    """Arbitrary unicode label values (escapes included) and any float give identical bytes."""
    g = GaugeMetricFamily("fuzzed", "Fuzzed.", labels=["value"])
    for v in dict.fromkeys(values):
        g.add_metric([v], number)
    same(Fixed(g))


@pytest.mark.parametrize(
    "family",
    [
        GaugeMetricFamily("with:colon", "Recording-rule style name."),
        InfoMetricFamily("build", "Build info.", value={"version": "1"}),
        SummaryMetricFamily("rpc_seconds", "A summary.", count_value=2, sum_value=1.0),
    ],
)
def test_uncovered_families_fall_back_to_the_client(family: Any) -> None:
    """Names with colons and other metric types go through prometheus_client, collected only once."""
    calls = []

    class Counting(Fixed):
        def collect(self) -> Any:
            calls.append(1)
            return super().collect()

    if isinstance(family, GaugeMetricFamily):
        family.add_metric([], 1.0)
    collector = Counting(family, GaugeMetricFamily("plain", "Plain.", value=2.0))
    registry = CollectorRegistry()
    registry.register(collector)
    calls.clear()
    ours = generate_openmetrics(registry)
    assert calls == [1]
    assert ours == client_openmetrics(registry)
