"""The scrape-time SLO collector: what a Prometheus scrape sees, and that registering costs nothing."""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ark_obs import catalog
from ark_obs.metrics import MetricsCollector
from ark_obs.slo import AvailabilitySlo, SloEngine, SloReport
from ark_obs.slo.collector import FAMILIES, SloCollector
from plugins.clock import FakeClock as Clock


@pytest.fixture
def collector() -> MetricsCollector:
    return MetricsCollector(clock=Clock(), ticker=False)


def scrape(collector: MetricsCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The ark_slo_* / ark_availability_* samples of a scrape, by family and sorted label pairs."""
    text = generate_latest(collector.registry.prometheus).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("ark_slo_", "ark_availability_")):
            out[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return out


def slo(name: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"slo": name, **extra}.items()))


def test_a_scrape_shows_every_slo_family(collector: MetricsCollector) -> None:
    """After an engine is built, generate_latest() of the registry carries the seven SLO families."""
    SloEngine(collector)
    for v in (100.0,) * 19 + (500.0,):
        collector.observe_histogram("ark_pass_latency_ms", v)
    collector.inc_counter("watchdog_quarantines_total", labels={"agent": "Joey", "reason": "stuck"})
    families = scrape(collector)
    assert set(families) == {spec.name for spec in FAMILIES}
    assert families["ark_slo_objective"] == {
        slo("availability"): 0.995,
        slo("decision_latency_p95"): 400.0,
        slo("hrm_eval_latency_p95"): 120.0,
        slo("ethics_drift"): 0.0,
    }
    assert families["ark_slo_value"][slo("availability")] == pytest.approx(1 - 5 / 300)
    assert 75 < families["ark_slo_value"][slo("decision_latency_p95")] <= 100
    assert families["ark_slo_met"] == {
        slo("availability"): 0.0,
        slo("decision_latency_p95"): 1.0,  # 19 of 20 at or under 400 ms
        slo("ethics_drift"): 1.0,
    }  # hrm_eval_latency_p95 has no data: absent, not 0 and not NaN
    assert families["ark_slo_events"][slo("decision_latency_p95", kind="good")] == 19
    assert families["ark_slo_events"][slo("decision_latency_p95", kind="total")] == 20
    assert families["ark_slo_burn_rate"][slo("decision_latency_p95", window="5m")] == 1.0
    assert families["ark_slo_burn_rate"][slo("availability", window="1h")] == pytest.approx((5 / 3600) / 0.005)
    assert families["ark_slo_error_budget_remaining_ratio"][slo("decision_latency_p95")] == 0.0
    assert families["ark_availability_ratio"][(("window", "30m"),)] == pytest.approx(1 - 5 / 1800)
    assert set(families["ark_availability_ratio"]) == {(("window", w),) for w in ("5m", "30m", "1h")}


def test_no_data_is_absent_never_nan(collector: MetricsCollector) -> None:
    """A fresh collector's scrape has no NaN sample and no met/value/budget for SLOs without data."""
    SloEngine(collector)
    families = scrape(collector)
    assert all(not math.isnan(v) for samples in families.values() for v in samples.values())
    for family in ("ark_slo_met", "ark_slo_value", "ark_slo_error_budget_remaining_ratio"):
        assert slo("decision_latency_p95") not in families.get(family, {})
    assert not any(dict(k)["slo"] == "decision_latency_p95" for k in families.get("ark_slo_burn_rate", {}))


def test_families_use_the_catalogue_names_help_and_labels() -> None:
    """The collector's families are exactly the catalogue's collected SLO specs (so docs match)."""
    names = {s.name for s in catalog.CATALOG if s.collected and s.name.startswith(("ark_slo_", "ark_avail"))}
    assert {s.name for s in FAMILIES} == names
    engine = SloEngine(MetricsCollector(ticker=False), register=False)
    described = {f.name: f for f in SloCollector(engine).describe()}
    for spec in FAMILIES:
        assert described[spec.name].documentation == spec.help
        assert described[spec.name].type == "gauge" and described[spec.name].samples == []


def test_registering_does_not_evaluate(collector: MetricsCollector) -> None:
    """describe() answers the registry at registration; SLOs are evaluated only when scraped."""
    calls: list[int] = []

    class CountingEngine(SloEngine):
        def check(self) -> SloReport:
            calls.append(1)
            return super().check()

    CountingEngine(collector)
    assert calls == []
    generate_latest(collector.registry.prometheus)
    assert calls == [1]
    collector.export_prometheus()
    assert calls == [1, 1]


def test_the_newest_engine_takes_over_the_scrape(collector: MetricsCollector) -> None:
    """A second engine on one collector replaces the first in scrapes instead of a duplicate-name error."""
    SloEngine(collector)
    only = AvailabilitySlo(id="uptime", kind="availability", objective=Decimal("0.9"), window="5m")
    collector.slos = SloEngine(collector, [only])
    assert set(scrape(collector)["ark_slo_objective"]) == {slo("uptime")}
    assert collector.check_slos().total == 1


def test_burn_rate_windows_fit_the_retention() -> None:
    """Only the 5m/30m/1h windows that fit in the collector's retention are exported."""
    collector = MetricsCollector(clock=Clock(), ticker=False, retention_seconds=1800)
    SloEngine(collector)
    families = scrape(collector)
    assert {dict(k)["window"] for k in families["ark_availability_ratio"]} == {"5m", "30m"}
    assert {dict(k)["window"] for k in families["ark_slo_burn_rate"]} == {"5m", "30m"}


def test_a_failing_evaluation_leaves_the_rest_of_the_page(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    """If SLO evaluation raises, the scrape still returns every other metric and logs the failure once."""

    class BrokenEngine(SloEngine):
        def check(self) -> Any:
            raise RuntimeError("boom")

    BrokenEngine(collector)
    with caplog.at_level(logging.ERROR, logger="ark_obs"):
        first = collector.export_prometheus()
        collector.export_prometheus()
    assert "ark_pass_latency_ms_bucket" in first and "ark_slo_value" not in first
    assert sum("SLO evaluation failed" in r.getMessage() for r in caplog.records) == 1
