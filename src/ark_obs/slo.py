"""SLOs as data, evaluated from the registry's own sliding window.

>>> from ark_obs.metrics import MetricsCollector
>>> report = MetricsCollector(ticker=False).check_slos()
>>> report.total, report.met + report.violated + report.no_data
(4, 4)

Four kinds of SLO, each a pydantic model (the seed's four are the defaults, in ``slo_defaults.toml``;
``load_slo_file`` reads a TOML or YAML file with the same fields and reports every mistake at once):

- ``latency``: a histogram and a ``threshold`` that must be one of its bucket boundaries; the SLO holds
  when at least ``quantile`` (0.95) of the window's events are at or under the threshold. Compliance
  is counted exactly from the buckets (an event of exactly 400.0 ms is good); the p95 shown as
  ``value`` is interpolated inside its bucket, which always agrees with the verdict because the
  threshold is a boundary.
- ``availability``: (window - downtime) / window, clamped to [0, 1], downtime = increase of
  ``watchdog_quarantines_total`` over the window x 5 s (the seed's heuristic; configurable).
- ``gauge``: a gauge compared with an objective (ethics drift: ``ark_ethics_drift == 0``), no window.
- ``ratio``: good events / total events over the window, from two counters.

Every windowed value comes from ``MetricsCollector.increase()`` (Prometheus ``increase()`` semantics,
counter resets included), so one process and multiprocess mode give the same answer, and memory and
cost do not depend on the number of observations.

The seed's recording rule ``1 - (rate(watchdog_quarantines_total[5m]) * 5 / 300)`` is dimensionally
wrong: ``rate()`` is already per second, so dividing by the 300 s window again divides by the window
twice (one quarantine in 5 min gives 0.99994 instead of 0.98333). The right form, which this module
computes in-process and the shipped rules use, is ``1 - increase(watchdog_quarantines_total[5m]) * 5 / 300``
(equivalently ``1 - rate(...[5m]) * 5``), summed over agents and clamped to [0, 1].

``no_data`` semantics (never ``met``, never NaN):

- latency and ratio: fewer than ``min_events`` events in the window (default 1, so an empty window;
  raise it per SLO for low-traffic services). ``value``, the event counts and the compliance are still
  reported when there are some events; the error budget and burn rates are not, and ``ark_slo_met``
  is absent. A short burn-rate window with fewer than ``min_events`` events has no burn rate.
- availability: never ``no_data``, because time passes without traffic. The denominator is always the
  full window, as in the Prometheus rule, so both agree; the time before the process started counts
  as up (the quarantine counter starts with the process, so no quarantine it could see is missed).
  With the default objective a single quarantine in 5 min (5/300 = 1.7% downtime) violates it.
- gauge: ``no_data`` when the gauge has no series matching the SLO's labels. ``ark_ethics_drift`` is
  unlabelled, so it exists at 0 from the start: "no drift reported" is met, as Prometheus sees it too.

Error budget remaining = 1 - burn rate over the SLO window (negative once overspent); burn rate =
error ratio / (1 - compliance objective), for the 5m, 30m and 1h windows that fit in the retention.
"""

from __future__ import annotations

import math
import operator as op
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from ark_obs._seeddict import SeedDict
from ark_obs.catalog import WATCHDOG_QUARANTINES_TOTAL, Kind
from ark_obs.registry import ArkObsError, ArkRegistry, UnknownMetricError
from ark_obs.window import histogram_quantile

if TYPE_CHECKING:
    from ark_obs.metrics import MetricsCollector

__all__ = [
    "BURN_WINDOWS",
    "AvailabilitySlo",
    "GaugeSlo",
    "LatencySlo",
    "Operator",
    "RatioSlo",
    "SloConfigError",
    "SloEngine",
    "SloReport",
    "SloSpec",
    "SloStatus",
    "Status",
    "default_slos",
    "format_duration",
    "load_slo_file",
    "parse_duration",
    "parse_slos",
    "validate_specs",
]

DEFAULTS_RESOURCE: Final = "slo_defaults.toml"
DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS: Final = 5.0
DEFAULT_MIN_EVENTS: Final = 1
# The SRE workbook's short burn-rate windows; longer ones are the Prometheus recording rules' job.
BURN_WINDOWS: Final[tuple[tuple[str, float], ...]] = (("5m", 300.0), ("30m", 1800.0), ("1h", 3600.0))
# Reported floats are rounded to this many significant digits, so 1 - 0.005 prints as 0.995.
_SIGNIFICANT_DIGITS: Final = 12


class SloConfigError(ArkObsError, ValueError):
    """An SLO configuration with mistakes; ``errors`` lists every one as "field.path: message"."""

    def __init__(self, errors: Sequence[str], source: str = "SLO config") -> None:
        self.errors = list(errors)
        self.source = source
        listing = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{listing}")


# --- durations ---------------------------------------------------------------------------------------
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds in a duration: a number of seconds or Prometheus-style text.

    >>> parse_duration("5m"), parse_duration("1h30m"), parse_duration(90)
    (300.0, 5400.0, 90.0)
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration such as '300s', '5m' or '1h30m'")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number of seconds or text such as '5m'")
    if not 0 < seconds < math.inf:
        raise ValueError(f"a duration must be positive and finite, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style text for ``seconds``: ``300 -> "5m"``, ``5400 -> "1h30m"``."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


Duration: TypeAlias = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
# Decimals keep objectives exact (0.995 stays 0.995); JSON shows them as numbers, not strings.
Number: TypeAlias = Annotated[
    Decimal, Field(allow_inf_nan=False), PlainSerializer(float, return_type=float, when_used="json")
]
Ratio: TypeAlias = Annotated[
    Decimal,
    Field(gt=0, lt=1, allow_inf_nan=False),
    PlainSerializer(float, return_type=float, when_used="json"),
]
Labels: TypeAlias = dict[str, str]
SloId: TypeAlias = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


class Operator(StrEnum):
    """How a value is compared with its objective."""

    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"
    EQ = "=="
    NE = "!="

    def holds(self, value: Decimal, objective: Decimal) -> bool:
        """Whether ``value <op> objective``."""
        return _COMPARE[self](value, objective)


_COMPARE: Final[dict[Operator, Callable[[Decimal, Decimal], bool]]] = {
    Operator.GE: op.ge,
    Operator.GT: op.gt,
    Operator.LE: op.le,
    Operator.LT: op.lt,
    Operator.EQ: op.eq,
    Operator.NE: op.ne,
}


class Status(StrEnum):
    """An SLO's verdict."""

    MET = "met"
    VIOLATED = "violated"
    NO_DATA = "no_data"


# --- specs -------------------------------------------------------------------------------------------
class _SloBase(BaseModel):
    """Fields every SLO has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: SloId
    kind: str
    description: str = ""

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        """(field, metric name, required type, label selector) of every metric the SLO reads."""
        raise NotImplementedError

    def validate_against(self, registry: ArkRegistry) -> list[str]:
        """Mistakes only the registry can see, as "field: message" (metric exists, type, labels)."""
        errors: list[str] = []
        for field, name, kind, labels in self.metrics:
            try:
                spec = registry.get(name).spec
            except UnknownMetricError as exc:
                errors.append(f"{field}: {exc}")
                continue
            if spec.kind is not kind:
                errors.append(f"{field}: {name} is a {spec.kind}, a {self.kind} SLO needs a {kind}")
                continue
            label_field = field.replace("metric", "labels")
            for label in sorted(set(labels) - set(spec.labels)):
                labels_listed = ", ".join(spec.labels) or "none"
                errors.append(f"{label_field}.{label}: {name} has no label {label!r} (labels: {labels_listed})")
        return errors


class LatencySlo(_SloBase):
    """At least ``quantile`` of the window's events of histogram ``metric`` are at or under ``threshold``."""

    kind: Literal["latency"]
    metric: str
    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    quantile: Ratio = Decimal("0.95")
    window: Duration
    labels: Labels = Field(default_factory=dict)
    min_events: Annotated[int, Field(ge=1)] | None = None

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        return (("metric", self.metric, Kind.HISTOGRAM, self.labels),)

    def validate_against(self, registry: ArkRegistry) -> list[str]:
        errors = super().validate_against(registry)
        if not errors and self.threshold not in registry.get(self.metric).spec.buckets:
            bounds = registry.get(self.metric).spec.buckets
            near = sorted(bounds, key=lambda b: abs(b - self.threshold))[:2]
            errors.append(
                f"threshold: {self.threshold:g} is not a bucket boundary of {self.metric} "
                f"(nearest: {', '.join(f'{b:g}' for b in sorted(near))}); compliance is counted per bucket"
            )
        return errors


class AvailabilitySlo(_SloBase):
    """(window - downtime) / window >= ``objective``, downtime = increase(``metric``) x seconds per event."""

    kind: Literal["availability"]
    objective: Ratio
    window: Duration
    metric: str = WATCHDOG_QUARANTINES_TOTAL.name
    labels: Labels = Field(default_factory=dict)
    # None: the engine's setting (5 s, the seed's heuristic)
    downtime_per_event_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        return (("metric", self.metric, Kind.COUNTER, self.labels),)


class GaugeSlo(_SloBase):
    """Gauge ``metric`` (its series combined by ``aggregation``) compared with ``objective``; no window."""

    kind: Literal["gauge"]
    metric: str
    operator: Operator
    objective: Number
    labels: Labels = Field(default_factory=dict)
    aggregation: Literal["max", "min", "sum"] = "max"

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        return (("metric", self.metric, Kind.GAUGE, self.labels),)


class RatioSlo(_SloBase):
    """increase(``good_metric``) / increase(``total_metric``) over the window >= ``objective``."""

    kind: Literal["ratio"]
    good_metric: str
    total_metric: str
    objective: Ratio
    window: Duration
    good_labels: Labels = Field(default_factory=dict)
    total_labels: Labels = Field(default_factory=dict)
    min_events: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _distinct(self) -> RatioSlo:
        if self.good_metric == self.total_metric and self.good_labels == self.total_labels:
            raise ValueError("good_metric and total_metric select the same series: the ratio is always 1")
        return self

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        return (
            ("good_metric", self.good_metric, Kind.COUNTER, self.good_labels),
            ("total_metric", self.total_metric, Kind.COUNTER, self.total_labels),
        )


SloSpec: TypeAlias = Annotated[LatencySlo | AvailabilitySlo | GaugeSlo | RatioSlo, Field(discriminator="kind")]
_SPEC_ADAPTER: Final[TypeAdapter[SloSpec]] = TypeAdapter(SloSpec)
_KINDS: Final = ("latency", "availability", "gauge", "ratio")


def _objective(spec: SloSpec) -> Decimal:
    """What ``value`` is compared with, in the value's unit (the seed table's "Target")."""
    if isinstance(spec, LatencySlo):
        return Decimal(repr(spec.threshold))
    return spec.objective


def _operator(spec: SloSpec) -> Operator:
    if isinstance(spec, LatencySlo):
        return Operator.LE
    if isinstance(spec, GaugeSlo):
        return spec.operator
    return Operator.GE


def _compliance_objective(spec: SloSpec) -> Decimal | None:
    """The share of good events the SLO requires (None for a gauge)."""
    if isinstance(spec, LatencySlo):
        return spec.quantile
    if isinstance(spec, GaugeSlo):
        return None
    return spec.objective


# --- loading -----------------------------------------------------------------------------------------
def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_slos(data: object, source: str = "SLO config", registry: ArkRegistry | None = None) -> list[SloSpec]:
    """Specs from parsed TOML/YAML data (``{"slos": [...]}``); raises SloConfigError listing every mistake.

    With ``registry`` it also checks each SLO against it (``validate_against``).
    """
    if not isinstance(data, Mapping):
        raise SloConfigError(["(top level): expected a mapping with an 'slos' list"], source)
    errors = [f"{key}: unknown top-level key (expected 'slos')" for key in data if key != "slos"]
    items = data.get("slos")
    if not isinstance(items, list):
        errors.append("slos: missing or not a list of SLOs")
        raise SloConfigError(errors, source)
    specs: list[SloSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"slos[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{where}: expected a table/mapping of SLO fields")
            continue
        # duplicates are found among invalid entries too: every mistake is reported in one pass
        slo_id = item.get("id")
        if isinstance(slo_id, str):
            if slo_id in seen:
                errors.append(f"{where}.id: {slo_id!r} is already used by slos[{seen[slo_id]}]")
            seen.setdefault(slo_id, i)
        if item.get("kind") not in _KINDS:
            errors.append(f"{where}.kind: {item.get('kind')!r} is not one of {', '.join(_KINDS)}")
            continue
        try:
            spec = _SPEC_ADAPTER.validate_python(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = list(err["loc"])
                if loc and loc[0] in _KINDS:  # the discriminator's tag, not a field
                    loc = loc[1:]
                errors.append(f"{_path([where, *loc])}: {err['msg']}")
            continue
        if registry is not None:
            errors.extend(f"{where}.{e}" for e in spec.validate_against(registry))
        specs.append(spec)
    if errors:
        raise SloConfigError(errors, source)
    return specs


def load_slo_file(path: str | Path, registry: ArkRegistry | None = None) -> list[SloSpec]:
    """Specs from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; every mistake in one SloConfigError.

    >>> load_slo_file("slos.toml")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SloConfigError([f"(file): cannot read: {exc.strerror or exc}"], str(path)) from exc
    return parse_slos(_parse_text(text, path.suffix.lower(), str(path)), str(path), registry)


def _parse_text(text: str, suffix: str, source: str) -> object:
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SloConfigError([f"(syntax): {exc}"], source) from exc
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SloConfigError([f"(syntax): {exc}"], source) from exc
    raise SloConfigError([f"(file): unknown format {suffix!r}: use .toml, .yaml or .yml"], source)


@lru_cache(maxsize=1)
def _defaults() -> tuple[SloSpec, ...]:
    text = resources.files("ark_obs").joinpath(DEFAULTS_RESOURCE).read_text(encoding="utf-8")
    return tuple(parse_slos(tomllib.loads(text), f"ark_obs/{DEFAULTS_RESOURCE}"))


def default_slos() -> tuple[SloSpec, ...]:
    """The seed's four SLOs, from the package's ``slo_defaults.toml``."""
    return _defaults()


def validate_specs(specs: Iterable[SloSpec], registry: ArkRegistry, retention_seconds: float) -> list[str]:
    """Every mistake in ``specs`` against a registry and a window retention, as "slos[i].field: message"."""
    errors: list[str] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        where = f"slos[{i}]"
        if spec.id in seen:
            errors.append(f"{where}.id: {spec.id!r} is already used by slos[{seen[spec.id]}]")
        seen.setdefault(spec.id, i)
        errors.extend(f"{where}.{e}" for e in spec.validate_against(registry))
        window = getattr(spec, "window", None)
        if window is not None and window > retention_seconds:
            errors.append(
                f"{where}.window: {format_duration(window)} is longer than the collector's retention "
                f"({format_duration(retention_seconds)})"
            )
    return errors


# --- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class SloStatus(SeedDict):
    """One SLO's evaluation. ``value <operator> objective`` is the statement the SLO makes.

    Typed (``status.met``) and the seed's dict (``status["met"]``, ``json.dumps(status)``).
    """

    name: str
    kind: str
    description: str
    value: Annotated[float | None, Field(description="the indicator: p95 (ms), availability, gauge value, ratio")]
    objective: Annotated[float, Field(description="what value is compared with, in value's unit (400 ms, 0.995)")]
    operator: Operator
    window: Annotated[str | None, Field(description="the SLO window, e.g. '5m'; None for a gauge")]
    window_seconds: float | None
    status: Status
    met: Annotated[bool, Field(description="status == 'met' (no_data is never met)")]
    good_events: Annotated[float | None, Field(description="good events in the window (seconds up for availability)")]
    total_events: float | None
    compliance: Annotated[float | None, Field(description="good_events / total_events")]
    compliance_objective: Annotated[float | None, Field(description="the share of good events required")]
    error_budget_remaining: Annotated[float | None, Field(description="1 - burn_rate; negative once overspent")]
    burn_rate: Annotated[float | None, Field(description="error ratio / (1 - compliance_objective) over the window")]
    burn_rates: Annotated[dict[str, float], Field(description="burn rate per short window (5m, 30m, 1h) with data")]
    min_events: int | None


@dataclass(frozen=True, slots=True, eq=False)
class SloReport(SeedDict):
    """Every SLO's status, in the seed's shape (slos, total, met, violated, violations) and more.

    Typed (``report.violated``) and the seed's dict: ``report["violated"]``, ``"slos" in report``,
    ``json.dumps(report)``; each item of ``report["slos"]`` is an ``SloStatus``, itself a dict.
    """

    slos: list[SloStatus]
    total: int
    met: int
    violated: int
    no_data: int
    violations: Annotated[list[str], Field(description="names of the violated SLOs")]
    availability_ratio: Annotated[dict[str, float], Field(description="availability per window (5m, 30m, 1h)")]
    evaluated_at: float


# --- evaluation --------------------------------------------------------------------------------------
_Increase: TypeAlias = tuple[tuple[float, ...], float, float] | None
_Memo: TypeAlias = dict[tuple[str, float, tuple[tuple[str, str], ...]], _Increase]


def _clean(x: float) -> float:
    """``x`` rounded to 12 significant digits: exact-looking output, never NaN (callers pass finite x)."""
    return float(f"{x:.{_SIGNIFICANT_DIGITS}g}")


def _at_least(good: float, total: float, share: Decimal) -> bool:
    """``good / total >= share`` exactly: 19 of 20 meets 0.95 (floats decide only clear cases)."""
    margin = good - float(share) * total
    if abs(margin) > 1e-9 * total:
        return margin > 0
    return Fraction(good) >= Fraction(share) * Fraction(total)


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
    """Evaluates SLO specs on a MetricsCollector's window and exposes them at scrape time.

    >>> from ark_obs.metrics import MetricsCollector
    >>> collector = MetricsCollector(ticker=False)
    >>> engine = SloEngine(collector)           # the seed's four SLOs; registers the scrape collector
    >>> engine.check()["total"]
    4

    Building an engine validates the specs against the collector's registry and retention (every
    mistake in one SloConfigError) and registers its scrape-time collector (``ark_obs.collector``);
    the newest engine built on a collector is the one its scrapes show.
    """

    def __init__(
        self,
        collector: MetricsCollector,
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
        self._bounds = {
            s.id: (*collector.registry.get(s.metric).spec.buckets, math.inf)
            for s in self.specs
            if isinstance(s, LatencySlo)
        }
        if register:
            from ark_obs.collector import SloCollector

            SloCollector.attach(collector, self)

    @classmethod
    def from_file(cls, collector: MetricsCollector, path: str | Path, **kwargs: Any) -> SloEngine:
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
        for name, seconds in self.burn_windows:
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
        )

    def _increase(self, name: str, window: float, labels: Labels, memo: _Memo) -> _Increase:
        label_key = tuple(sorted(labels.items()))
        key = (name, window, label_key)
        try:
            return memo[key]
        except KeyError:
            # one reading of the series serves every window this check will ask of it
            windows = {window, *(seconds for _, seconds in self.burn_windows)}
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
        inc = self._increase(spec.metric, window, spec.labels, memo)
        if inc is None:
            return 0.0, 0.0, None
        values, vmin, vmax = inc
        counts = values[:-1]
        bounds = self._bounds[spec.id]
        total = math.fsum(counts)
        if total <= 0:
            return 0.0, 0.0, None
        # events at or under the threshold, which is a bucket boundary: counted exactly
        good = math.fsum(counts[: bounds.index(spec.threshold) + 1])
        p = histogram_quantile(float(spec.quantile), counts, bounds, vmin, vmax) if value else None
        return good, total, p

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
        )
