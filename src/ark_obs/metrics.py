"""The seed's recording API: ``MetricsCollector`` and the module-level functions agents call.

>>> from ark_obs import metrics
>>> metrics.increment_counter("hrm_denials_total", labels={"rule_id": "max_position_size", "agent": "Kenny"})
>>> metrics.set_gauge("kyle_ingest_rate", 1.02)
>>> metrics.record_latency("ark_pass_latency_ms", 285.3)

The metric objects themselves are importable too (``from ark_obs.metrics import hrm_denials_total``)
and behave like prometheus_client's: ``hrm_denials_total.labels(rule_id=..., agent=...).inc()``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ark_obs import catalog
from ark_obs._seeddict import SeedDict
from ark_obs.catalog import Kind, MetricSpec
from ark_obs.registry import (
    DEFAULT_MAX_SERIES,
    ArkRegistry,
    DroppedChild,
    HistogramChild,
    LabelError,
    Metric,
    MetricTypeError,
    UnknownMetricError,
    is_multiprocess,
    multiprocess_dir,
)
from ark_obs.slo import PROCESS_TOTALS, ProcessTotals, SloCollector, SloEngine, SloReport
from ark_obs.traces import HeartbeatMonitor, RevisionChecker, TraceMonitor, TraceReport, backend_for
from ark_obs.traces.model import ENV_STORE
from ark_obs.window import TICKER, Clock, Reading, Window, histogram_quantile, quantile_is_lower_bound

__all__ = [
    "HistogramStats",
    "LabelError",
    "MetricTypeError",
    "MetricsCollector",
    "UnknownMetricError",
    "get_collector",
    "increment_counter",
    "record_latency",
    "set_collector",
    "set_gauge",
]

DEFAULT_RETENTION_SECONDS: Final = 3600.0
DEFAULT_SLICE_SECONDS: Final = 10.0
_TRACE_LABEL: Final = "trace_id"
# bound on the by-name cache: a label set may be spelled in several key orders
_CACHE_FACTOR: Final = 4


@dataclass(frozen=True, slots=True, eq=False)
class HistogramStats(SeedDict):
    """Windowed statistics of a histogram; value fields are None when the window is empty.

    Typed (``stats.p95``) and the seed's dict: ``stats["p95"]``, ``"p95" in stats``, ``json.dumps(stats)``.
    """

    count: int
    sum: float
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    min: float | None
    max: float | None
    window_seconds: float
    # fields whose number is only a lower bound (the true value is above it): in multiprocess mode, events
    # above the highest finite bucket give max (and the quantiles there) as that bucket's bound, "> 10000"
    lower_bounds: tuple[str, ...] = ()


class MetricsCollector:
    """Every ARK metric on a registry of its own, with the seed's recording and query methods.

    ``clock`` and ``ticker`` are injectable for tests: with ``ticker=False`` nothing snapshots in the
    background and the caller drives ``tick()``.
    """

    def __init__(
        self,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        slice_seconds: float = DEFAULT_SLICE_SECONDS,
        max_series: int = DEFAULT_MAX_SERIES,
        specs: tuple[MetricSpec, ...] = catalog.CATALOG,
        clock: Clock | None = None,
        ticker: bool = True,
    ) -> None:
        import time

        self.registry = ArkRegistry(specs, max_series=max_series)
        self.clock: Clock = clock or time.time
        self.window = Window(retention_seconds, slice_seconds, self.clock)
        self._counters: dict[Any, Any] = {}
        self._gauges: dict[Any, Any] = {}
        self._histograms: dict[Any, Any] = {}
        self._caches = {
            Kind.COUNTER: self._counters,
            Kind.GAUGE: self._gauges,
            Kind.HISTOGRAM: self._histograms,
        }
        self._extra_collectors: list[Any] = []
        self._tick_lock = threading.Lock()
        self._revisions_lock = threading.Lock()
        self._traces: TraceMonitor | None = None
        self._heartbeats: HeartbeatMonitor | None = None
        self._slos: SloEngine | None = None
        self._revisions: RevisionChecker | None = None
        if is_multiprocess():
            # files of earlier runs persist: their totals are a baseline, not recent events
            self.window.prime(self._multiprocess_readings())
        if ticker:
            TICKER.add(self)
        # the scrape-time SLO families are there from the first scrape, not after a first check_slos()
        SloCollector.attach_default(self)
        # per-process totals of the counters whose first event rate() cannot see (quarantines, denials)
        if any(source.name in self.registry for source, _ in PROCESS_TOTALS):
            self.process_totals: ProcessTotals | None = ProcessTotals(self)
            self.add_collector(self.process_totals)
        else:
            self.process_totals = None
        self.process_quarantines = self.process_totals  # the earlier name

    # declaration -------------------------------------------------------------------------------------
    def declare(self, spec: MetricSpec) -> Metric:
        """Declare a metric that is not in the catalogue (idempotent; another type raises)."""
        return self.registry.declare(spec)

    def metric(self, name: str) -> Any:
        """The metric object called ``name`` (aliases resolve; unknown names raise)."""
        return self.registry.get(name)

    # recording: the seed's API -----------------------------------------------------------------------
    def _resolve(self, kind: Kind, name: str, labels: Mapping[str, object] | None, key: Any) -> Any:
        metric = self.registry.get(name)
        if metric.spec.kind is not kind:
            raise MetricTypeError(f"{name} is a {metric.spec.kind}, not a {kind}")
        child = metric.labels(**labels) if labels else metric._unlabelled()
        cache = self._caches[kind]
        # only str label values are cached: 1, 1.0 and True are equal keys but different label values
        plain = labels is None or all(type(v) is str for v in labels.values())
        if plain and not isinstance(child, DroppedChild) and len(cache) < _CACHE_FACTOR * self.registry.max_series:
            with contextlib.suppress(TypeError):  # unhashable label values: resolved each time, still correct
                cache[key] = child
        return child

    # The by-name hot path: one dict lookup for a name and label set seen before, so it costs less than
    # prometheus_client's own ``labels(**kw)``, which validates and converts on every call.
    def inc_counter(self, name: str, amount: float = 1, labels: Mapping[str, object] | None = None) -> None:
        """Increment counter ``name`` by ``amount``."""
        key = (name, *labels.items()) if labels else name
        try:
            child = self._counters[key]
        except (KeyError, TypeError):
            child = self._resolve(Kind.COUNTER, name, labels, key)
        child.inc(amount)

    def set_gauge(self, name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
        """Set gauge ``name`` to ``value``."""
        key = (name, *labels.items()) if labels else name
        try:
            child = self._gauges[key]
        except (KeyError, TypeError):
            child = self._resolve(Kind.GAUGE, name, labels, key)
        child.set(value)

    def observe_histogram(self, name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
        """Observe ``value`` on histogram ``name``; a ``trace_id`` label becomes an exemplar, not a label."""
        trace_id = None
        if labels:
            if _TRACE_LABEL in labels:
                trace_id = str(labels[_TRACE_LABEL])
                labels = {k: v for k, v in labels.items() if k != _TRACE_LABEL} if len(labels) > 1 else None
            key: Any = (name, *labels.items()) if labels else name
        else:
            key = name
        try:
            child = self._histograms[key]
        except (KeyError, TypeError):
            child = self._resolve(Kind.HISTOGRAM, name, labels, key)
        child.observe(value, trace_id)

    # windowed statistics -----------------------------------------------------------------------------
    def tick(self) -> bool:
        """Take the window snapshots that are due; the background ticker calls this every second."""
        if not self.window.due():
            return False
        with self._tick_lock:
            return self.window.tick(self._rotate_readings)

    def _rotate_readings(self) -> Iterator[Reading]:
        if is_multiprocess():
            yield from self._multiprocess_readings()
            return
        for child in self.registry.histogram_children():
            yield child.rotate()
        yield from self.registry.counter_readings()

    def _multiprocess_readings(self, gauges: bool = False) -> Iterator[Reading]:
        """Aggregated values of every process (min/max are not shared between processes).

        Counters and histograms always; gauges (combined by their multiprocess mode) when asked.
        """
        path = multiprocess_dir()
        if path is None:
            return
        wanted = {m.spec.name: m.spec for m in self.registry if gauges or m.spec.kind is not Kind.GAUGE}
        for family in MultiProcessCollector(None, path).collect():  # type: ignore[no-untyped-call]
            spec = wanted.get(family.name) or wanted.get(family.name + "_total")
            if spec is None:
                continue
            if spec.kind is not Kind.HISTOGRAM:
                sample_name = spec.name  # counters: the _total sample; gauges: the value, combined by mode
                for s in family.samples:
                    if s.name == sample_name:
                        yield Reading((spec.name, tuple(s.labels.get(n, "") for n in spec.labels)), (s.value,))
                continue
            per_series: dict[tuple[str, ...], dict[str, float]] = {}
            sums: dict[tuple[str, ...], float] = {}
            for s in family.samples:
                key = tuple(s.labels.get(n, "") for n in spec.labels)
                if s.name.endswith("_bucket"):
                    per_series.setdefault(key, {})[s.labels["le"]] = s.value
                elif s.name.endswith("_sum"):
                    sums[key] = s.value
            for key, by_le in per_series.items():
                cumulative = sorted(by_le.items(), key=lambda kv: float(kv[0]))
                values, prev = [], 0.0
                for _, c in cumulative:
                    values.append(c - prev)
                    prev = c
                values.append(sums.get(key, 0.0))
                yield Reading((spec.name, key), values)

    def readings(self, name: str, labels: Mapping[str, object] | None = None) -> list[Reading]:
        """Current cumulative readings of metric ``name``'s series matching ``labels`` (a subset)."""
        metric = self.registry.get(name)
        want = {k: str(v) for k, v in (labels or {}).items()}
        unknown = set(want) - set(metric.spec.labels)
        if unknown:
            raise LabelError(
                f"{name} has labels ({', '.join(metric.spec.labels)}); unknown: {', '.join(sorted(unknown))}"
            )
        idx = [metric.spec.labels.index(k) for k in want]
        vals = list(want.values())

        def matches(key: tuple[str, ...]) -> bool:
            return all(key[i] == v for i, v in zip(idx, vals, strict=True))

        if is_multiprocess():
            gauges = metric.spec.kind is Kind.GAUGE
            return [
                r
                for r in self._multiprocess_readings(gauges)
                if r.key[0] == metric.spec.name and matches(r.key[1])  # type: ignore[index]
            ]
        out: list[Reading] = []
        for key, child in metric.children():
            if not matches(key):
                continue
            if isinstance(child, HistogramChild):
                out.append(child.reading())
            elif hasattr(child, "get"):
                out.append(Reading((metric.spec.name, key), (child.get(),)))
        return out

    def increase(
        self,
        name: str,
        window_seconds: float,
        labels: Mapping[str, object] | None = None,
        *,
        minmax: bool = True,
    ) -> tuple[tuple[float, ...], float, float] | None:
        """Summed increase of the matching series over the window (values, min, max); None if no series.

        ``minmax=False`` skips the window's min/max (returned as +-inf) when only the counts matter.
        """
        return self.increase_many(name, (window_seconds,), labels, minmax=minmax)[window_seconds]

    def increase_many(
        self,
        name: str,
        windows: Sequence[float],
        labels: Mapping[str, object] | None = None,
        *,
        minmax: bool = True,
    ) -> dict[float, tuple[tuple[float, ...], float, float] | None]:
        """``increase()`` over several windows from one reading of the series (what a scrape needs)."""
        self.tick()
        now = self.clock()
        readings = self.readings(name, labels)
        out: dict[float, tuple[tuple[float, ...], float, float] | None] = {}
        for window in windows:
            total: list[float] | None = None
            vmin, vmax = float("inf"), float("-inf")
            for reading in readings:
                d = self.window.delta(reading, window, now, minmax)
                total = list(d.values) if total is None else [a + b for a, b in zip(total, d.values, strict=True)]
                vmin, vmax = min(vmin, d.vmin), max(vmax, d.vmax)
            out[window] = None if total is None else (tuple(total), vmin, vmax)
        return out

    def get_histogram_stats(
        self, name: str, labels: Mapping[str, object] | None = None, window_seconds: float | None = None
    ) -> HistogramStats:
        """count, sum, avg, p50, p95, p99, min, max over the sliding window (default: the retention).

        Labels select a subset of series; None aggregates every series of the metric.
        """
        metric = self.registry.get(name)
        if metric.spec.kind is not Kind.HISTOGRAM:
            raise MetricTypeError(f"{name} is a {metric.spec.kind}, not a histogram")
        window = self.window.retention if window_seconds is None else window_seconds
        inc = self.increase(name, window, labels)
        bounds = (*metric.spec.buckets, float("inf"))
        if inc is None or sum(inc[0][:-1]) <= 0:
            return HistogramStats(0, 0.0, None, None, None, None, None, None, window)
        values, vmin, vmax = inc
        counts, total_sum = values[:-1], values[-1]
        events = math.fsum(counts)  # fractional: the window's start interpolates between snapshots
        count = round(events)
        if count == 0:
            return HistogramStats(0, 0.0, None, None, None, None, None, None, window)
        lower_bounds: list[str] = []
        if vmin == float("inf"):  # multiprocess: bound min/max by the non-empty buckets
            first = next(i for i, c in enumerate(counts) if c > 0)
            last = max(i for i, c in enumerate(counts) if c > 0)
            vmin = bounds[first - 1] if first > 0 else 0.0
            if bounds[last] == float("inf"):  # events above the highest finite bound: how far, unknown
                lower_bounds += [
                    f"p{round(q * 100)}" for q in (0.50, 0.95, 0.99) if quantile_is_lower_bound(q, counts, bounds)
                ]
                lower_bounds += ["min"] * (first == last) + ["max"]
            vmax = bounds[last] if bounds[last] != float("inf") else bounds[last - 1]
        return HistogramStats(
            count=count,
            sum=total_sum,
            avg=total_sum / events,
            p50=histogram_quantile(0.50, counts, bounds, vmin, vmax),
            p95=histogram_quantile(0.95, counts, bounds, vmin, vmax),
            p99=histogram_quantile(0.99, counts, bounds, vmin, vmax),
            min=vmin,
            max=vmax,
            window_seconds=window,
            lower_bounds=tuple(lower_bounds),
        )

    # traces, heartbeats and SLOs: each lives in its own module; created on first use ---------------
    @property
    def traces(self) -> TraceMonitor:
        """Trace continuity (ark_obs.traces), on the embedded memory store unless replaced."""
        if self._traces is None:
            self._traces = TraceMonitor(self)
        return self._traces

    @traces.setter
    def traces(self, monitor: TraceMonitor) -> None:
        self._traces = monitor

    @property
    def heartbeats(self) -> HeartbeatMonitor:
        """Agent heartbeats (ark_obs.traces.heartbeats)."""
        if self._heartbeats is None:
            self._heartbeats = HeartbeatMonitor(self)
        return self._heartbeats

    @heartbeats.setter
    def heartbeats(self, monitor: HeartbeatMonitor) -> None:
        self._heartbeats = monitor

    @property
    def slos(self) -> SloEngine:
        """The SLO engine (ark_obs.slo), with the seed's four SLOs unless replaced."""
        if self._slos is None:
            self._slos = SloEngine(self)
        return self._slos

    @slos.setter
    def slos(self, engine: SloEngine) -> None:
        self._slos = engine

    @property
    def revisions(self) -> RevisionChecker:
        """State revision continuity (ark_obs.traces.revisions), on the trace store's Redis when it has one.

        The map follows the configured trace store (``ARK_OBS_TRACE_STORE``) whatever this process' first
        ark-obs call: the trace monitor is built here if nothing built it before, so a process whose
        first call is ``track_state_operation`` shares the map with every other writer.
        """
        if self._revisions is None:
            with self._revisions_lock:
                if self._revisions is None:
                    # a monitor that exists has the store; else one is built for a configured shared store
                    # (with a memory store the map is this process' anyway: no monitor needed for it)
                    store: object = None
                    if self._traces is not None:
                        store = self._traces.store
                    elif (os.environ.get(ENV_STORE, "").strip() or "memory") != "memory":
                        store = self.traces.store
                    self._revisions = RevisionChecker(self.registry, backend=backend_for(store), clock=self.clock)
        return self._revisions

    @revisions.setter
    def revisions(self, checker: RevisionChecker) -> None:
        self._revisions = checker

    def record_trace_span(
        self,
        trace_id: str,
        agent: str,
        *,
        at: float | None = None,
        duration_ms: float | None = None,
        ok: bool = True,
    ) -> None:
        """Record that ``agent`` processed ``trace_id`` (never raises on a store failure)."""
        self.traces.record_span(trace_id, agent, at=at, duration_ms=duration_ms, ok=ok)

    def validate_trace_continuity(self, trace_id: str, expected_agents: Sequence[str] | None = None) -> TraceReport:
        """Which agents saw ``trace_id``, which are missing, and how long the pass took."""
        return self.traces.validate(trace_id, expected_agents)

    def record_heartbeat(self, agent: str) -> None:
        """Record a heartbeat from ``agent``."""
        self.heartbeats.beat(agent)

    def check_slos(self) -> SloReport:
        """Evaluate every SLO now (the seed's shape: slos, total, met, violated, violations)."""
        return self.slos.check()

    # exposition --------------------------------------------------------------------------------------
    def add_collector(self, collector: Any) -> None:
        """Register a scrape-time collector (SLOs, traces) so every exposition includes it."""
        self.registry.prometheus.register(collector)
        self._extra_collectors.append(collector)

    def remove_collector(self, collector: Any) -> None:
        """Unregister a scrape-time collector added with ``add_collector`` (a closed monitor)."""
        if collector in self._extra_collectors:
            self._extra_collectors.remove(collector)
            with contextlib.suppress(KeyError):
                self.registry.prometheus.unregister(collector)

    def exposition_registry(self) -> CollectorRegistry:
        """The registry to expose: this one, or in multiprocess mode every process' files plus extras."""
        if not is_multiprocess():
            return self.registry.prometheus
        # auto_describe off: MultiProcessCollector has no describe(), and registering it would read every file
        registry = CollectorRegistry(auto_describe=False)
        served = {m.name for c in self._extra_collectors for m in c.describe()}
        registry.register(_FilesExcept(multiprocess_dir(), served))
        for collector in self._extra_collectors:
            registry.register(collector)
        return registry

    def export_prometheus(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return generate_latest(self.exposition_registry()).decode()


class _FilesExcept:
    """The multiprocess files, less the families a scrape-time collector of this process serves.

    An agent process may record a family the monitor also serves (``redis_stream_depth`` when streams are
    watched): the monitor's value wins, so no family is emitted twice.
    """

    def __init__(self, path: str | None, served: set[str]) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self._served = served

    def collect(self) -> Iterator[Any]:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name not in self._served:
                yield family


_default: MetricsCollector | None = None
_default_lock = threading.Lock()


def get_collector() -> MetricsCollector:
    """The process-wide default collector that the module-level functions record on."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MetricsCollector()
    return _default


def set_collector(collector: MetricsCollector) -> None:
    """Make ``collector`` the process default (``ark-obs serve`` does, so in-process agents record on it)."""
    global _default
    with _default_lock:
        _default = collector


def increment_counter(name: str, amount: float = 1, labels: Mapping[str, object] | None = None) -> None:
    """Increment counter ``name`` on the default collector."""
    get_collector().inc_counter(name, amount, labels)


def set_gauge(name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
    """Set gauge ``name`` on the default collector."""
    get_collector().set_gauge(name, value, labels)


def record_latency(name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
    """Observe a latency in ms on histogram ``name`` of the default collector."""
    get_collector().observe_histogram(name, value, labels)


def record_trace(trace_id: str, agent: str) -> None:
    """Record that ``agent`` processed ``trace_id`` on the default collector."""
    get_collector().record_trace_span(trace_id, agent)


def record_heartbeat(agent: str) -> None:
    """Record a heartbeat from ``agent`` on the default collector."""
    get_collector().record_heartbeat(agent)


def check_slos() -> SloReport:
    """Evaluate the default collector's SLOs."""
    return get_collector().check_slos()


def observe_histogram(name: str, value: float, labels: Mapping[str, object] | None = None) -> None:
    """Alias of ``record_latency`` for non-latency histograms."""
    get_collector().observe_histogram(name, value, labels)


def __getattr__(name: str) -> Any:
    # ``from ark_obs.metrics import hrm_denials_total``: the default collector's metric object
    if name in catalog.BY_NAME:
        return get_collector().metric(name)
    raise AttributeError(f"module 'ark_obs.metrics' has no attribute {name!r}")
