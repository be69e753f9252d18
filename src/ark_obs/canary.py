"""Canary analysis: the seed's tripwires as a pass / fail / inconclusive verdict from a real Prometheus.

    ark-obs canary-check --prometheus http://127.0.0.1:9090                  # table, exit 0 / 1 / 2
    ark-obs canary-check --prometheus URL --canary canary --baseline stable --json
    curl -s 127.0.0.1:9871/canary/analysis                                   # the same verdict as JSON

ark-obs does not route traffic: it tells the rollout controller (Argo Rollouts, Flagger) what the
metrics say. Canary and baseline are told apart by a ``track`` label that Prometheus attaches to each
scrape target (see ``deploy/rollouts/README.md``); every ARK recording rule keeps it (``by (track)``),
so the checks below read the same recording rules as the ``ArkCanary*`` and burn-rate alerts.

Checks (each one pass, fail or inconclusive):

- ``hrm_denials_spike``: the canary's HRM denials per decision over the last minute
  (``ark:hrm_denials:rate1m`` over the decision rate) against the baseline's last hour of the same
  ratio: fail above ``mean + 3 sigma`` (statistics and limits: ``spike_threshold``).
- ``quarantine``: any Watchdog quarantine of the canary in the last 10 minutes (the ArkCanaryQuarantine
  expression, first quarantine of a new series included).
- ``decision_latency``: ``ark:ark_pass_latency_ms:p95_rate1m`` above 400 ms at every step of the last
  3 minutes (ArkCanaryDecisionLatencyHigh's ``for: 3m``).
- ``burn_rate_<slo>``: the canary's ``ark:slo_burn_rate:ratio_rate*`` for every SLO of
  ``ark:slo_objective:ratio``, failing on ArkSloBudgetBurnPage's condition (14.4x over 1h and 5m, or
  6x over 6h and 30m).
- ``ethics_drift``: ``ark_ethics_drift`` of the canary above 0.

The overall verdict is fail if any check fails, else inconclusive if any is inconclusive, else pass.
Inconclusive is never a pass and never a fail: too few decisions, a baseline too short, no data, an
unreachable or slow Prometheus, a query that returns nothing, a selector that matches no target, or
rules that are not loaded. Each inconclusive check says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Final

import httpx
from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ark_obs import catalog
from ark_obs._redact import redact_url, scrub

__all__ = [
    "ARGUMENTS",
    "HELP",
    "BaselineStats",
    "Breach",
    "CanaryAnalysis",
    "CanaryConfig",
    "CheckResult",
    "FlaggerMetadata",
    "FlaggerWebhook",
    "PrometheusClient",
    "PrometheusError",
    "SelectorError",
    "Verdict",
    "analyze",
    "baseline_stats",
    "main",
    "parse_duration",
    "parse_selector",
    "router",
    "spike_threshold",
    "sustained_breach",
]

HELP: Final = "Judge a canary against its baseline from Prometheus: exit 0 pass, 1 fail, 2 inconclusive."
TRACK_LABEL: Final = "track"
DECISIONS: Final = catalog.ARK_PASS_LATENCY_MS.name + "_count"
QUARANTINES: Final = catalog.WATCHDOG_QUARANTINES_TOTAL.name
ETHICS_DRIFT: Final = catalog.ARK_ETHICS_DRIFT.name
# Recording rules of deploy/prometheus/rules/: the checks read these, so they cannot disagree with the alerts.
DENIAL_RATE_RULE: Final = "ark:hrm_denials:rate1m"
P95_RULE: Final = "ark:ark_pass_latency_ms:p95_rate1m"
OBJECTIVE_RULE: Final = "ark:slo_objective:ratio"
BURN_RULE: Final = "ark:slo_burn_rate:ratio_rate{window}"
# ArkSloBudgetBurnPage: (long window, short window, burn rate both must exceed).
PAGE_BURNS: Final = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
BURN_WINDOWS: Final = ("5m", "30m", "1h", "6h")


class Verdict(StrEnum):
    """The outcome of one check or of the whole analysis, as Argo Rollouts names its measurements."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


EXIT_STATUS: Final[Mapping[Verdict, int]] = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 2}
# Flagger advances on 200-202 and counts anything else as a failed check. Both refusals are 4xx: an
# inconclusive verdict is an answer, not a server fault (a 5xx would read as ark-obs failing).
WEBHOOK_STATUS: Final[Mapping[Verdict, int]] = {Verdict.PASS: 200, Verdict.FAIL: 412, Verdict.INCONCLUSIVE: 409}


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

    prometheus_url: str = Field(
        default="http://127.0.0.1:9090", description="Base URL of the Prometheus that scrapes both tracks."
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


# --- results ------------------------------------------------------------------------------------------
class CheckResult(BaseModel):
    """One check: its verdict, why, and the numbers behind it (None where there was no data)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="hrm_denials_spike, quarantine, decision_latency, burn_rate_<slo>, ethics_drift")
    verdict: Verdict
    reason: str = Field(description="In words: what was measured against what, or why there is no verdict.")
    value: float | None = Field(default=None, description="The canary's measurement, in `unit`.")
    threshold: float | None = Field(default=None, description="The limit `value` is compared with.")
    unit: str = ""
    queries: list[str] = Field(default_factory=list, description="The PromQL behind the verdict.")


class CanaryAnalysis(BaseModel):
    """The verdict: ``verdict`` is what Argo Rollouts' ``jsonPath: "{$.verdict}"`` reads."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict = Field(description="pass, fail or inconclusive: the worst check (fail > inconclusive > pass).")
    reason: str = Field(description="The failing (or else inconclusive) checks and why; 'all N checks pass'.")
    checks: dict[str, CheckResult] = Field(description="Each check by name, e.g. `checks.quarantine.verdict`.")
    counts: dict[Verdict, int] = Field(description="How many checks passed, failed, were inconclusive.")
    canary: str = Field(description="The canary's PromQL matcher.")
    baseline: str = Field(description="The baseline's PromQL matcher.")
    prometheus: str
    evaluated_at: float | None = Field(description="Prometheus' own time of the evaluation (Unix seconds).")
    duration_seconds: float = Field(description="How long the analysis took.")

    @classmethod
    def of(
        cls,
        checks: Sequence[CheckResult],
        *,
        canary: str,
        baseline: str,
        prometheus: str,
        evaluated_at: float | None,
        duration_seconds: float,
    ) -> CanaryAnalysis:
        """The analysis over ``checks``: fail if one fails, else inconclusive if one is, else pass."""
        counts = {v: sum(c.verdict is v for c in checks) for v in Verdict}
        if counts[Verdict.FAIL]:
            verdict = Verdict.FAIL
        elif counts[Verdict.INCONCLUSIVE] or not checks:
            verdict = Verdict.INCONCLUSIVE
        else:
            verdict = Verdict.PASS
        if verdict is Verdict.PASS:
            reason = f"all {len(checks)} checks pass"
        elif not checks:
            reason = "no check ran"
        else:
            # checks that share a reason (Prometheus down, no target) are named together, once
            by_reason: dict[str, list[str]] = {}
            for c in checks:
                if c.verdict is verdict:
                    by_reason.setdefault(c.reason, []).append(c.name)
            reason = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
        return cls(
            verdict=verdict,
            reason=reason,
            checks={c.name: c for c in checks},
            counts=counts,
            canary=canary,
            baseline=baseline,
            prometheus=prometheus,
            evaluated_at=evaluated_at,
            duration_seconds=round(duration_seconds, 4),
        )


# --- the statistics -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BaselineStats:
    """Mean and population standard deviation of the baseline's samples, and how far back they reach."""

    mean: float
    stddev: float
    points: int
    span_seconds: float


def baseline_stats(samples: Sequence[tuple[float, float]], at: float) -> BaselineStats | None:
    """Statistics of ``(timestamp, value)`` samples, non-finite values dropped; None when none is left.

    The standard deviation is the population one, as PromQL's ``stddev_over_time`` (the alert's).
    ``span_seconds`` is how far before ``at`` the oldest sample lies.
    """
    finite = [(t, v) for t, v in samples if math.isfinite(v) and math.isfinite(t)]
    if not finite:
        return None
    values = [v for _, v in finite]
    return BaselineStats(
        mean=statistics.fmean(values),
        stddev=statistics.pstdev(values),
        points=len(values),
        span_seconds=at - min(t for t, _ in finite),
    )


def spike_threshold(mean: float, stddev: float, decisions: float, *, sigmas: float = 3.0, floor: float = 0.01) -> float:
    """The denials-per-decision ratio above which the canary's last minute is a spike.

    ``mean + sigmas * max(sqrt(stddev**2 + mean / decisions), floor)``, where ``mean`` and ``stddev``
    are the baseline's 1-minute ratios over the last hour and ``decisions`` the canary's decisions in
    its minute. The statistics and their limits:

    - Per decision, not per second: the canary takes a share of the traffic (the seed's 10%), so its
      denials per second are a fraction of the baseline's even when both deny alike. The alert
      (ArkCanaryHrmDenialsSpike) compares each track with its own history, where the share cancels out.
    - ``stddev`` is the baseline's minute-to-minute spread at the baseline's traffic. A canary minute
      with fewer decisions is noisier: if denials are Poisson at the baseline's ratio, the canary's
      ratio has a sampling variance of ``mean / decisions``, added to the baseline's. Without it a
      10% canary would fail on chance alone (one denial in six decisions is a 17% ratio).
    - The floor (0.01 denials per decision, the alert's 0.01/s at the seed's 1 decision/s) keeps a
      perfectly flat baseline (stddev 0) from turning any blip into "infinitely many sigmas".
    - "3 sigma" means a 0.13% one-sided false-alarm rate only for normal, independent samples. The
      samples are 1-minute windows taken every step, so consecutive ones overlap and are correlated:
      the baseline holds fewer independent minutes than points. At low ratios the counts are skewed,
      not normal; the guards (enough decisions, enough baseline history) and the floor keep the test
      away from the worst of that.
    - The baseline's mean is its last hour; the canary's value is its last minute. A change that
      hits both tracks at once (a market event changing the mix of actions) reaches the canary first
      and can fail it until the baseline's hour catches up. Look at the baseline's current ratio.
    - One-sided: a canary that suddenly denies *less* (HRM skipped?) passes this check.
    """
    sigma = math.sqrt(stddev * stddev + max(mean, 0.0) / decisions) if decisions > 0 else math.inf
    return mean + sigmas * max(sigma, floor)


@dataclass(frozen=True, slots=True)
class Breach:
    """How long a series has been above a threshold, up to the end of a range."""

    latest: float | None
    above_seconds: float
    sustained: bool


def sustained_breach(
    samples: Sequence[tuple[float, float]], *, start: float, end: float, step: float, threshold: float
) -> Breach:
    """Whether ``samples`` (a range query's points) stay above ``threshold`` at every step of the range.

    This is a Prometheus alert's ``for``: the condition must hold at every evaluation, and a step
    with no sample (no decision in the window) resets it. ``above_seconds`` counts back from ``end``
    over the consecutive steps above the threshold.
    """
    n_steps = math.floor((end - start) / step + 1e-9) + 1
    by_step: dict[int, float] = {}
    for t, v in samples:
        index = round((t - start) / step)
        if 0 <= index < n_steps and abs(start + index * step - t) < step / 2:
            by_step[index] = v
    latest = by_step.get(n_steps - 1)
    run = 0
    for index in range(n_steps - 1, -1, -1):
        value = by_step.get(index)
        if value is None or not math.isfinite(value) or value <= threshold:
            break
        run += 1
    above = max(run - 1, 0) * step
    return Breach(latest=latest, above_seconds=above, sustained=run == n_steps)


# --- Prometheus ---------------------------------------------------------------------------------------
class PrometheusError(Exception):
    """Prometheus did not answer a query: unreachable, too slow, an error, or not Prometheus at all."""


Vector = list[tuple[dict[str, str], float]]
Matrix = list[tuple[dict[str, str], list[tuple[float, float]]]]


def _number(text: object) -> float:
    # Prometheus sends values as strings, non-finite ones as "NaN", "+Inf", "-Inf"
    try:
        return float(str(text))
    except ValueError:
        return math.nan


class PrometheusClient:
    """A small async client for Prometheus' HTTP query API (``/api/v1/query``, ``/api/v1/query_range``)."""

    def __init__(self, url: str, timeout: float, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)  # what messages name: no credential
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False
        )

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _api(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            # POST keeps long PromQL out of the URL; both endpoints accept form-encoded POSTs.
            response = await self._http.post(path, data=dict(params))
        except httpx.TimeoutException as exc:
            raise PrometheusError(f"no answer from {self.shown} within the timeout ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            why = scrub(str(exc) or type(exc).__name__, self.url)
            raise PrometheusError(f"{self.shown} is unreachable: {why}") from None
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"{self.shown}{path} answered HTTP {response.status_code} without JSON: is this Prometheus?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(body.get("data"), dict):
            error = body.get("error") if isinstance(body, dict) else None
            why = scrub(str(error or "not a Prometheus API answer"), self.url)
            raise PrometheusError(f"HTTP {response.status_code}: {why}")
        data: dict[str, Any] = body["data"]
        return data

    async def query(self, expr: str, at: float | None = None) -> Vector:
        """An instant query: ``[(labels, value), ...]``; a scalar answer is one sample without labels."""
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        data = await self._api("/api/v1/query", params)
        kind, result = data.get("resultType"), data.get("result")
        if not isinstance(result, list):
            raise PrometheusError(f"malformed answer to {expr!r}: no result list")
        try:
            if kind == "vector":
                return [(dict(s["metric"]), _number(s["value"][1])) for s in result]
            if kind == "scalar":
                return [({}, _number(result[1]))]
        except (KeyError, IndexError, TypeError) as exc:
            raise PrometheusError(f"malformed answer to {expr!r}: {exc!r}") from exc
        raise PrometheusError(f"{expr!r} returned a {kind}, not an instant vector")

    async def query_range(self, expr: str, start: float, end: float, step: float) -> Matrix:
        """A range query: ``[(labels, [(timestamp, value), ...]), ...]``."""
        params = {"query": expr, "start": repr(start), "end": repr(end), "step": repr(step)}
        data = await self._api("/api/v1/query_range", params)
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"{expr!r} returned a {data.get('resultType')}, not a range")
        try:
            return [(dict(s["metric"]), [(float(t), _number(v)) for t, v in s["values"]]) for s in data["result"]]
        except (KeyError, ValueError, TypeError) as exc:
            raise PrometheusError(f"malformed answer to {expr!r}: {exc!r}") from exc

    async def time(self) -> float:
        """Prometheus' clock: every query of one analysis is evaluated at this instant."""
        samples = await self.query("time()")
        if not samples or not math.isfinite(samples[0][1]):
            raise PrometheusError("time() returned nothing")
        return samples[0][1]


# --- the analysis -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Fetched:
    """The answer to one query, or why there is none."""

    query: str
    value: Any = None
    error: str | None = None


async def _fetch(query: str, call: Awaitable[Any]) -> _Fetched:
    try:
        return _Fetched(query, await call)
    except PrometheusError as exc:
        return _Fetched(query, error=str(exc))


def _single(fetched: _Fetched) -> float | None:
    """The one finite value of an aggregated instant query (None when the query returned nothing)."""
    values = [v for _, v in fetched.value or () if math.isfinite(v)]
    return values[0] if values else None


def _inconclusive(name: str, reason: str, queries: Sequence[str] = ()) -> CheckResult:
    return CheckResult(name=name, verdict=Verdict.INCONCLUSIVE, reason=reason, queries=list(queries))


@dataclass(frozen=True, slots=True)
class _Targets:
    """What ``up`` says about one selector's scrape targets: None when they are fine, else why not."""

    problem: str | None


def _targets(fetched: _Fetched, role: str, matcher: str, job: str) -> _Targets:
    if fetched.error is not None:
        return _Targets(f"cannot list the {role}'s targets: {fetched.error}")
    samples: Vector = fetched.value
    if not samples:
        return _Targets(f"{role} selector {{{matcher}}} matches no scrape target of job {job!r}")
    down = sorted(labels.get("instance", "?") for labels, v in samples if v != 1)
    if down:
        return _Targets(f"{role} target(s) down: {', '.join(down)} (up == 0): its data is partial or missing")
    return _Targets(None)


class _Analysis:
    """One analysis run: the queries it needs, then a check per tripwire and SLO."""

    def __init__(self, config: CanaryConfig, canary: str, baseline: str, at: float) -> None:
        self.config = config
        self.c = canary
        self.b = baseline
        self.at = at

    def queries(self) -> dict[str, tuple[str, str, float | None]]:
        """Every query of the analysis: key -> (kind "instant" | "range", PromQL, range length)."""
        cfg, c, b = self.config, self.c, self.b
        q = promql_duration(cfg.quarantine_window)
        out: dict[str, tuple[str, str, float | None]] = {
            "objectives": ("instant", OBJECTIVE_RULE, None),
            "canary_up": ("instant", f'up{{job="{cfg.job}",{c}}}', None),
            "baseline_up": ("instant", f'up{{job="{cfg.job}",{b}}}', None),
            "decision_rate": ("instant", f"sum(rate({DECISIONS}{{{c}}}[1m]))", None),
            "denial_rate": ("instant", f"sum({DENIAL_RATE_RULE}{{{c}}})", None),
            "baseline_ratio": (
                "range",
                f"sum({DENIAL_RATE_RULE}{{{b}}}) / (sum(rate({DECISIONS}{{{b}}}[1m])) > 0)",
                cfg.baseline_window,
            ),
            # ArkCanaryQuarantine's expression: a series born in the window counts with its whole value.
            "quarantines": (
                "instant",
                f"sum by (agent, reason) ((max_over_time({QUARANTINES}{{{c}}}[{q}]) "
                f"unless {QUARANTINES}{{{c}}} offset {q}) or increase({QUARANTINES}{{{c}}}[{q}]))",
                None,
            ),
            "p95": ("range", f"max({P95_RULE}{{{c}}})", cfg.latency_for),
            "ethics_drift": ("instant", f"max({ETHICS_DRIFT}{{{c}}})", None),
        }
        for window in BURN_WINDOWS:
            out[f"burn_{window}"] = ("instant", f"max by (slo) ({BURN_RULE.format(window=window)}{{{c}}})", None)
        return out

    async def fetch(self, client: PrometheusClient) -> dict[str, _Fetched]:
        """Run every query concurrently, all evaluated at ``at``."""
        calls: dict[str, Awaitable[_Fetched]] = {}
        for key, (kind, expr, length) in self.queries().items():
            if kind == "range":
                assert length is not None
                call: Awaitable[Any] = client.query_range(expr, self.at - length, self.at, self.config.step)
            else:
                call = client.query(expr, self.at)
            calls[key] = _fetch(expr, call)
        results = await asyncio.gather(*calls.values())
        return dict(zip(calls, results, strict=True))

    def checks(self, data: Mapping[str, _Fetched]) -> list[CheckResult]:
        """Every check's result from the fetched data."""
        slos = self._slo_names(data["objectives"])
        names = ["hrm_denials_spike", "quarantine", "decision_latency", *(f"burn_rate_{s}" for s in slos or ())]
        names.append("ethics_drift")
        if slos is None:
            fetched = data["objectives"]
            why = (
                f"cannot tell whether the ARK rules are loaded: {fetched.error}"
                if fetched.error
                else f"the ARK recording rules are not loaded in this Prometheus ({OBJECTIVE_RULE} is absent): "
                "load deploy/prometheus/rules/*.yml"
            )
            return [_inconclusive(n, why, [fetched.query]) for n in names]
        canary = _targets(data["canary_up"], "canary", self.c, self.config.job)
        if canary.problem is not None:
            return [_inconclusive(n, canary.problem, [data["canary_up"].query]) for n in names]
        baseline = _targets(data["baseline_up"], "baseline", self.b, self.config.job)
        return [
            self._denials(data, baseline),
            self._quarantine(data["quarantines"]),
            self._latency(data),
            *(self._burn(slo, data) for slo in slos),
            self._drift(data["ethics_drift"]),
        ]

    @staticmethod
    def _slo_names(fetched: _Fetched) -> list[str] | None:
        if fetched.error is not None or not fetched.value:
            return None
        return sorted({labels["slo"] for labels, _ in fetched.value if "slo" in labels})

    def _decisions(self, data: Mapping[str, _Fetched], name: str) -> float | CheckResult:
        """The canary's decisions in the last minute, or an inconclusive result for check ``name``."""
        fetched = data["decision_rate"]
        if fetched.error is not None:
            return _inconclusive(name, fetched.error, [fetched.query])
        rate = _single(fetched)
        if rate is None:
            return _inconclusive(name, f"{fetched.query} returned nothing: no decision histogram", [fetched.query])
        decisions = rate * 60
        if decisions < self.config.min_decisions:
            return _inconclusive(
                name,
                f"{decisions:.0f} canary decisions in the last minute, fewer than {self.config.min_decisions}: "
                "too few events for a verdict",
                [fetched.query],
            )
        return decisions

    def _denials(self, data: Mapping[str, _Fetched], baseline: _Targets) -> CheckResult:
        name, cfg = "hrm_denials_spike", self.config
        decisions = self._decisions(data, name)
        if isinstance(decisions, CheckResult):
            return decisions
        denials, history = data["denial_rate"], data["baseline_ratio"]
        queries = [denials.query, data["decision_rate"].query, history.query]
        if denials.error is not None:
            return _inconclusive(name, denials.error, queries)
        denial_rate = _single(denials)
        if denial_rate is None:
            return _inconclusive(name, f"{denials.query} returned nothing", queries)
        ratio = denial_rate / (decisions / 60)
        if baseline.problem is not None:
            return CheckResult(
                name=name, verdict=Verdict.INCONCLUSIVE, reason=baseline.problem, value=ratio,
                unit="denials/decision", queries=queries,
            )  # fmt: skip
        if history.error is not None:
            return _inconclusive(name, history.error, queries)
        samples = [point for _, points in history.value for point in points]
        stats = baseline_stats(samples, self.at)
        short: str | None = None
        if stats is None:
            short = f"the baseline has no denial ratio in the last {human_duration(cfg.baseline_window)} (no decisions)"
        elif stats.points < cfg.baseline_min_points:
            short = f"the baseline has {stats.points} samples, fewer than {cfg.baseline_min_points}"
        elif stats.span_seconds + cfg.step / 2 < cfg.baseline_min_age:
            short = (
                f"the baseline reaches back {human_duration(round(stats.span_seconds))}, less than "
                f"{human_duration(cfg.baseline_min_age)}"
            )
        if short is not None or stats is None:
            return CheckResult(
                name=name, verdict=Verdict.INCONCLUSIVE, reason=f"{short}: too short a baseline for a verdict",
                value=ratio, unit="denials/decision", queries=queries,
            )  # fmt: skip
        threshold = spike_threshold(stats.mean, stats.stddev, decisions, sigmas=cfg.sigmas, floor=cfg.sigma_floor)
        spike = ratio > threshold
        reason = (
            f"{ratio:.4f} denials/decision over {decisions:.0f} decisions "
            f"{'>' if spike else '<='} {threshold:.4f} = baseline mean {stats.mean:.4f} + {cfg.sigmas:g} sigma "
            f"(baseline sd {stats.stddev:.4f}, {stats.points} samples over {human_duration(round(stats.span_seconds))})"
        )
        return CheckResult(
            name=name, verdict=Verdict.FAIL if spike else Verdict.PASS, reason=reason, value=ratio,
            threshold=threshold, unit="denials/decision", queries=queries,
        )  # fmt: skip

    def _quarantine(self, fetched: _Fetched) -> CheckResult:
        name = "quarantine"
        window = human_duration(self.config.quarantine_window)
        if fetched.error is not None:
            return _inconclusive(name, fetched.error, [fetched.query])
        found = [(labels, v) for labels, v in fetched.value if math.isfinite(v) and v > 0]
        total = sum(v for _, v in found)
        if total > 0:
            who = ", ".join(
                f"{labels.get('agent', '?')} ({labels.get('reason', '?')}) x{v:.0f}"
                for labels, v in sorted(found, key=lambda s: -s[1])
            )
            return CheckResult(
                name=name, verdict=Verdict.FAIL, reason=f"{total:.0f} quarantine(s) in the last {window}: {who}",
                value=total, threshold=0, unit="quarantines", queries=[fetched.query],
            )  # fmt: skip
        # the canary's targets are up (checked first), so an empty answer means none happened
        return CheckResult(
            name=name, verdict=Verdict.PASS, reason=f"no quarantine in the last {window}", value=0.0, threshold=0,
            unit="quarantines", queries=[fetched.query],
        )  # fmt: skip

    def _latency(self, data: Mapping[str, _Fetched]) -> CheckResult:
        name, cfg = "decision_latency", self.config
        decisions = self._decisions(data, name)
        if isinstance(decisions, CheckResult):
            return decisions
        fetched = data["p95"]
        if fetched.error is not None:
            return _inconclusive(name, fetched.error, [fetched.query])
        samples = [point for _, points in fetched.value for point in points]
        breach = sustained_breach(
            samples, start=self.at - cfg.latency_for, end=self.at, step=cfg.step, threshold=cfg.latency_threshold_ms
        )
        if breach.latest is None or not math.isfinite(breach.latest):
            return _inconclusive(name, f"{fetched.query} returned nothing for now", [fetched.query])
        limit, span = f"{cfg.latency_threshold_ms:g} ms", human_duration(cfg.latency_for)
        if breach.sustained:
            reason = f"p95 {breach.latest:.0f} ms, above {limit} at every step of the last {span}"
        elif breach.latest > cfg.latency_threshold_ms:
            reason = (
                f"p95 {breach.latest:.0f} ms is above {limit} but only for {human_duration(breach.above_seconds or 0)}"
                f" (pending: fails after {span})"
            )
        else:
            reason = f"p95 {breach.latest:.0f} ms <= {limit}"
        return CheckResult(
            name=name, verdict=Verdict.FAIL if breach.sustained else Verdict.PASS, reason=reason,
            value=breach.latest, threshold=cfg.latency_threshold_ms, unit="ms", queries=[fetched.query],
        )  # fmt: skip

    def _burn(self, slo: str, data: Mapping[str, _Fetched]) -> CheckResult:
        name = f"burn_rate_{slo}"
        queries = [data[f"burn_{w}"].query for w in BURN_WINDOWS]
        burns: dict[str, float] = {}
        for window in BURN_WINDOWS:
            fetched = data[f"burn_{window}"]
            if fetched.error is not None:
                return _inconclusive(name, fetched.error, queries)
            for labels, value in fetched.value:
                if labels.get("slo") == slo and math.isfinite(value):
                    burns[window] = value
        if "5m" not in burns:
            return _inconclusive(name, f"no {slo} burn rate over the last 5m: no events in the SLO window", queries)
        hot = [
            f"{burns[long]:.1f}x over {long} and {burns[short]:.1f}x over {short} > {limit:g}x"
            for long, short, limit in PAGE_BURNS
            if burns.get(long, 0) > limit and burns.get(short, 0) > limit
        ]
        shown = ", ".join(f"{w} {burns[w]:.2f}x" for w in BURN_WINDOWS if w in burns)
        limits = " or ".join(f"{limit:g}x over {long} and {short}" for long, short, limit in PAGE_BURNS)
        reason = f"burning {'; '.join(hot)}" if hot else f"burn rates {shown}: under {limits}"
        return CheckResult(
            name=name, verdict=Verdict.FAIL if hot else Verdict.PASS, reason=reason, value=burns["5m"],
            threshold=PAGE_BURNS[0][2], unit="x (5m)", queries=queries,
        )  # fmt: skip

    def _drift(self, fetched: _Fetched) -> CheckResult:
        name = "ethics_drift"
        if fetched.error is not None:
            return _inconclusive(name, fetched.error, [fetched.query])
        drift = _single(fetched)
        if drift is None:
            return _inconclusive(name, f"{fetched.query} returned nothing", [fetched.query])
        changed = drift > 0
        return CheckResult(
            name=name, verdict=Verdict.FAIL if changed else Verdict.PASS,
            reason=f"{drift:.0f} immutable Graveyard rule(s) changed" if changed else "no Graveyard rule changed",
            value=drift, threshold=0, unit="rules", queries=[fetched.query],
        )  # fmt: skip


CHECK_NAMES: Final = ("hrm_denials_spike", "quarantine", "decision_latency", "ethics_drift")


async def analyze(
    config: CanaryConfig,
    *,
    canary: str | None = None,
    baseline: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    client: PrometheusClient | None = None,
) -> CanaryAnalysis:
    """Judge the canary against the baseline from the Prometheus at ``config.prometheus_url``.

    ``canary`` / ``baseline`` override the configured selectors (raise SelectorError when invalid).
    Never raises for anything Prometheus does: an unreachable, slow or broken Prometheus makes every
    check inconclusive, with the reason. ``client``: a shared client (the service's), else one of its own.
    """
    started = time.perf_counter()
    c = parse_selector(canary) if canary is not None else config.selector
    b = parse_selector(baseline) if baseline is not None else config.baseline_selector
    at: float | None = None
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = PrometheusClient(config.prometheus_url, config.timeout_seconds, transport=transport)
            await stack.enter_async_context(client)
        try:
            at = await client.time()
        except PrometheusError as exc:
            checks = [_inconclusive(n, f"Prometheus: {exc}", ["time()"]) for n in CHECK_NAMES]
        else:
            run = _Analysis(config, c, b, at)
            checks = run.checks(await run.fetch(client))
    return CanaryAnalysis.of(
        checks,
        canary=c,
        baseline=b,
        prometheus=redact_url(config.prometheus_url),
        evaluated_at=at,
        duration_seconds=time.perf_counter() - started,
    )


# --- HTTP ---------------------------------------------------------------------------------------------
SelectorText = Annotated[str, Field(pattern=SELECTOR_PATTERN, max_length=256, examples=["canary", 'track="canary"'])]


class FlaggerMetadata(BaseModel):
    """The webhook's ``metadata`` map: the selectors ark-obs reads, and whatever else Flagger was given."""

    model_config = ConfigDict(extra="allow")

    canary: SelectorText | None = None
    baseline: SelectorText | None = None


class FlaggerWebhook(BaseModel):
    """What Flagger POSTs to a webhook; ``metadata.canary`` / ``metadata.baseline`` may carry selectors."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    phase: str | None = None
    metadata: FlaggerMetadata = Field(default_factory=FlaggerMetadata)


class _Cache:
    """Recent verdicts by selector pair, and in-flight analyses shared by concurrent callers.

    The endpoints are open reads and each analysis runs about a dozen Prometheus queries: without
    this, a burst of requests would be a burst of queries on Prometheus. At most ``max_running``
    distinct analyses run at once; a request for one more raises ``TooManyAnalyses`` (429).
    """

    MAX_ENTRIES: Final = 32

    def __init__(self, ttl: float, max_running: int = 4) -> None:
        self.ttl = ttl
        self.max_running = max_running
        self._done: dict[tuple[str, str], tuple[float, CanaryAnalysis]] = {}
        self._running: dict[tuple[str, str], asyncio.Task[CanaryAnalysis]] = {}

    async def get(self, key: tuple[str, str], compute: Callable[[], Awaitable[CanaryAnalysis]]) -> CanaryAnalysis:
        now = time.monotonic()
        hit = self._done.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        task = self._running.get(key)
        if task is None:
            if len(self._running) >= self.max_running:
                raise StarletteHTTPException(
                    429,
                    f"{len(self._running)} canary analyses are running (the limit, "
                    "ARK_OBS_CANARY_MAX_CONCURRENT_ANALYSES); retry shortly",
                    headers={"Retry-After": "1"},
                )

            async def run() -> CanaryAnalysis:
                return await compute()

            task = asyncio.ensure_future(run())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        result = await asyncio.shield(task)
        if self.ttl > 0:
            self._done[key] = (time.monotonic(), result)
            while len(self._done) > self.MAX_ENTRIES:
                self._done.pop(next(iter(self._done)))
        return result


class InconclusiveStatus(IntEnum):
    """The status code POST /canary/analysis gives an inconclusive verdict."""

    HALT = 409
    LET_THROUGH = 200


CanaryParam = Annotated[
    str | None,
    Query(
        max_length=256,
        pattern=SELECTOR_PATTERN,
        description="Canary selector: a track value or one matcher on track (default: configured).",
    ),
]
BaselineParam = Annotated[
    str | None,
    Query(max_length=256, pattern=SELECTOR_PATTERN, description="Baseline selector (default: configured)."),
]


class _SharedPathRoute(APIRoute):
    """An APIRoute whose 405 names every method its path serves (``path_methods``, set per router).

    Starlette answers a wrong method with the ``Allow`` of the first route matching the path, so
    ``OPTIONS /canary/analysis`` would say ``Allow: GET`` although POST is served too.
    """

    path_methods: ClassVar[set[str]] = set()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allowed = ", ".join(sorted(self.path_methods | self.methods))
            raise StarletteHTTPException(405, headers={"Allow": allowed})
        await super().handle(scope, receive, send)


def router(config: CanaryConfig | None = None) -> APIRouter:
    """``GET /canary/analysis`` (Argo Rollouts ``web`` provider) and ``POST`` (Flagger webhook).

    ``config`` defaults to ``CanaryConfig()``: the ``ARK_OBS_CANARY_*`` environment variables.
    """
    cfg = config if config is not None else CanaryConfig()
    cache = _Cache(cfg.cache_seconds, cfg.max_concurrent_analyses)
    # one client (and connection pool) for every analysis, per event loop: its connections belong to one
    shared: dict[asyncio.AbstractEventLoop, PrometheusClient] = {}

    def client() -> PrometheusClient:
        loop = asyncio.get_running_loop()
        if loop not in shared:
            shared.clear()  # a previous loop's client: its loop is gone (only tests run several loops)
            shared[loop] = PrometheusClient(cfg.prometheus_url, cfg.timeout_seconds)
        return shared[loop]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for owned in list(shared.values()):
            await owned.__aexit__()
        shared.clear()

    # a class per router: FastAPI may copy routes when the router is included, keeping only their class
    route_class: type[_SharedPathRoute] = type("CanaryRoute", (_SharedPathRoute,), {"path_methods": set()})
    api = APIRouter(tags=["canary"], route_class=route_class, lifespan=lifespan)

    async def verdict(canary: str | None, baseline: str | None) -> CanaryAnalysis:
        # the schema's pattern has admitted only selectors that parse_selector accepts
        c = parse_selector(canary) if canary is not None else cfg.selector
        b = parse_selector(baseline) if baseline is not None else cfg.baseline_selector
        return await cache.get((c, b), lambda: analyze(cfg, canary=c, baseline=b, client=client()))

    @api.get(
        "/canary/analysis",
        response_model=CanaryAnalysis,
        summary="Canary verdict (Argo Rollouts web metric)",
    )
    async def get_analysis(canary: CanaryParam = None, baseline: BaselineParam = None) -> CanaryAnalysis:
        """Always 200 with the verdict in ``verdict``: pass, fail or inconclusive (Argo reads the body)."""
        return await verdict(canary, baseline)

    @api.post(
        "/canary/analysis",
        response_model=CanaryAnalysis,
        summary="Canary verdict (Flagger webhook)",
        responses={
            412: {"model": CanaryAnalysis, "description": "fail: a tripwire or burn rate says roll back."},
            409: {"model": CanaryAnalysis, "description": "inconclusive: no verdict (the reason says why)."},
        },
    )
    async def post_analysis(
        hook: Annotated[FlaggerWebhook | None, Body()] = None,
        canary: CanaryParam = None,
        baseline: BaselineParam = None,
        inconclusive_status: Annotated[
            InconclusiveStatus,
            Query(description="Status of an inconclusive verdict: 409 (default) halts a hook, 200 lets it through."),
        ] = InconclusiveStatus.HALT,
    ) -> JSONResponse:
        """The verdict as a status code: 200 pass, 412 fail, 409 inconclusive; changes nothing.

        Flagger has no "inconclusive": a ``rollout`` hook counts every non-2xx as a failed check (and
        rolls back at ``threshold``), a ``confirm-*`` hook waits for a 200 without counting. So a
        ``rollout`` hook with ``?inconclusive_status=200`` counts only fails, and ``confirm-*`` hooks
        with the default hold the canary while the verdict is inconclusive.
        """
        metadata = hook.metadata if hook is not None else FlaggerMetadata()
        result = await verdict(canary or metadata.canary, baseline or metadata.baseline)
        status = WEBHOOK_STATUS[result.verdict]
        if result.verdict is Verdict.INCONCLUSIVE:
            status = int(inconclusive_status)
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    route_class.path_methods.update(m for r in api.routes if isinstance(r, APIRoute) for m in r.methods or ())
    return api


# --- CLI ----------------------------------------------------------------------------------------------
def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selector_arg(text: str) -> str:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# (flags, add_argument options): cli.py turns each into its ``arg(...)``. Defaults are None so that the
# ARK_OBS_CANARY_* environment (CanaryConfig) applies unless an option is given.
ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--prometheus",), {"metavar": "URL",
                         "help": "Prometheus base URL (default $ARK_OBS_CANARY_PROMETHEUS_URL, else http://127.0.0.1:9090)"}),
    (("--canary",), {"type": _selector_arg, "metavar": "SELECTOR",
                     "help": 'the canary: a track value or matcher (default track="canary")'}),
    (("--baseline",), {"type": _selector_arg, "metavar": "SELECTOR",
                       "help": 'the baseline: a track value or matcher (default track="stable")'}),
    (("--json",), {"action": "store_true", "help": "print the analysis as JSON"}),
    (("--latency-for",), {"type": _duration_arg, "metavar": "DURATION",
                          "help": "how long p95 must stay above the threshold (default 3m)"}),
    (("--quarantine-window",), {"type": _duration_arg, "metavar": "DURATION",
                                "help": "any quarantine in this window fails (default 10m)"}),
    (("--baseline-window",), {"type": _duration_arg, "metavar": "DURATION",
                              "help": "history of the baseline's denial ratio (default 1h)"}),
    (("--baseline-min-age",), {"type": _duration_arg, "metavar": "DURATION",
                               "help": "the baseline's history must reach back this far (default 30m)"}),
    (("--baseline-min-points",), {"type": int, "metavar": "N", "help": "fewest baseline samples (default 20)"}),
    (("--min-decisions",), {"type": int, "metavar": "N",
                            "help": "fewest canary decisions in the last minute (default 20)"}),
    (("--step",), {"type": _duration_arg, "metavar": "DURATION",
                   "help": "resolution of history queries: Prometheus' evaluation interval (default 15s)"}),
    (("--job",), {"metavar": "NAME", "help": "scrape job of ark-obs (default ark-obs)"}),
    (("--timeout",), {"type": float, "metavar": "SECONDS", "help": "timeout of each Prometheus request (default 2)"}),
)  # fmt: skip

_OPTION_FIELDS: Final = {
    "prometheus": "prometheus_url",
    "canary": "selector",
    "baseline": "baseline_selector",
    "latency_for": "latency_for",
    "quarantine_window": "quarantine_window",
    "baseline_window": "baseline_window",
    "baseline_min_age": "baseline_min_age",
    "baseline_min_points": "baseline_min_points",
    "min_decisions": "min_decisions",
    "step": "step",
    "job": "job",
    "timeout": "timeout_seconds",
}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: ``env_name("min_decisions") == "ARK_OBS_CANARY_MIN_DECISIONS"``."""
    return f"ARK_OBS_CANARY_{field.upper()}"


def _option_or_env(args: argparse.Namespace, field: str) -> str:
    """How the user set ``field``: the option given (``--min-decisions``), else its environment variable."""
    for option, name in _OPTION_FIELDS.items():
        if name == field and getattr(args, option, None) is not None:
            return "--" + option.replace("_", "-")
    return env_name(field)


def _problem(args: argparse.Namespace, error: Any) -> str:
    """One validation error, named as the user set it, with the value they gave."""
    where = _option_or_env(args, str(error["loc"][0])) if error["loc"] else "?"
    message: str = error["msg"].removeprefix("Value error, ")
    given = repr(error.get("input"))
    return f"{where}: {message}" + ("" if given in message else f" (got {given})")


def config_from_args(args: argparse.Namespace) -> CanaryConfig:
    """The configuration: ``ARK_OBS_CANARY_*`` and ``.env``, overridden by the options given."""
    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items()}
    return CanaryConfig(**{k: v for k, v in overrides.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    """Run the analysis once; print a table (or JSON); exit 0 pass, 1 fail, 2 inconclusive (or bad options)."""
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(_problem(args, e) for e in exc.errors())
        print(f"ark-obs canary-check: {problems}", file=sys.stderr)
        return EXIT_STATUS[Verdict.INCONCLUSIVE]
    result = asyncio.run(analyze(config))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print_table(result)
    return EXIT_STATUS[result.verdict]


_STYLE: Final = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.INCONCLUSIVE: "yellow"}


def print_table(result: CanaryAnalysis, file: Any = None) -> None:
    """The analysis as a rich table, for people."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"canary {{{result.canary}}} vs baseline {{{result.baseline}}} ({result.prometheus})",
        title_justify="left",
    )
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
    table.add_column("why", overflow="fold")
    for check in result.checks.values():
        table.add_row(
            check.name,
            f"[{_STYLE[check.verdict]}]{check.verdict.value.upper()}[/]",
            "-" if check.value is None else f"{check.value:.4g} {check.unit}".strip(),
            "-" if check.threshold is None else f"{check.threshold:.4g}",
            check.reason,
        )
    console = Console(file=file)
    console.print(table)
    console.print(f"[{_STYLE[result.verdict]}]{result.verdict.value.upper()}[/]: {result.reason}")
