"""What to judge and how: durations, track selectors and the ``ARK_OBS_CANARY_*`` settings (``CanaryConfig``).

Durations and selectors are parsed here once, for the settings, the CLI options and the HTTP schema alike.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Final

import httpx
from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ark_obs._redact import redact_url

__all__ = [
    "SELECTOR_PATTERN",
    "TRACK_LABEL",
    "CanaryConfig",
    "Duration",
    "Selector",
    "SelectorError",
    "env_name",
    "human_duration",
    "parse_duration",
    "parse_selector",
    "promql_duration",
]

TRACK_LABEL: Final = "track"


# --- durations and selectors --------------------------------------------------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus duration: ``parse_duration("1h30m") == 5400.0``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"not a duration: {value!r} (e.g. 90, 90s, 3m, 1h30m)") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a duration must be positive, not {value!r}")
    return seconds


def promql_duration(seconds: float) -> str:
    """A PromQL range for ``seconds``: whole seconds as ``180s``, otherwise milliseconds."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def human_duration(seconds: float) -> str:
    """``180.0 -> '3m'``, ``5400.0 -> '1h30m'``, ``2.5 -> '2.5s'``."""
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")


class SelectorError(ValueError):
    """A canary or baseline selector that is not a matcher on the ``track`` label."""


# One matcher on `track`; the value may not hold a quote, a backslash or a newline, so it cannot
# end the PromQL string it is put in.
_MATCHER_RE: Final = r'\{?\s*track\s*(=~|!~|!=|=)\s*"([^"\\\n]{0,200})"\s*\}?'
_BARE_TRACK_RE: Final = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}"
_SELECTOR = re.compile(f"^{_MATCHER_RE}$")
_BARE_TRACK = re.compile(f"^{_BARE_TRACK_RE}$")
# The same rule in the HTTP schema, so that what the API documents is what it accepts.
SELECTOR_PATTERN: Final = f"^({_BARE_TRACK_RE}|{_MATCHER_RE})$"


def parse_selector(text: str) -> str:
    """The PromQL matcher a selector means: ``canary``, ``track="canary"`` or ``{track=~"canary.*"}``.

    >>> parse_selector("canary")
    'track="canary"'

    Only ``track`` can be selected: the recording rules aggregate ``by (track)``, so every other
    label (instance, job, pod) is gone from the series the checks read.
    """
    text = text.strip()
    if _BARE_TRACK.fullmatch(text):
        return f'{TRACK_LABEL}="{text}"'
    match = _SELECTOR.fullmatch(text)
    if match is None:
        raise SelectorError(
            f"{text!r} is not a track selector: give a track value (canary) or one matcher on the "
            'track label (track="canary", track=~"canary|canary-eu"); the ARK recording rules keep '
            "only the track label, so no other label can be selected"
        )
    op, value = match.groups()
    return f'{TRACK_LABEL}{op}"{value}"'


def _selector(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a selector is a string, not {value!r}")
    return parse_selector(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Selector = Annotated[str, BeforeValidator(_selector)]


# --- configuration ------------------------------------------------------------------------------------
class CanaryConfig(BaseSettings):
    """How to judge a canary: every field is also an ``ARK_OBS_CANARY_<NAME>`` environment variable.

    Durations are seconds or Prometheus durations (``90``, ``3m``, ``1h``).
    """

    model_config = SettingsConfigDict(
        env_prefix="ARK_OBS_CANARY_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    # ARK_OBS_CANARY_PROMETHEUS_URL, else the status page's ARK_OBS_PROMETHEUS_URL: one Prometheus to set
    prometheus_url: str = Field(
        default="http://127.0.0.1:9090",
        validation_alias=AliasChoices("prometheus_url", "ARK_OBS_CANARY_PROMETHEUS_URL", "ARK_OBS_PROMETHEUS_URL"),
        description="Base URL of the Prometheus that scrapes both tracks (unset: ARK_OBS_PROMETHEUS_URL, "
        "else the default).",
    )
    selector: Selector = Field(default='track="canary"', description="The canary: a track value or matcher.")
    baseline_selector: Selector = Field(default='track="stable"', description="The baseline (stable) track.")
    job: str = Field(default="ark-obs", pattern=r"^[A-Za-z_][A-Za-z0-9_\-.]{0,99}$", description="Scrape job.")
    timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="Timeout of each Prometheus request.")
    step: Duration = Field(default=15.0, description="Resolution of history queries: the evaluation interval.")
    min_decisions: int = Field(
        default=20, ge=1, description="Fewest canary decisions in the last minute for a denial or latency verdict."
    )
    sigmas: float = Field(default=3.0, gt=0, description="Denial spike: standard deviations above the mean.")
    sigma_floor: float = Field(
        default=0.01, ge=0, description="Denial spike: smallest standard deviation, in denials per decision."
    )
    baseline_window: Duration = Field(default=3600.0, description="Denial spike: history of the baseline.")
    baseline_min_age: Duration = Field(
        default=1800.0, description="Denial spike: the baseline's history must reach back this far."
    )
    baseline_min_points: int = Field(
        default=20, ge=2, description="Denial spike: fewest baseline samples (one per step) for a verdict."
    )
    quarantine_window: Duration = Field(default=600.0, description="Any quarantine in this window fails.")
    latency_threshold_ms: float = Field(default=400.0, gt=0, description="p95 decision latency threshold (ms).")
    latency_for: Duration = Field(default=180.0, description="How long the p95 must stay above the threshold.")
    cache_seconds: float = Field(
        default=5.0, ge=0, le=3600, description="GET/POST /canary/analysis reuse a verdict this long."
    )
    max_concurrent_analyses: int = Field(
        default=4,
        ge=1,
        le=100,
        description="Distinct analyses running at once; a request for another one gets 429 (identical ones share).",
    )

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parsed = httpx.URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"must be an http:// or https:// URL, not {redact_url(value)!r}")
        return value


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: ``env_name("min_decisions") == "ARK_OBS_CANARY_MIN_DECISIONS"``."""
    return f"ARK_OBS_CANARY_{field.upper()}"
