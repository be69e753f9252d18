"""The scrape-time collector: SLO families evaluated when Prometheus scrapes, never before.

``describe()`` returns the families without evaluating, so registering costs nothing; ``collect()``
runs the SLO engine once and yields (names and help from the catalogue's ARK_SLO_* specs):

- ``ark_slo_value{slo}``, ``ark_slo_objective{slo}``: the indicator and what it is compared with
- ``ark_slo_met{slo}``: 1 or 0, absent while the SLO has no data
- ``ark_slo_error_budget_remaining_ratio{slo}``, ``ark_slo_burn_rate{slo,window}`` (5m, 30m, 1h and
  the SLO's alert windows within the retention)
- ``ark_slo_events{slo,kind="good"|"total"}``, ``ark_availability_ratio{window}``

A value that is unknown (no events) is left out rather than exported as NaN.

``ProcessTotals`` adds the restart-proof input of the availability and denial rules:
``ark_watchdog_quarantines_process_total{boot}``, ``ark_hrm_denials_process_total{boot}`` and
``ark_obs_start_time_seconds{boot}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ark_obs import catalog
from ark_obs.catalog import MetricSpec
from ark_obs.registry import multiprocess_dir
from ark_obs.slo.report import SloReport
from ark_obs.slo.spec import SloConfigError
from ark_obs.source import MetricSource

__all__ = ["FAMILIES", "PROCESS_TOTALS", "ProcessQuarantines", "ProcessTotals", "SloCollector"]

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


# counters whose first event a labelled series cannot show to rate()/increase(), each with the
# per-process total exported for it (born at 0, one series per process)
PROCESS_TOTALS: Final[tuple[tuple[MetricSpec, MetricSpec], ...]] = (
    (catalog.WATCHDOG_QUARANTINES_TOTAL, catalog.ARK_WATCHDOG_QUARANTINES_PROCESS_TOTAL),
    (catalog.HRM_DENIALS_TOTAL, catalog.ARK_HRM_DENIALS_PROCESS_TOTAL),
)
# multiprocess mode: each recording process' boot, start time and baselines, next to its *.db files
MARKER_PREFIX: Final = "ark_obs_process_"


@dataclass(frozen=True, slots=True)
class Boot:
    """One recording process: its ``boot`` label, start time, and its counters' totals when it started."""

    boot: str
    started: float
    baseline: dict[str, float]


# one boot per (directory, pid): every collector of a process shares it, a forked child gets its own
_BOOTS: Final[dict[tuple[str, int], Boot]] = {}
_BOOTS_LOCK: Final = threading.Lock()


def _file_totals(path: str, names: set[str]) -> dict[str, float]:
    """The totals of the counters ``names`` in one process' counter file (0 for those it lacks)."""
    from prometheus_client.mmap_dict import MmapedDict

    totals = dict.fromkeys(names, 0.0)
    try:
        values = list(MmapedDict.read_all_values_from_file(path))  # type: ignore[no-untyped-call]
    except (OSError, ValueError):
        return totals
    for key, value, *_ in values:
        try:
            _metric, sample_name, _labels, _help = json.loads(key)
        except (ValueError, TypeError):
            continue
        if sample_name in names:  # a counter's samples are named <name>_total, as the catalogue's specs
            totals[sample_name] += float(value)
    return totals


def _own_boot(path: str, names: set[str], started: float) -> Boot:
    """This process' boot in the multiprocess directory ``path``: written once, at its first collector.

    The baseline is what this pid's counter file already held (a pid reused after a process died keeps
    the dead process' file), so the series counts only this process' events.
    """
    pid = os.getpid()
    with _BOOTS_LOCK:
        boot = _BOOTS.get((path, pid))
        if boot is None:
            baseline = _file_totals(os.path.join(path, f"counter_{pid}.db"), names)
            boot = Boot(f"{started:.6f}-{pid}", started, baseline)
            marker = os.path.join(path, f"{MARKER_PREFIX}{pid}.json")
            try:
                with open(marker + ".tmp", "w", encoding="utf-8") as f:
                    json.dump({"boot": boot.boot, "started": started, "baseline": baseline}, f)
                os.replace(marker + ".tmp", marker)
            except OSError as exc:
                log.warning("ark-obs: could not write %s: %s", marker, exc)
            _BOOTS[(path, pid)] = boot
    return boot


def _boots(path: str) -> dict[str, Boot]:
    """Every recording process' boot in ``path``, by pid."""
    out: dict[str, Boot] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            if not (name.startswith(MARKER_PREFIX) and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(path, name), encoding="utf-8") as f:
                    d = json.load(f)
                boot = Boot(str(d["boot"]), float(d["started"]), {k: float(v) for k, v in d["baseline"].items()})
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue
            out[name[len(MARKER_PREFIX) : -len(".json")]] = boot
    return out


class ProcessTotals:
    """Per-process totals of the counters whose first event ``rate()``/``increase()`` cannot see.

    A labelled counter series is born at 1 on its first ``inc()``: ``increase()`` sees no step from
    nothing to 1, so the first quarantine of a free-text ``{agent, reason}``, or the first denial of a
    new ``rule_id``, is invisible, and a series that dies with its process and is born again at the same
    value shows no change. This collector exports, from the first scrape:

    - ``ark_watchdog_quarantines_process_total{boot}`` and ``ark_hrm_denials_process_total{boot}``:
      every quarantine (denial) of every label set since the process started, 0 until the first,
      monotone;
    - ``ark_obs_start_time_seconds{boot}``: when that process started.

    ``boot`` is new with every process, so a restart is a new series, never a reset, and the shipped
    rules count a series born inside the window from 0 (deploy/prometheus/rules/).

    In multiprocess mode the series are per *recording* process: every process (agents and the service)
    leaves a marker next to its counter file when its first collector is built, and the exporting
    process reads each process' own file. So an agent process keeps its series, unchanged, across a
    restart of ``ark-obs serve``: a quarantine recorded while the service was down is a step in that
    series once it is scraped again, not part of a new baseline. A process' series stays (constant)
    after it exits, as its file does; a counter file without a marker (a process without ark-obs) is
    counted as started long ago.
    """

    def __init__(self, collector: MetricSource, started: float | None = None) -> None:
        self._collector = collector
        self.started = time.time() if started is None else started
        self.specs = tuple((src, out) for src, out in PROCESS_TOTALS if src.name in collector.registry)
        self._names = {src.name for src, _ in self.specs}
        self._path = multiprocess_dir()
        if self._path is not None:
            own = _own_boot(self._path, self._names, self.started)
            self.boot, self.started = own.boot, own.started
        else:
            self.boot = f"{self.started:.6f}"
        self._baseline = {name: self._total(name) for name in self._names}

    def _total(self, name: str) -> float:
        return math.fsum(r.values[0] for r in self._collector.readings(name))

    def describe(self) -> list[Metric]:
        """The families, without reading any counter."""
        return [
            _family(catalog.ARK_OBS_START_TIME_SECONDS),
            *(CounterMetricFamily(out.name, out.help, labels=out.labels) for _, out in self.specs),
        ]

    def _per_process(self) -> Iterator[tuple[Boot, dict[str, float]]]:
        """Multiprocess mode: each recording process' boot and its totals since it started."""
        assert self._path is not None
        boots = _boots(self._path)
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(self._path)):
                if not (name.startswith("counter_") and name.endswith(".db")):
                    continue
                pid = name[len("counter_") : -len(".db")]
                totals = _file_totals(os.path.join(self._path, name), self._names)
                boot = boots.pop(pid, None) or Boot(f"pid-{pid}", 0.0, {})
                yield boot, {k: max(0.0, v - boot.baseline.get(k, 0.0)) for k, v in totals.items()}
        for boot in boots.values():  # a process that has no counter file yet: 0 from the start
            yield boot, dict.fromkeys(self._names, 0.0)

    def collect(self) -> Iterator[Metric]:
        """Each process' start time and its totals so far."""
        start = _family(catalog.ARK_OBS_START_TIME_SECONDS)
        families = {src.name: CounterMetricFamily(out.name, out.help, labels=out.labels) for src, out in self.specs}
        if self._path is None:
            start.add_metric([self.boot], self.started)
            for name, family in families.items():
                family.add_metric([self.boot], max(0.0, self._total(name) - self._baseline[name]))
        else:
            for boot, totals in self._per_process():
                start.add_metric([boot.boot], boot.started)
                for name, family in families.items():
                    family.add_metric([boot.boot], totals[name])
        yield start
        yield from families.values()


# the name before hrm_denials_total had a per-process total too
ProcessQuarantines = ProcessTotals
