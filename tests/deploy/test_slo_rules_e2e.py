"""Your own SLOs end to end: an SLO file, the rules `ark-obs rules` generates from it, a real Prometheus.

The service is the app ``ark-obs serve`` runs, started with the SLO file (``running_service``, as in
test_deploy_e2e.py); a real Prometheus (1 s scrape and evaluation) loads only the generated rules and
scrapes it. Three SLOs: a 300 ms decision latency at 99.9% (300 is a bucket boundary of
``ark_pass_latency_ms``), a ratio over two counters (complete traces per Graveyard validation, one per
decision) at 90%, availability at 99.9%; each with a 1h window (longer than the test, so no event leaves
it while we compare) and one page leg, 14.4x over 10m and 20s (short enough to resolve within the test).

Phase 1 meets every objective (the ratio exactly at it: burn rate exactly 1 on both sides); phase 2
crosses every objective (latency and availability fast enough to page, the ratio violated but below
14.4x); phase 3 waits out the short window. After each phase ``/slos`` and the recording rules agree on
compliance, verdict, burn rate and budget at every window both compute, and the generated page fires
exactly for the SLOs burning above 14.4x over both windows, then resolves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ark_obs.metrics import MetricsCollector
from ark_obs.slo import load_slo_file
from ark_obs.slo.rules import RuleOptions, render_rules
from plugins.inprocess import running_service
from plugins.prometheus_server import PrometheusFactory, PrometheusServer

pytestmark = pytest.mark.slow

SLO_FILE = """
[[slos]]
id = "decision_latency_300"
kind = "latency"
description = "99.9% of decisions take at most 300 ms."
metric = "ark_pass_latency_ms"
threshold = 300
quantile = 0.999
window = "1h"
burn_alerts = [{ tier = "page", factor = 14.4, long = "10m", short = "20s" }]

[[slos]]
id = "complete_traces"
kind = "ratio"
description = "90% of decisions (one Graveyard validation each) leave a complete trace."
good_metric = "ark_traces_complete_total"
total_metric = "graveyard_validations_total"
objective = 0.9
window = "1h"
burn_alerts = [{ tier = "page", factor = 14.4, long = "10m", short = "20s" }]

[[slos]]
id = "availability"
kind = "availability"
objective = 0.999
window = "1h"
burn_alerts = [{ tier = "page", factor = 14.4, long = "10m", short = "20s" }]
"""
SHORT_S = 20.0
TOLERANCE = 1e-9


@dataclass
class World:
    collector: MetricsCollector
    url: str
    prom: PrometheusServer
    decisions: int = 0
    validations: int = 0
    complete: int = 0
    quarantines: int = 0

    def traffic(self, fast: int, slow: int, validations: int, complete: int, quarantines: int) -> None:
        c = self.collector
        for i in range(fast + slow):
            c.observe_histogram("ark_pass_latency_ms", 250.0 if i < fast else 350.0)
        for _ in range(validations):
            c.inc_counter("graveyard_validations_total")
        for _ in range(complete):
            c.inc_counter("ark_traces_complete_total")
        for _ in range(quarantines):
            c.inc_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "exec_error"})
        self.decisions += fast + slow
        self.validations += validations
        self.complete += complete
        self.quarantines += quarantines

    def settle(self) -> None:
        """Until Prometheus has scraped every count and evaluated the rules after that scrape."""
        expected = {
            "sum(ark_pass_latency_ms_count)": self.decisions,
            "sum(graveyard_validations_total)": self.validations,
            "sum(ark_traces_complete_total)": self.complete,
            "sum(ark_watchdog_quarantines_process_total)": self.quarantines,
        }
        self.prom.wait_until(
            lambda: all((self.prom.query_value(q) or 0) == v for q, v in expected.items()),
            timeout=15,
            what=f"Prometheus scraped {expected}",
        )
        seen = time.time() + 1.0
        self.prom.wait_until(
            lambda: all(_unix(g["lastEvaluation"]) > seen for g in self.prom.rules()),
            timeout=15,
            what="every rule group evaluated after the scrape",
        )

    def slos(self) -> dict[str, dict[str, Any]]:
        report = httpx.get(self.url + "/slos", timeout=10).json()
        return {s["name"]: s for s in report["slos"]}

    def rule(self, expr: str) -> float | None:
        return self.prom.query_value(expr)


def _unix(rfc3339: str) -> float:
    from datetime import datetime

    head, _, frac = rfc3339.rstrip("Z").partition(".")
    base = datetime.fromisoformat(head + "+00:00").timestamp()
    return base + (float("0." + "".join(ch for ch in frac if ch.isdigit())) if frac else 0.0)


@pytest.fixture(scope="module")
def world(prometheus_factory: PrometheusFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("own-slos")
    slo_file = tmp / "slos.toml"
    slo_file.write_text(SLO_FILE)
    specs = load_slo_file(slo_file, MetricsCollector(ticker=False).registry)
    rules = tmp / "own.rules.yml"
    rules.write_text(render_rules(specs, RuleOptions(), str(slo_file)))
    with running_service("/readyz", slo_file=str(slo_file), slice_seconds=1.0) as running:
        prom = prometheus_factory([running.url.removeprefix("http://")], rule_files=[rules])
        try:
            prom.wait_targets_up(samples=2)
            yield World(running.collector, running.url, prom)
        finally:
            prom.stop()


def agree(world: World, windows_from: float) -> dict[str, dict[str, Any]]:
    """/slos and the rules agree on compliance, verdict, budget and every burn rate from ``windows_from`` up."""
    slos = world.slos()
    problems: list[str] = []

    def close(what: str, ours: float | None, theirs: float | None) -> None:
        if ours is None or theirs is None:
            if ours is not theirs and not (ours is None and theirs is None):
                problems.append(f"{what}: /slos {ours} vs rules {theirs}")
        elif not math.isclose(ours, theirs, rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            problems.append(f"{what}: /slos {ours} vs rules {theirs}")

    for name, s in slos.items():
        sel = f'{{slo="{name}"}}'
        close(f"{name} compliance", s["compliance"], world.rule(f"ark:slo_good:ratio_rate1h{sel}"))
        met = world.rule(f"ark:slo_met:bool{sel}")
        verdict = None if met is None else ("met" if met == 1 else "violated")
        if (s["status"] if s["status"] != "no_data" else None) != verdict:
            problems.append(f"{name} verdict: /slos {s['status']} vs rules {met}")
        close(f"{name} budget", s["error_budget_remaining"], world.rule(f"ark:slo_error_budget_remaining:ratio{sel}"))
        close(f"{name} burn 1h", s["burn_rate"], world.rule(f"ark:slo_burn_rate:ratio_rate1h{sel}"))
        windows = {"20s": 20.0, "5m": 300.0, "10m": 600.0, "30m": 1800.0, "1h": 3600.0}
        for window, seconds in windows.items():
            if seconds >= windows_from:
                theirs = world.rule(f"ark:slo_burn_rate:ratio_rate{window}{sel}")
                close(f"{name} burn {window}", s["burn_rates"].get(window), theirs)
    assert problems == [], problems
    return slos


def pages(world: World) -> set[str]:
    return {
        a["labels"]["slo"] for a in world.prom.alerts("firing") if a["labels"]["alertname"] == "ArkSloBudgetBurnPage"
    }


def test_own_slos_agree_with_the_generated_rules_and_their_alerts_fire_and_resolve(world: World) -> None:
    # Phase 1: every objective met; the ratio exactly at its 90%.
    world.traffic(fast=1000, slow=0, validations=100, complete=90, quarantines=0)
    world.settle()
    slos = agree(world, windows_from=300)
    assert {n: s["status"] for n, s in slos.items()} == dict.fromkeys(slos, "met")
    for window in ("5m", "10m", "30m", "1h"):  # exactly 1 in PromQL too, not 1 + 1e-16
        assert world.rule(f'ark:slo_burn_rate:ratio_rate{window}{{slo="complete_traces"}}') == 1.0
    assert slos["complete_traces"]["burn_rate"] == 1.0
    assert pages(world) == set()

    # Phase 2: every objective crossed. Latency 30 slow of 1030 (burn 29x), 2 quarantines (16.7x over
    # 10m, 500x over 20s): both page. The ratio 170/200 = 0.85 < 0.9, burn 1.5x: violated, no page.
    world.traffic(fast=0, slow=30, validations=100, complete=80, quarantines=2)
    world.settle()
    slos = agree(world, windows_from=300)
    assert {n: s["status"] for n, s in slos.items()} == dict.fromkeys(slos, "violated")
    world.prom.wait_until(
        lambda: pages(world) == {"decision_latency_300", "availability"} or None,
        timeout=10,
        what="ArkSloBudgetBurnPage for the latency and availability SLOs",
    )

    # Phase 3: the short window empties: the pages resolve, and every window agrees again, 20s included.
    world.prom.wait_until(lambda: pages(world) == set() or None, timeout=SHORT_S + 15, what="the pages resolved")
    deadline = time.monotonic() + 10
    while True:  # the 20s window of /slos (1 s slices) and of the rules both empty
        try:
            agree(world, windows_from=0)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
