"""The SLO engine: every SLO evaluated from a ``MetricSource``'s sliding window, exactly.

Windowed values are ``increase()`` over the source's window (counter resets included), so one
process and multiprocess mode agree and cost does not depend on the number of observations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, TypeAlias

from ark_obs.slo.collector import SloCollector
from ark_obs.slo.report import SloReport, SloStatus
from ark_obs.slo.spec import (
    BURN_WINDOWS,
    DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS,
    DEFAULT_MIN_EVENTS,
    AvailabilitySlo,
    GaugeSlo,
    Labels,
    LatencySlo,
    Operator,
    RatioSlo,
    SloConfigError,
    SloSpec,
    Status,
    _compliance_objective,
    _objective,
    _operator,
    default_slos,
    format_duration,
    load_slo_file,
    spec_windows,
    validate_specs,
)
from ark_obs.source import Increase, MetricSource
from ark_obs.window import histogram_quantile, quantile_is_lower_bound

__all__ = ["SloEngine"]

# Reported floats are rounded to this many significant digits, so 1 - 0.005 prints as 0.995.
_SIGNIFICANT_DIGITS: Final = 12

# --- evaluation --------------------------------------------------------------------------------------
_Memo: TypeAlias = dict[tuple[str, float, tuple[tuple[str, str], ...]], Increase]


def _clean(x: float) -> float:
    """``x`` rounded to 12 significant digits: exact-looking output, never NaN (callers pass finite x)."""
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


def _at_least(good: float, total: float, share: Decimal) -> bool:
    """``good / total >= share`` exactly: 19 of 20 meets 0.95 (floats decide only clear cases)."""
    margin = good - float(share) * total
    if abs(margin) > 1e-9 * total:
        return margin > 0
    return Fraction(good) >= Fraction(share) * Fraction(total)


def _selector(name: str, labels: Labels) -> str:
    """``name{k="v",...}``, as PromQL writes a selector."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _opt(x: float | None) -> float | None:
    return None if x is None else _clean(x)


def _shown(value: float | None, operator: Operator, objective: Decimal, status: Status) -> float | None:
    """``value`` as reported: rounded for reading, but never on the other side of the objective from the verdict.

    p95 of events a few ulps above a 400 ms threshold rounds to 400.0, which reads as met next to
    "violated"; then the unrounded value is shown, or the nearest float on the verdict's side when the
    interpolation itself landed on the threshold (the verdict counts events exactly, the value does not).
    """
    if value is None:
        return None
    shown = _clean(value)
    met = status is Status.MET
    if status is Status.NO_DATA or operator.holds(Decimal(repr(shown)), objective) == met:
        return shown
    if operator.holds(Decimal(repr(value)), objective) == met:
        return value
    target = float(objective)
    if met:  # only <=, >= and == can be met by a value the float arithmetic put across the line
        return target
    if operator in (Operator.LE, Operator.LT, Operator.EQ):
        return math.nextafter(target, math.inf)
    if operator in (Operator.GE, Operator.GT):
        return math.nextafter(target, -math.inf)
    return value


class SloEngine:
    """Evaluates SLO specs on a MetricSource's window and exposes them at scrape time.

    >>> from ark_obs.metrics import MetricsCollector
    >>> collector = MetricsCollector(ticker=False)
    >>> engine = SloEngine(collector)           # the seed's four SLOs; registers the scrape collector
    >>> engine.check()["total"]
    4

    Building an engine validates the specs against the collector's registry and retention (every
    mistake in one SloConfigError) and registers its scrape-time collector (``ark_obs.slo.collector``);
    the newest engine built on a collector is the one its scrapes show.
    """

    def __init__(
        self,
        collector: MetricSource,
        specs: Iterable[SloSpec] | None = None,
        *,
        min_events: int = DEFAULT_MIN_EVENTS,
        availability_downtime_per_quarantine_seconds: float = DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS,
        register: bool = True,
    ) -> None:
        if min_events < 1:
            raise ValueError(f"min_events must be at least 1, got {min_events}")
        if not 0 < availability_downtime_per_quarantine_seconds < math.inf:
            raise ValueError("availability_downtime_per_quarantine_seconds must be positive and finite")
        self.collector = collector
        self.specs: tuple[SloSpec, ...] = tuple(default_slos() if specs is None else specs)
        self.min_events = min_events
        self.downtime_per_quarantine = availability_downtime_per_quarantine_seconds
        self.retention = collector.window.retention
        errors = validate_specs(self.specs, collector.registry, self.retention)
        if errors:
            raise SloConfigError(errors, "SLO specs")
        self.burn_windows = tuple((n, s) for n, s in BURN_WINDOWS if s <= self.retention)
        # per SLO: the workbook's short windows and its own burn-rate alerts' windows that fit the retention,
        # so /slos has a burn rate at every window the generated rules alert on (ark_obs.slo.rules)
        self._windows = {
            spec.id: tuple(
                (format_duration(w), w)
                for w in sorted({s for _, s in self.burn_windows} | set(spec_windows(spec)))
                if w <= self.retention
            )
            for spec in self.specs
        }
        self._read_windows = sorted(
            {w for ws in self._windows.values() for _, w in ws} | {s for _, s in self.burn_windows}
        )
        self._bounds = {
            name: (*collector.registry.get(name).spec.buckets, math.inf)
            for s in self.specs
            if isinstance(s, LatencySlo)
            for _, name, _, _ in s.metrics
        }
        if register:
            SloCollector.attach(collector, self)

    @classmethod
    def from_file(cls, collector: MetricSource, path: str | Path, **kwargs: Any) -> SloEngine:
        """An engine with the SLOs of a TOML/YAML file (what ``ARK_OBS_SLO_FILE`` names)."""
        return cls(collector, load_slo_file(path, collector.registry), **kwargs)

    def check(self) -> SloReport:
        """Evaluate every SLO now."""
        memo: _Memo = {}  # one increase() per metric and window per check, however many SLOs share it
        statuses = [self.evaluate(spec, memo) for spec in self.specs]
        availability = next((s for s in self.specs if isinstance(s, AvailabilitySlo)), None)
        ratios: dict[str, float] = {}
        if availability is not None:
            for name, seconds in self.burn_windows:
                ratios[name] = _clean(self._availability(availability, seconds, memo)[0])
        return SloReport(
            slos=statuses,
            total=len(statuses),
            met=sum(s.status is Status.MET for s in statuses),
            violated=sum(s.status is Status.VIOLATED for s in statuses),
            no_data=sum(s.status is Status.NO_DATA for s in statuses),
            violations=[s.name for s in statuses if s.status is Status.VIOLATED],
            availability_ratio=ratios,
            evaluated_at=self.collector.clock(),
        )

    def evaluate(self, spec: SloSpec, memo: _Memo | None = None) -> SloStatus:
        """Evaluate one SLO."""
        if isinstance(spec, GaugeSlo):
            return self._gauge(spec)
        memo = {} if memo is None else memo
        window: float = spec.window
        good, total, value = self._events(spec, window, memo)
        min_events = self._min_events(spec)
        budget = _compliance_objective(spec)
        assert budget is not None  # only gauges have none
        judged = total >= min_events and total > 0
        if not judged:
            status = Status.NO_DATA
        elif _at_least(good, total, budget):
            status = Status.MET
        else:
            status = Status.VIOLATED
        compliance = min(1.0, good / total) if total > 0 else None
        burn = _clean(self._burn(good, total, budget)) if judged else None
        burn_rates: dict[str, float] = {}
        for name, seconds in self._windows[spec.id]:
            if seconds == window and burn is not None:
                burn_rates[name] = burn
                continue
            g, t, _ = self._events(spec, seconds, memo, value=False)
            if t >= min_events and t > 0:
                burn_rates[name] = _clean(self._burn(g, t, budget))
        return SloStatus(
            name=spec.id,
            kind=spec.kind,
            description=spec.description,
            value=_shown(value, _operator(spec), _objective(spec), status),
            objective=float(_objective(spec)),
            operator=_operator(spec),
            window=format_duration(window),
            window_seconds=window,
            status=status,
            met=status is Status.MET,
            good_events=_clean(good),
            total_events=_clean(total),
            compliance=_shown(compliance, Operator.GE, budget, status),
            compliance_objective=float(budget),
            error_budget_remaining=None if burn is None else _clean(1.0 - burn),
            burn_rate=burn,
            burn_rates=burn_rates,
            min_events=None if isinstance(spec, AvailabilitySlo) else min_events,
            value_is_lower_bound=value is not None and self._lower_bound(spec, window, memo),
            source=self.source(spec, memo),
        )

    def _lower_bound(self, spec: SloSpec, window: float, memo: _Memo) -> bool:
        """Whether a latency SLO's quantile is only a lower bound (``window.quantile_is_lower_bound``)."""
        if not isinstance(spec, LatencySlo):
            return False
        # the series judged (``_latency``): the metric, or its fallback when the metric has no event
        name, labels = spec.metric, spec.labels
        if spec.fallback_metric is not None and self._latency_events(name, labels, window, memo) is None:
            name, labels = spec.fallback_metric, spec.fallback_labels
        inc = self._increase(name, window, labels, memo)
        if inc is None:
            return False
        values, _, vmax = inc
        return quantile_is_lower_bound(float(spec.quantile), values[:-1], self._bounds[name], vmax)

    def _increase(self, name: str, window: float, labels: Labels, memo: _Memo) -> Increase:
        label_key = tuple(sorted(labels.items()))
        key = (name, window, label_key)
        try:
            return memo[key]
        except KeyError:
            # one reading of the series serves every window this check will ask of it
            windows = {window, *self._read_windows}
            for w, inc in self.collector.increase_many(name, sorted(windows), labels).items():
                memo[(name, w, label_key)] = inc
            return memo[key]

    # kinds ----------------------------------------------------------------------------------------------
    def _min_events(self, spec: SloSpec) -> int:
        if isinstance(spec, LatencySlo | RatioSlo) and spec.min_events is not None:
            return spec.min_events
        # time always passes: an availability window always has its full length of "events"
        return 0 if isinstance(spec, AvailabilitySlo) else self.min_events

    @staticmethod
    def _burn(good: float, total: float, objective: Decimal) -> float:
        """Error ratio / error budget: (total - good) / total / (1 - objective)."""
        return max(0.0, total - good) / total / float(1 - objective)

    def _events(
        self, spec: LatencySlo | AvailabilitySlo | RatioSlo, window: float, memo: _Memo, value: bool = True
    ) -> tuple[float, float, float | None]:
        """(good, total, indicator value) over ``window`` seconds."""
        if isinstance(spec, AvailabilitySlo):
            ratio, down = self._availability(spec, window, memo)
            return window - down, window, ratio
        if isinstance(spec, LatencySlo):
            return self._latency(spec, window, memo, value)
        good_inc = self._increase(spec.good_metric, window, spec.good_labels, memo)
        total_inc = self._increase(spec.total_metric, window, spec.total_labels, memo)
        good = good_inc[0][0] if good_inc else 0.0
        total = total_inc[0][0] if total_inc else 0.0
        return good, total, (min(1.0, good / total) if total > 0 else None)

    def _latency(self, spec: LatencySlo, window: float, memo: _Memo, value: bool) -> tuple[float, float, float | None]:
        found = self._latency_events(spec.metric, spec.labels, window, memo)
        if found is None and spec.fallback_metric is not None:
            found = self._latency_events(spec.fallback_metric, spec.fallback_labels, window, memo)
            name = spec.fallback_metric
        else:
            name = spec.metric
        if found is None:
            return 0.0, 0.0, None
        counts, vmin, vmax, total = found
        bounds = self._bounds[name]
        # events at or under the threshold, which is a bucket boundary: counted exactly
        good = math.fsum(counts[: bounds.index(spec.threshold) + 1])
        p = histogram_quantile(float(spec.quantile), counts, bounds, vmin, vmax) if value else None
        return good, total, p

    def _latency_events(
        self, name: str, labels: Labels, window: float, memo: _Memo
    ) -> tuple[list[float], float, float, float] | None:
        """(bucket counts, min, max, total) of histogram ``name`` over ``window``; None without an event."""
        inc = self._increase(name, window, labels, memo)
        if inc is None:
            return None
        values, vmin, vmax = inc
        counts = list(values[:-1])
        total = math.fsum(counts)
        return None if total <= 0 else (counts, vmin, vmax, total)

    def source(self, spec: SloSpec, memo: _Memo | None = None) -> str:
        """The series ``spec`` judges now over its window: its metric, or its fallback when that has no event."""
        if isinstance(spec, LatencySlo) and spec.fallback_metric is not None:
            memo = {} if memo is None else memo
            if self._latency_events(spec.metric, spec.labels, spec.window, memo) is None:
                return _selector(spec.fallback_metric, spec.fallback_labels)
        if isinstance(spec, RatioSlo):
            good, total = _selector(spec.good_metric, spec.good_labels), _selector(spec.total_metric, spec.total_labels)
            return f"{good} / {total}"
        return _selector(spec.metric, spec.labels)

    def _availability(self, spec: AvailabilitySlo, window: float, memo: _Memo) -> tuple[float, float]:
        """(availability, downtime seconds) over ``window``: 1 - increase(quarantines) x 5 s / window."""
        inc = self._increase(spec.metric, window, spec.labels, memo)
        events = inc[0][0] if inc else 0.0
        per_event = spec.downtime_per_event_seconds or self.downtime_per_quarantine
        down = min(window, events * per_event)
        return max(0.0, 1.0 - down / window), down

    def _gauge(self, spec: GaugeSlo) -> SloStatus:
        readings = self.collector.readings(spec.metric, spec.labels)
        values = [r.values[0] for r in readings if math.isfinite(r.values[0])]
        value: float | None = None
        if values:
            agg = spec.aggregation
            value = max(values) if agg == "max" else min(values) if agg == "min" else math.fsum(values)
        if value is None:
            status = Status.NO_DATA
        elif spec.operator.holds(Decimal(repr(value)), spec.objective):  # 0.1 is 0.1, not its binary value
            status = Status.MET
        else:
            status = Status.VIOLATED
        return SloStatus(
            name=spec.id,
            kind=spec.kind,
            description=spec.description,
            value=_shown(value, spec.operator, spec.objective, status),
            objective=float(spec.objective),
            operator=spec.operator,
            window=None,
            window_seconds=None,
            status=status,
            met=status is Status.MET,
            good_events=None,
            total_events=None,
            compliance=None,
            compliance_objective=None,
            error_budget_remaining=None,
            burn_rate=None,
            burn_rates={},
            min_events=None,
            source=self.source(spec),
        )
