"""The scrape-time collector: SLO families evaluated when Prometheus scrapes, never before.

``describe()`` returns the families without evaluating, so registering costs nothing; ``collect()``
runs the SLO engine once and yields (names and help from the catalogue's ARK_SLO_* specs):

- ``ark_slo_value{slo}``, ``ark_slo_objective{slo}``: the indicator and what it is compared with
- ``ark_slo_met{slo}``: 1 or 0, absent while the SLO has no data
- ``ark_slo_error_budget_remaining_ratio{slo}``, ``ark_slo_burn_rate{slo,window}`` (5m, 30m, 1h and
  the SLO's alert windows within the retention)
- ``ark_slo_events{slo,kind="good"|"total"}``, ``ark_availability_ratio{window}``

A value that is unknown (no events) is left out rather than exported as NaN.

``ProcessQuarantines`` adds the restart-proof input of the availability rules:
``ark_watchdog_quarantines_process_total{boot}`` and ``ark_obs_start_time_seconds{boot}``.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Iterator
from typing import Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ark_obs import catalog
from ark_obs.catalog import MetricSpec
from ark_obs.slo.report import SloReport
from ark_obs.slo.spec import SloConfigError
from ark_obs.source import MetricSource

__all__ = ["FAMILIES", "ProcessQuarantines", "SloCollector"]

log = logging.getLogger("ark_obs")

FAMILIES: Final[tuple[MetricSpec, ...]] = (
    catalog.ARK_SLO_VALUE,
    catalog.ARK_SLO_OBJECTIVE,
    catalog.ARK_SLO_MET,
    catalog.ARK_SLO_ERROR_BUDGET_REMAINING_RATIO,
    catalog.ARK_SLO_BURN_RATE,
    catalog.ARK_SLO_EVENTS,
    catalog.ARK_AVAILABILITY_RATIO,
)

# One SloCollector per MetricsCollector: a registry refuses a second collector with the same names,
# so a newer engine takes over the one already registered.
_ATTACHED: Final[weakref.WeakKeyDictionary[MetricSource, SloCollector]] = weakref.WeakKeyDictionary()


class Checks(Protocol):
    """What the collector evaluates at each scrape (an ``SloEngine``)."""

    def check(self) -> SloReport:
        """Every SLO evaluated now."""


class SloOwner(MetricSource, Protocol):
    """A source whose default engine is built on first use (``MetricsCollector.slos``)."""

    @property
    def slos(self) -> Checks:
        """The default SLO engine."""


def _family(spec: MetricSpec) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


class SloCollector:
    """A prometheus_client collector that evaluates an SloEngine at each scrape.

    Every MetricsCollector has one from its construction (``attach_default``): the first scrape of any
    collector shows the SLO families, whether or not anybody called ``check_slos()`` before.
    """

    def __init__(self, engine: Checks | None, owner: SloOwner | None = None) -> None:
        self.engine = engine
        # without an engine yet, the owner's default engine is built at the first scrape (lazily: building
        # it validates the SLO specs, which a collector with a custom catalogue may not satisfy)
        self._owner = None if owner is None else weakref.ref(owner)
        self._failed = False

    @classmethod
    def attach(cls, collector: MetricSource, engine: Checks) -> SloCollector:
        """Register a collector for ``engine`` on ``collector``, or point the registered one at it."""
        existing = _ATTACHED.get(collector)
        if existing is not None:
            existing.engine = engine
            return existing
        scrape = cls(engine)
        collector.add_collector(scrape)
        _ATTACHED[collector] = scrape
        return scrape

    @classmethod
    def attach_default(cls, collector: SloOwner) -> SloCollector:
        """Register a collector that evaluates ``collector.slos`` (built at the first scrape if needed)."""
        existing = _ATTACHED.get(collector)
        if existing is not None:
            return existing
        scrape = cls(None, collector)
        collector.add_collector(scrape)
        _ATTACHED[collector] = scrape
        return scrape

    def _engine(self) -> Checks | None:
        if self.engine is not None:
            return self.engine
        owner = None if self._owner is None else self._owner()
        if owner is None:
            return None
        try:
            return owner.slos  # builds the default engine, which points this collector at itself
        except SloConfigError:
            return None  # a catalogue without the default SLOs' metrics: no default SLOs to show

    def describe(self) -> list[Metric]:
        """The families, without samples: registering does not evaluate any SLO."""
        return [_family(spec) for spec in FAMILIES]

    def collect(self) -> Iterator[Metric]:
        """Evaluate every SLO and yield its families."""
        try:
            engine = self._engine()
            if engine is None:
                return
            report = engine.check()
        except Exception:
            # one broken SLO must not take the whole /metrics page down with it
            if not self._failed:
                self._failed = True
                log.exception("ark-obs: SLO evaluation failed at scrape time; SLO families left out")
            return
        yield from families(report)


def families(report: SloReport) -> Iterator[Metric]:
    """The scrape-time families of a report."""
    value, objective, met, budget, burn, events, availability = (_family(spec) for spec in FAMILIES)
    for s in report.slos:
        slo = [s.name]
        if s.value is not None:
            value.add_metric(slo, s.value)
        objective.add_metric(slo, s.objective)
        if s.status != "no_data":
            met.add_metric(slo, 1.0 if s.met else 0.0)
        if s.error_budget_remaining is not None:
            budget.add_metric(slo, s.error_budget_remaining)
        for window, rate in s.burn_rates.items():
            burn.add_metric([s.name, window], rate)
        if s.total_events is not None and s.good_events is not None:
            events.add_metric([s.name, "good"], s.good_events)
            events.add_metric([s.name, "total"], s.total_events)
    for window, ratio in report.availability_ratio.items():
        availability.add_metric([window], ratio)
    yield from (value, objective, met, budget, burn, events, availability)


class ProcessQuarantines:
    """Watchdog quarantines since this process started, as one series per process: restart-proof input.

    ``watchdog_quarantines_total{agent,reason}`` loses quarantines to ``increase()`` across restarts: a
    free-text label set is born at 1 (its first quarantine is no increase), and one that dies with its
    process and is born again at the same value shows no change at all. This collector exports, from
    the first scrape, ``ark_watchdog_quarantines_process_total{boot}`` (every agent and reason summed,
    0 until the first quarantine, monotone) and ``ark_obs_start_time_seconds{boot}``; ``boot`` is new
    with every process, so a restart is a new series, never a reset, and the shipped rules count a
    series born inside the window from 0 (deploy/prometheus/rules/ark-slo.rules.yml).

    In multiprocess mode the files of earlier runs may persist: their total at start is the baseline,
    so the series still counts only what happened since this process started.
    """

    def __init__(self, collector: MetricSource, started: float | None = None) -> None:
        self._collector = collector
        self.started = time.time() if started is None else started
        self.boot = f"{self.started:.6f}"
        self._baseline = self._total()

    def _total(self) -> float:
        name = catalog.WATCHDOG_QUARANTINES_TOTAL.name
        return math.fsum(r.values[0] for r in self._collector.readings(name))

    def describe(self) -> list[Metric]:
        """The two families, without reading any counter."""
        spec = catalog.ARK_WATCHDOG_QUARANTINES_PROCESS_TOTAL
        return [
            _family(catalog.ARK_OBS_START_TIME_SECONDS),
            CounterMetricFamily(spec.name, spec.help, labels=spec.labels),
        ]

    def collect(self) -> Iterator[Metric]:
        """This process' start time and its quarantines so far."""
        start = _family(catalog.ARK_OBS_START_TIME_SECONDS)
        start.add_metric([self.boot], self.started)
        spec = catalog.ARK_WATCHDOG_QUARANTINES_PROCESS_TOTAL
        total = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        total.add_metric([self.boot], max(0.0, self._total() - self._baseline))
        yield from (start, total)
