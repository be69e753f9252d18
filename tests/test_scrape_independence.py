"""What a scrape shows does not depend on who asked before: SLO families from the first scrape, values that
agree with their verdicts, no ``*_created`` series."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ark_obs.metrics import MetricsCollector
from ark_obs.slo import Operator, Status
from ark_obs.slo.collector import FAMILIES
from ark_obs.slo.engine import _shown


def family_names(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text) if f.samples}


def test_first_scrape_of_a_new_collector_has_the_slo_families() -> None:
    """export_prometheus() on a collector nobody asked check_slos() of shows every SLO family, as after it."""
    first = MetricsCollector(ticker=False).export_prometheus()
    assert {spec.name for spec in FAMILIES} <= family_names(first)
    other = MetricsCollector(ticker=False)
    other.check_slos()
    assert family_names(other.export_prometheus()) == family_names(first)


def test_a_collector_without_the_default_slo_metrics_scrapes_without_slos() -> None:
    """A custom catalogue lacking the seed's SLO metrics still scrapes (no SLO families, no error)."""
    from ark_obs import catalog

    collector = MetricsCollector(
        ticker=False, specs=(catalog.GRAVEYARD_VALIDATIONS_TOTAL, catalog.ARK_OBS_DROPPED_TOTAL)
    )
    text = collector.export_prometheus()
    assert "graveyard_validations_total" in text and "ark_slo_value" not in text


@pytest.mark.parametrize("excess", [1e-9, 1e-10, 1e-11, 1e-12, 1e-13])
def test_p95_shown_is_above_the_threshold_when_violated(excess: float) -> None:
    """6 of 100 decisions a hair above 400 ms violate the p95 SLO; the p95 shown (report and scrape) is > 400."""
    collector = MetricsCollector(ticker=False)
    for _ in range(94):
        collector.observe_histogram("ark_pass_latency_ms", 100.0)
    for _ in range(6):
        collector.observe_histogram("ark_pass_latency_ms", 400.0 * (1 + excess))
    collector.tick()
    status = next(s for s in collector.check_slos().slos if s.name == "decision_latency_p95")
    assert status.status is Status.VIOLATED
    assert status.value is not None and status.value > 400.0 and status.compliance is not None
    assert status.compliance < 0.95
    scraped = collector.registry.prometheus.get_sample_value("ark_slo_value", {"slo": "decision_latency_p95"})
    assert scraped is not None and scraped > 400.0
    assert collector.registry.prometheus.get_sample_value("ark_slo_met", {"slo": "decision_latency_p95"}) == 0.0


def test_p95_exactly_at_the_threshold_is_met_and_shown_at_it() -> None:
    """95 of 100 at 400 ms and 5 above: met, and the value shown is at most 400."""
    collector = MetricsCollector(ticker=False)
    for _ in range(95):
        collector.observe_histogram("ark_pass_latency_ms", 400.0)
    for _ in range(5):
        collector.observe_histogram("ark_pass_latency_ms", 450.0)
    collector.tick()
    status = next(s for s in collector.check_slos().slos if s.name == "decision_latency_p95")
    assert status.status is Status.MET and status.value is not None and status.value <= 400.0


@pytest.mark.parametrize(
    ("value", "operator", "objective", "status"),
    [
        (400.0000000000001, Operator.LE, "400", Status.VIOLATED),
        (400.0, Operator.LE, "400", Status.VIOLATED),  # interpolation landed on the line, the count did not
        (400.00000000000006, Operator.LE, "400", Status.MET),
        (0.9949999999999999, Operator.GE, "0.995", Status.VIOLATED),
        (0.995, Operator.GE, "0.995", Status.VIOLATED),
        (0.30000000000000004, Operator.EQ, "0.3", Status.VIOLATED),
        (0.1, Operator.EQ, "0.3", Status.VIOLATED),
        (1.23456789012345, Operator.LE, "400", Status.MET),
    ],
)
def test_shown_value_never_contradicts_the_verdict(
    value: float, operator: Operator, objective: str, status: Status
) -> None:
    """Whatever the rounding, ``shown <operator> objective`` holds exactly when the verdict is met."""
    shown = _shown(value, operator, Decimal(objective), status)
    assert shown is not None and math.isfinite(shown)
    assert operator.holds(Decimal(repr(shown)), Decimal(objective)) == (status is Status.MET)
    assert abs(shown - value) <= 1e-9 * max(1.0, abs(value))  # still the value, not a made-up one


def _exposition_in_subprocess(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_DISABLE_CREATED_SERIES"}
    if env_value is not None:
        env["PROMETHEUS_DISABLE_CREATED_SERIES"] = env_value
    code = (
        "from ark_obs.metrics import MetricsCollector\n"
        "c = MetricsCollector(ticker=False)\n"
        "c.inc_counter('graveyard_validations_total')\n"
        "c.observe_histogram('ark_pass_latency_ms', 5.0)\n"
        "print(c.export_prometheus())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


def test_created_series_are_dropped_unless_asked_for() -> None:
    """No ``*_created`` series by default; an explicit PROMETHEUS_DISABLE_CREATED_SERIES=false keeps them."""
    default = _exposition_in_subprocess(None)
    assert "graveyard_validations_total 1.0" in default and "_created" not in default
    kept = _exposition_in_subprocess("false")
    assert "graveyard_validations_created" in kept and "ark_pass_latency_ms_created" in kept
