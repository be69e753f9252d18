"""The analysis: the PromQL each check runs (on the ARK recording rules), and a verdict per check (``analyze``)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx

from ark_obs import catalog
from ark_obs._redact import redact_url
from ark_obs.canary.config import CanaryConfig, human_duration, parse_selector, promql_duration
from ark_obs.canary.prometheus import PrometheusClient, PrometheusError, Vector
from ark_obs.canary.results import CanaryAnalysis, CheckResult, Verdict
from ark_obs.canary.stats import baseline_stats, spike_threshold, sustained_breach

__all__ = [
    "BURN_RULE",
    "BURN_WINDOWS",
    "CHECK_NAMES",
    "DECISIONS",
    "DENIAL_RATE_RULE",
    "ETHICS_DRIFT",
    "OBJECTIVE_RULE",
    "P95_RULE",
    "PAGE_BURNS",
    "QUARANTINES",
    "analyze",
]

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
