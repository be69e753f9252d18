"""The metric registry: prometheus_client metrics built from the catalogue, behind a guarded, cached hot path.

Programming errors (an unknown name, wrong labels, a counter decrement, a name re-declared with another
type) raise at once. Bad runtime data (NaN or infinite values, over-long label values, a metric past
its series cap) is dropped, counted in ``ark_obs_dropped_total{metric,reason}`` and logged once per
metric and reason: it never raises into an agent.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar
from prometheus_client.values import MutexValue

from ark_obs import catalog
from ark_obs.catalog import Kind, MetricSpec
from ark_obs.context import TRACE_ID, canonical_trace_id, otel_trace_id
from ark_obs.window import Reading

log = logging.getLogger("ark_obs")

INF: Final = math.inf
MAX_LABEL_VALUE_LENGTH: Final = 128
DEFAULT_MAX_SERIES: Final = 1000
# A raw exemplar observe costs ~2.7x a plain one; refreshing each bucket's exemplar at most this often
# keeps a traced observe near the plain cost while every bucket still shows a recent trace.
EXEMPLAR_REFRESH_SECONDS: Final = 1.0
MAX_TRACE_ID_LENGTH: Final = 64  # OpenMetrics caps exemplar labels at 128 characters in all

DropReason: TypeAlias = Literal[
    "non_finite", "label_too_long", "cardinality", "store_unavailable", "negative", "implausible_time", "trace_full"
]
LabelKey: TypeAlias = tuple[str, ...]


class ArkObsError(Exception):
    """Base class of the programming errors ark-obs raises."""


class UnknownMetricError(ArkObsError, KeyError):
    """A metric name that is not declared."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class LabelError(ArkObsError, ValueError):
    """Wrong or missing label names for a metric."""


class MetricTypeError(ArkObsError, TypeError):
    """A metric used or re-declared as another type."""


def is_multiprocess() -> bool:
    """True when prometheus_client writes values to PROMETHEUS_MULTIPROC_DIR (decided at its import)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


# --- numbers: one rule for every recording call ----------------------------------------------------
def as_float(value: object) -> float:
    """Any real number as a float (NaN when it has none); anything else is a programming error.

    The recording calls take this slow path for every value that is not already a float: ints (also
    ``10**400``), ``Decimal`` (also ``Decimal('NaN')`` and ``Decimal('1e400')``), ``Fraction`` and numpy
    scalars (which register as ``numbers.Real``) are converted; a value no float can hold becomes NaN,
    which the caller drops and counts. ``None``, strings and other objects raise ``TypeError`` at once.
    """
    if type(value) is int or isinstance(value, (numbers.Real, Decimal)):
        try:
            return float(value)
        except (OverflowError, ValueError, ArithmeticError):
            return math.nan  # 10**400, Fraction(10**400), Decimal('sNaN'): not representable
    raise TypeError(f"a metric value must be a number, not {type(value).__name__} {value!r:.40}")


# --- children: the objects the hot path calls ------------------------------------------------------
def _cell_lock(cell: Any) -> Any:
    """The lock of an in-process prometheus_client value cell, or None (multiprocess files: call its inc()).

    An in-process cell is a float under its own lock (``MutexValue.inc``: ``with lock: value += amount``);
    doing that inline saves a Python call per cell on the hot path, with the same lock.
    """
    lock = getattr(cell, "_lock", None) if type(cell) is MutexValue else None
    if lock is None or type(getattr(cell, "_value", None)) is not float:
        return None  # not the cell this was written for (another client version): its own inc()
    return lock


class CounterChild:
    """One counter series."""

    __slots__ = ("_drop", "_lock", "_value")

    def __init__(self, raw: Any, drop: Callable[[DropReason], None]) -> None:
        self._value = raw._value  # the client's value cell: skips its per-call checks, which we do here
        self._lock = _cell_lock(self._value)
        self._drop = drop

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``; a negative amount, NaN or infinity is dropped and counted."""
        if type(amount) is not float:
            amount = as_float(amount)
        if 0.0 <= amount < INF:
            lock = self._lock
            if lock is None:
                self._value.inc(amount)
            else:  # the cell's own update, under its own lock, without a call per increment
                lock.acquire()
                self._value._value += amount
                lock.release()
        elif -INF < amount < 0.0:
            self._drop("negative")  # would make rate() see a counter reset
        else:
            self._drop("non_finite")

    def get(self) -> float:
        """The current value."""
        return float(self._value.get())


class GaugeChild:
    """One gauge series."""

    __slots__ = ("_drop", "_raw")

    def __init__(self, raw: Any, drop: Callable[[DropReason], None]) -> None:
        self._raw = raw
        self._drop = drop

    def set(self, value: float) -> None:
        """Set the value; NaN or infinity is dropped and counted."""
        if type(value) is not float:
            value = as_float(value)
        if value - value == 0.0:
            self._raw.set(value)
        else:
            self._drop("non_finite")

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        if type(amount) is not float:
            amount = as_float(amount)
        if amount - amount == 0.0:
            self._raw.inc(amount)
        else:
            self._drop("non_finite")

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        self.inc(-amount)

    def get(self) -> float:
        """The current value."""
        return float(self._raw._value.get())


class HistogramChild:
    """One histogram series; also tracks the min and max of the current window slice."""

    __slots__ = (
        "_bounds", "_buckets", "_cells", "_drop", "_ex_due", "_lock", "_sum", "_sum_lock", "key", "vmax", "vmin",
    )  # fmt: skip

    def __init__(self, raw: Any, drop: Callable[[DropReason], None], key: Hashable) -> None:
        self._sum = raw._sum
        self._buckets = raw._buckets
        # in-process cells are updated inline under their own locks (no call per cell); else their inc()
        self._sum_lock = _cell_lock(self._sum)
        locks = [_cell_lock(b) for b in self._buckets]
        self._cells: tuple[tuple[Any, Any], ...] | None = (
            None if self._sum_lock is None or None in locks else tuple(zip(self._buckets, locks, strict=True))
        )
        self._bounds = tuple(raw._upper_bounds)
        self._drop = drop
        self._lock = threading.Lock()
        self._ex_due = [0.0] * len(self._bounds)
        self.key = key
        self.vmin = INF
        self.vmax = -INF

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Observe ``value``; a bound or given trace id becomes the bucket's exemplar (rate-bounded).

        A negative value, NaN or infinity is dropped and counted: a negative one would make ``_sum``
        go down, which OpenMetrics parsers reject for the whole scrape.
        """
        if type(value) is not float:
            value = as_float(value)
        if not 0.0 <= value < INF:
            self._drop("non_finite" if value - value != 0.0 else "negative")
            return
        i = bisect_left(self._bounds, value)
        cells = self._cells
        if cells is None:
            self._sum.inc(value)
            self._buckets[i].inc(1.0)
        else:
            lock = self._sum_lock
            lock.acquire()
            self._sum._value += value
            lock.release()
            bucket, lock = cells[i]
            lock.acquire()
            bucket._value += 1.0
            lock.release()
        if value < self.vmin or value > self.vmax:  # rare after warm-up: lock only for a new extreme
            with self._lock:
                if value < self.vmin:
                    self.vmin = value
                if value > self.vmax:
                    self.vmax = value
        if trace_id is None:
            trace_id = TRACE_ID.get()
            if trace_id is None:
                trace_id = otel_trace_id()  # an active OpenTelemetry span names the trace too
                if trace_id is None:
                    return
        now = time.monotonic()
        if now >= self._ex_due[i] and len(trace_id) <= MAX_TRACE_ID_LENGTH:
            self._ex_due[i] = now + EXEMPLAR_REFRESH_SECONDS
            # the exemplar names the trace as /traces/{id} and the trace store know it
            exemplar_id = canonical_trace_id(trace_id) if len(trace_id) == 36 else trace_id
            self._buckets[i].set_exemplar(Exemplar({"trace_id": exemplar_id}, value, time.time()))

    def reading(self) -> Reading:
        """Cumulative per-bucket counts and the sum, with this slice's min/max."""
        values = [b.get() for b in self._buckets]
        values.append(self._sum.get())
        return Reading(self.key, values, self.vmin, self.vmax)

    def rotate(self) -> Reading:
        """Like ``reading`` but starts a new slice for min/max."""
        with self._lock:
            vmin, vmax = self.vmin, self.vmax
            self.vmin, self.vmax = INF, -INF
        values = [b.get() for b in self._buckets]
        values.append(self._sum.get())
        return Reading(self.key, values, vmin, vmax)

    @property
    def bounds(self) -> tuple[float, ...]:
        """Bucket upper bounds, +Inf last."""
        return self._bounds


class DroppedChild:
    """Stands in for a series that was refused: every recording is dropped and counted."""

    __slots__ = ("_drop", "_reason")

    def __init__(self, drop: Callable[[DropReason], None], reason: DropReason) -> None:
        self._drop = drop
        self._reason: DropReason = reason

    def inc(self, amount: float = 1.0) -> None:
        """Count the drop (a non-number still raises, as on a kept series)."""
        _ = amount if type(amount) is float else as_float(amount)
        self._drop(self._reason)

    def set(self, value: float) -> None:
        """Count the drop (a non-number still raises, as on a kept series)."""
        _ = value if type(value) is float else as_float(value)
        self._drop(self._reason)

    def dec(self, amount: float = 1.0) -> None:
        """Count the drop (a non-number still raises, as on a kept series)."""
        _ = amount if type(amount) is float else as_float(amount)
        self._drop(self._reason)

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Count the drop (a non-number still raises, as on a kept series)."""
        _ = value if type(value) is float else as_float(value)
        self._drop(self._reason)


Child: TypeAlias = CounterChild | GaugeChild | HistogramChild | DroppedChild


# --- metrics: what agents import ---------------------------------------------------------------------
class Metric:
    """An ARK metric: ``labels(...)`` returns a cached child; unlabelled metrics record directly."""

    def __init__(self, spec: MetricSpec, raw: Any, registry: ArkRegistry) -> None:
        self.spec = spec
        self.raw = raw
        self._registry = registry
        self._children: dict[LabelKey, Child] = {}
        self._lock = threading.Lock()
        self._label_set = frozenset(spec.labels)
        self._only: Any = None if spec.labels else self._make_child(())

    @property
    def name(self) -> str:
        """The exported name."""
        return self.spec.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.name}{{{','.join(self.spec.labels)}}}>"

    def labels(self, *values: object, **named: object) -> Any:
        """The child for these label values (positional in declaration order, or by name)."""
        spec = self.spec
        if not spec.labels:
            raise LabelError(f"{spec.name} has no labels; record on the metric itself")
        if values and named:
            raise LabelError(f"{spec.name}: pass label values positionally or by name, not both")
        if values:
            if len(values) != len(spec.labels):
                raise LabelError(
                    f"{spec.name} takes {len(spec.labels)} label values ({', '.join(spec.labels)}), got {len(values)}"
                )
            key = tuple(str(v) for v in values)
        elif named.keys() == self._label_set:  # every label named, none unknown: no validation to do
            key = tuple(str(named[n]) for n in spec.labels)
        else:
            key = self._key_from_mapping(named)
        child = self._children.get(key)
        if child is None:
            child = self._new_child(key)
        return child

    def _key_from_mapping(self, labels: Mapping[str, object]) -> LabelKey:
        spec = self.spec
        given = labels.keys()
        if not (given <= set(spec.labels) and spec.required_labels <= given):
            missing = sorted(spec.required_labels - given)
            unknown = sorted(set(given) - set(spec.labels))
            parts = [f"{spec.name} expects labels ({', '.join(spec.labels)})"]
            if spec.optional_labels:
                parts.append(f"of which optional: {', '.join(sorted(spec.optional_labels))}")
            if missing:
                parts.append(f"missing: {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown: {', '.join(unknown)}")
            raise LabelError("; ".join(parts))
        return tuple(str(labels.get(name, "")) for name in spec.labels)

    def _new_child(self, key: LabelKey) -> Child:
        drop = self._registry.dropper(self.spec.name)
        if any(len(v) > MAX_LABEL_VALUE_LENGTH for v in key):
            return DroppedChild(drop, "label_too_long")
        with self._lock:
            child = self._children.get(key)
            if child is not None:
                return child
            # ark_obs_dropped_total is bounded by metrics x reasons, and capping it would drop its own drops
            capped = self.spec.name != catalog.ARK_OBS_DROPPED_TOTAL.name
            if capped and len(self._children) >= self._registry.max_series:
                return DroppedChild(drop, "cardinality")
            child = self._make_child(key)
            self._children[key] = child
            return child

    def _make_child(self, key: LabelKey) -> Child:
        raw = self.raw.labels(*key) if key else self.raw
        drop = self._registry.dropper(self.spec.name)
        if self.spec.kind is Kind.COUNTER:
            return CounterChild(raw, drop)
        if self.spec.kind is Kind.GAUGE:
            return GaugeChild(raw, drop)
        return HistogramChild(raw, drop, (self.spec.name, key))

    def _unlabelled(self) -> Any:
        if self._only is None:
            raise LabelError(f"{self.spec.name} needs labels ({', '.join(self.spec.labels)}): use .labels(...)")
        return self._only

    def children(self) -> Iterator[tuple[LabelKey, Child]]:
        """Every live series with its label values (the unlabelled one has an empty key)."""
        if self._only is not None:
            yield (), self._only
        yield from list(self._children.items())

    @property
    def series_count(self) -> int:
        """How many label sets this metric holds."""
        return len(self._children) if self.spec.labels else 1


class CounterMetric(Metric):
    """A counter."""

    def inc(self, amount: float = 1.0) -> None:
        """Increment the unlabelled counter."""
        self._unlabelled().inc(amount)


class GaugeMetric(Metric):
    """A gauge."""

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add to the unlabelled gauge."""
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract from the unlabelled gauge."""
        self._unlabelled().dec(amount)


class HistogramMetric(Metric):
    """A histogram."""

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Observe on the unlabelled histogram."""
        self._unlabelled().observe(value, trace_id)


_METRIC_CLASS: Final[dict[Kind, type[Metric]]] = {
    Kind.COUNTER: CounterMetric,
    Kind.GAUGE: GaugeMetric,
    Kind.HISTOGRAM: HistogramMetric,
}


class ArkRegistry:
    """Owns a ``CollectorRegistry`` and the ARK metrics declared on it.

    Each instance is isolated (its own prometheus registry), so tests and several pipelines in one
    process never see duplicate-registration errors.
    """

    def __init__(self, specs: tuple[MetricSpec, ...] = catalog.CATALOG, max_series: int = DEFAULT_MAX_SERIES):
        if max_series < 1:
            raise ValueError(f"max_series must be at least 1, got {max_series}")
        self.prometheus = CollectorRegistry(auto_describe=True)
        self.max_series = max_series
        self._metrics: dict[str, Metric] = {}
        self._by_name: dict[str, Metric] = {}
        self._lock = threading.RLock()
        self._logged: set[tuple[str, str]] = set()
        self._droppers: dict[str, Callable[[DropReason], None]] = {}
        for spec in specs:
            if not spec.collected:  # scrape-time families belong to their collectors
                self.declare(spec)
        self._dropped = self.get(catalog.ARK_OBS_DROPPED_TOTAL.name)

    # declaration -------------------------------------------------------------------------------------
    def declare(self, spec: MetricSpec) -> Metric:
        """Declare ``spec`` (idempotent for an identical spec); another type or labels raise."""
        with self._lock:
            for name in (spec.name, *spec.aliases):
                existing = self._by_name.get(name)
                if existing is None:
                    continue
                if existing.spec.kind is not spec.kind:
                    raise MetricTypeError(f"{name} is already declared as a {existing.spec.kind}, not a {spec.kind}")
                if existing.spec.labels != spec.labels:
                    raise LabelError(
                        f"{name} is already declared with labels ({', '.join(existing.spec.labels)}), "
                        f"not ({', '.join(spec.labels)})"
                    )
                return existing
            metric = _METRIC_CLASS[spec.kind](spec, self._make_raw(spec), self)
            self._metrics[spec.name] = metric
            for name in (spec.name, *spec.aliases):
                self._by_name[name] = metric
            return metric

    def _make_raw(self, spec: MetricSpec) -> Any:
        common: dict[str, Any] = {"labelnames": spec.labels, "registry": self.prometheus, "unit": ""}
        if spec.kind is Kind.COUNTER:
            # prometheus_client appends _total itself
            return Counter(spec.name.removesuffix("_total"), spec.help, **common)
        if spec.kind is Kind.GAUGE:
            return Gauge(spec.name, spec.help, multiprocess_mode=spec.multiprocess_mode, **common)  # type: ignore[arg-type]
        return Histogram(spec.name, spec.help, buckets=spec.buckets, **common)

    # lookup ------------------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The metric called ``name`` (or an alias); an unknown name raises with the closest ones."""
        metric = self._by_name.get(name)
        if metric is None:
            raise UnknownMetricError(self._unknown_message(name))
        return metric

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown metric {name!r}{hint} (declared: {len(self._metrics)} metrics; see ark_obs.catalog)"

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Metric]:
        return iter(list(self._metrics.values()))

    def specs(self) -> tuple[MetricSpec, ...]:
        """Every declared spec, in declaration order."""
        return tuple(m.spec for m in self._metrics.values())

    # drops -------------------------------------------------------------------------------------------
    def dropper(self, metric: str) -> Callable[[DropReason], None]:
        """A callback that counts (and logs once) a dropped recording for ``metric``."""
        drop = self._droppers.get(metric)
        if drop is None:

            def drop(reason: DropReason, _metric: str = metric) -> None:
                self.drop(_metric, reason)

            self._droppers[metric] = drop
        return drop

    def drop(self, metric: str, reason: DropReason, detail: str = "") -> None:
        """Count a dropped recording in ark_obs_dropped_total and log the first per metric and reason."""
        self._dropped.labels(metric, reason).inc()
        if (metric, reason) not in self._logged:
            self._logged.add((metric, reason))
            log.warning(
                "ark-obs dropped a recording of %s (%s)%s; further drops are only counted in ark_obs_dropped_total",
                metric,
                reason,
                f": {detail}" if detail else "",
            )

    # window source -----------------------------------------------------------------------------------
    def histogram_children(self) -> Iterator[HistogramChild]:
        """Every histogram series in this process."""
        for metric in self:
            if metric.spec.kind is Kind.HISTOGRAM:
                for _, child in metric.children():
                    if isinstance(child, HistogramChild):
                        yield child

    def counter_readings(self) -> Iterator[Reading]:
        """Every counter series' cumulative value, keyed by (name, label values)."""
        for metric in self:
            if metric.spec.kind is Kind.COUNTER:
                for key, child in metric.children():
                    if isinstance(child, CounterChild):
                        yield Reading((metric.spec.name, key), (child.get(),))


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, if any."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") if is_multiprocess() else None
