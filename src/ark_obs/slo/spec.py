"""What an SLO is: the four kinds as pydantic models, durations, and reading them from TOML/YAML files.

Every mistake in a file is reported at once (``SloConfigError.errors``), with its field path.
"""

from __future__ import annotations

import math
import operator as op
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal, TypeAlias

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

from ark_obs.catalog import WATCHDOG_QUARANTINES_TOTAL, Kind
from ark_obs.registry import ArkObsError, ArkRegistry, UnknownMetricError

__all__ = [
    "BURN_WINDOWS",
    "WORKBOOK_BURN_ALERTS",
    "AvailabilitySlo",
    "BurnAlert",
    "GaugeSlo",
    "LatencySlo",
    "Operator",
    "RatioSlo",
    "SloConfigError",
    "SloSpec",
    "Status",
    "default_slos",
    "format_duration",
    "load_slo_file",
    "parse_duration",
    "parse_slos",
    "validate_specs",
]

DEFAULTS_RESOURCE: Final = "defaults.toml"
DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS: Final = 5.0
DEFAULT_MIN_EVENTS: Final = 1
# The SRE workbook's short burn-rate windows; longer ones are the Prometheus recording rules' job.
BURN_WINDOWS: Final[tuple[tuple[str, float], ...]] = (("5m", 300.0), ("30m", 1800.0), ("1h", 3600.0))


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


# --- burn-rate alerts ------------------------------------------------------------------------------
class BurnAlert(BaseModel):
    """One leg of a multi-window multi-burn-rate alert: the burn rate exceeds ``factor`` over both windows.

    The long window says the burn is significant, the short one that it is still going on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tier: Literal["page", "ticket"]
    factor: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    long: Duration
    short: Duration
    # the rule's `for:` (None: none; the short window already debounces, as in the SRE workbook)
    for_: Annotated[Duration | None, Field(alias="for")] = None

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnAlert:
        if self.short >= self.long:
            raise ValueError("short must be shorter than long")
        return self


# The SRE workbook's (ch. 5) legs for a 30-day budget: page 14.4x over 1h and 5m (2% of the budget in an
# hour), 6x over 6h and 30m (5% in 6 hours); ticket 3x over 1d and 2h, 1x over 3d and 6h.
WORKBOOK_BURN_ALERTS: Final[tuple[BurnAlert, ...]] = (
    BurnAlert(tier="page", factor=Decimal("14.4"), long=3600, short=300),
    BurnAlert(tier="page", factor=Decimal("6"), long=21600, short=1800),
    BurnAlert(tier="ticket", factor=Decimal("3"), long=86400, short=7200),
    BurnAlert(tier="ticket", factor=Decimal("1"), long=259200, short=21600),
)


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
    """At least ``quantile`` of the window's events of histogram ``metric`` are at or under ``threshold``.

    ``fallback_metric`` (with ``fallback_labels``): the histogram judged instead over a window in which
    ``metric`` has no event, e.g. a span-derived SLI when agents only send spans. One source per window,
    so nothing is counted twice; the status names the source it used.
    """

    kind: Literal["latency"]
    metric: str
    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    quantile: Ratio = Decimal("0.95")
    window: Duration
    labels: Labels = Field(default_factory=dict)
    min_events: Annotated[int, Field(ge=1)] | None = None
    # None: the SRE workbook's four legs (WORKBOOK_BURN_ALERTS); [] generates no burn-rate alert
    burn_alerts: tuple[BurnAlert, ...] | None = None
    fallback_metric: str | None = None
    fallback_labels: Labels = Field(default_factory=dict)

    @property
    def metrics(self) -> tuple[tuple[str, str, Kind, Labels], ...]:
        primary = ("metric", self.metric, Kind.HISTOGRAM, self.labels)
        if self.fallback_metric is None:
            return (primary,)
        return primary, ("fallback_metric", self.fallback_metric, Kind.HISTOGRAM, self.fallback_labels)

    def validate_against(self, registry: ArkRegistry) -> list[str]:
        errors = super().validate_against(registry)
        if errors:
            return errors
        for _, name, _, _ in self.metrics:
            bounds = registry.get(name).spec.buckets
            if self.threshold not in bounds:
                near = sorted(bounds, key=lambda b: abs(b - self.threshold))[:2]
                errors.append(
                    f"threshold: {self.threshold:g} is not a bucket boundary of {name} "
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
    burn_alerts: tuple[BurnAlert, ...] | None = None

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
    # the generated alert's name while the objective does not hold (ark_obs.slo.rules)
    alert: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=64)] = "ArkSloGaugeViolated"

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
    burn_alerts: tuple[BurnAlert, ...] | None = None

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


def burn_alerts(spec: SloSpec) -> tuple[BurnAlert, ...]:
    """The burn-rate alert legs of an SLO (none for a gauge)."""
    if isinstance(spec, GaugeSlo):
        return ()
    return WORKBOOK_BURN_ALERTS if spec.burn_alerts is None else spec.burn_alerts


def spec_windows(spec: SloSpec) -> tuple[float, ...]:
    """Every window an SLO is judged over, in seconds, ascending: its own and its alerts' (none for a gauge)."""
    if isinstance(spec, GaugeSlo):
        return ()
    return tuple(sorted({spec.window, *(w for a in burn_alerts(spec) for w in (a.long, a.short))}))


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
    text = resources.files("ark_obs.slo").joinpath(DEFAULTS_RESOURCE).read_text(encoding="utf-8")
    return tuple(parse_slos(tomllib.loads(text), f"ark_obs/slo/{DEFAULTS_RESOURCE}"))


def default_slos() -> tuple[SloSpec, ...]:
    """The seed's four SLOs, from the package's ``slo/defaults.toml``."""
    return _defaults()


def validate_specs(
    specs: Iterable[SloSpec],
    registry: ArkRegistry,
    retention_seconds: float,
    scrape_interval_seconds: float | None = None,
) -> list[str]:
    """Every mistake in ``specs`` against a registry and a window retention, as "slos[i].field: message".

    With ``scrape_interval_seconds``, also every window (the SLO's and its burn-rate alerts') shorter
    than two scrape intervals: ``increase()`` over it sees fewer than two samples, so PromQL cannot judge it.
    """
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
        if scrape_interval_seconds is not None:
            errors.extend(f"{where}.{e}" for e in _short_windows(spec, scrape_interval_seconds))
    return errors


def _short_windows(spec: SloSpec, scrape_interval: float) -> list[str]:
    if isinstance(spec, GaugeSlo):
        return []
    named = [("window", spec.window)]
    for i, alert in enumerate(spec.burn_alerts or ()):
        named += [(f"burn_alerts[{i}].long", alert.long), (f"burn_alerts[{i}].short", alert.short)]
    return [
        f"{field}: {format_duration(seconds)} is shorter than two scrape intervals "
        f"(2 x {format_duration(scrape_interval)}): increase() over it sees fewer than two samples"
        for field, seconds in named
        if seconds < 2 * scrape_interval
    ]
