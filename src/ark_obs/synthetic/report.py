"""The run's report: the seed's validation criteria, judged on a run's bookkeeping.

Apart from the loop so every criterion and its numbers read top to bottom in one place; the report
itself is frozen data, printed as a table or as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic.config import SyntheticConfig
from ark_obs.synthetic.state import RunState, quantile

__all__ = ["Criterion", "SilenceResult", "SyntheticReport", "build_report"]

P95_OBJECTIVE_MS: Final = 400.0  # the seed's decision latency SLO


@dataclass(frozen=True, slots=True)
class Criterion:
    """One validation criterion: what it checks, whether it held, and the numbers behind it."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SilenceResult:
    """How long the heartbeat monitor took to report a silenced agent down."""

    agent: str
    first_missed_beat_at: float | None
    reported_down_after_seconds: float | None
    limit_seconds: float
    was_up_before: bool

    @property
    def within_limit(self) -> bool:
        """Up before the silence, then reported down within the limit."""
        delay = self.reported_down_after_seconds
        return self.was_up_before and delay is not None and delay <= self.limit_seconds


@dataclass(frozen=True, slots=True)
class SyntheticReport:
    """The outcome of a run against the seed's validation criteria; ``passed`` when all of them hold."""

    target: str
    rate: float
    duration_seconds: float | None
    faults: tuple[str, ...]
    passes: int
    elapsed_seconds: float
    achieved_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    injected_violations: int
    injected_denied: int
    false_denials: int
    denials: int
    expected_errors: int
    unexpected_errors: int
    unexpected_error_kinds: dict[str, int]
    quarantines: dict[str, int]
    traces_checked: int
    traces_complete: int
    traces_incomplete_expected: int
    traces_incomplete_unexpected: int
    unexpected_missing: dict[str, int]
    example_trace_id: str | None
    silence: tuple[SilenceResult, ...]
    criteria: tuple[Criterion, ...]

    @property
    def passed(self) -> bool:
        """Every criterion held."""
        return all(c.passed for c in self.criteria)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the criteria that failed."""
        return tuple(c.name for c in self.criteria if not c.passed)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, plus ``passed`` and ``failed``."""
        out = asdict(self)
        for s, result in zip(out["silence"], self.silence, strict=True):
            s["within_limit"] = result.within_limit
        out["passed"] = self.passed
        out["failed"] = list(self.failed)
        return out


def build_report(
    config: SyntheticConfig,
    state: RunState,
    collector: MetricsCollector,
    silence: tuple[SilenceResult, ...],
    target: str,
) -> SyntheticReport:
    """Judge the run against the seed's criteria (plus one per injected fault)."""
    # throughput of an open-loop generator (RunState.throughput, the live display's figure too)
    elapsed, achieved = state.throughput(config.rate)
    latencies = sorted(state.latencies)
    p95 = quantile(latencies, 0.95)
    unexpected = sum(state.unexpected.values())
    faults = ", ".join(map(str, config.faults))
    criteria = [
        Criterion(
            f"throughput >= {config.rate:g} passes/s",
            achieved >= config.rate,
            f"{state.passes} passes completed over the {elapsed:.2f} s their starts took = {achieved:.2f}/s",
        ),
        Criterion(
            "zero unexpected errors",
            unexpected == 0,
            f"{unexpected} unexpected"
            + (": " + "; ".join(f"{k} x{v}" for k, v in state.unexpected.most_common(3)) if unexpected else "")
            + (f"; {state.expected_errors} injected ({faults})" if state.expected_errors else ""),
        ),
        Criterion(
            f"p95 <= {P95_OBJECTIVE_MS:g} ms",
            p95 is not None and p95 <= P95_OBJECTIVE_MS,
            "no passes" if p95 is None else f"p95 {p95:.1f} ms over {len(latencies)} passes",
        ),
        Criterion(
            "every injected violation denied",
            state.injected_denied == state.injected and state.false_denials == 0,
            f"{state.injected_denied}/{state.injected} injected denied, {state.false_denials} valid actions denied",
        ),
    ]
    if config.validate_traces:
        sampled = "" if state.checked >= state.passes else f" (a sample of {state.passes})"
        # an incompleteness the injected faults cause is expected, and named so: the criterion is then that
        # no trace is incomplete beyond it
        expected = state.incomplete_expected
        missing = ", ".join(sorted(state.expected_missing))
        criteria.append(
            Criterion(
                "every trace complete but those the injected fault breaks" if expected else "every trace complete",
                state.incomplete_unexpected == 0 and state.checked > 0,
                f"{state.complete}/{state.checked} traces checked complete{sampled}"
                + (f"; {expected} incomplete as expected: missing {missing}, as {faults} injects" if expected else "")
                + (
                    f", {state.incomplete_unexpected} unexpectedly incomplete (agents: "
                    + ", ".join(f"{a} x{n}" for a, n in state.unexpected_missing.most_common())
                    + ")"
                    if state.incomplete_unexpected
                    else ""
                ),
            )
        )
    if config.has("skip-revision"):
        criteria.append(
            Criterion("revision gaps detected", state.revision_anomalies > 0,
                      f"{state.revision_anomalies} anomalies counted after injected skips")
        )  # fmt: skip
    else:
        criteria.append(
            Criterion("state revisions contiguous", state.revision_anomalies == 0,
                      f"{state.revision_anomalies} anomalies in Kenny's state writes")
        )  # fmt: skip
    if config.has("kenny-errors"):
        n = state.quarantines["Kenny"]
        criteria.append(Criterion("Watchdog quarantined Kenny", n > 0, f"{n} quarantine(s) after injected errors"))
    for s in silence:
        if not s.was_up_before:
            detail = "never reported up before its heartbeats stopped"
        elif s.reported_down_after_seconds is None:
            detail = "not reported down"
        else:
            detail = f"reported down {s.reported_down_after_seconds:.2f} s after its first missed heartbeat"
        criteria.append(
            Criterion(f"{s.agent} reported silent within 2 intervals ({s.limit_seconds:g} s)", s.within_limit, detail)
        )
    return SyntheticReport(
        target=target,
        rate=config.rate,
        duration_seconds=config.duration_seconds,
        faults=tuple(map(str, config.faults)),
        passes=state.passes,
        elapsed_seconds=round(elapsed, 3),
        achieved_rate=round(achieved, 3),
        latency_p50_ms=_round(quantile(latencies, 0.50)),
        latency_p95_ms=_round(p95),
        latency_p99_ms=_round(quantile(latencies, 0.99)),
        latency_max_ms=_round(latencies[-1] if latencies else None),
        injected_violations=state.injected,
        injected_denied=state.injected_denied,
        false_denials=state.false_denials,
        denials=state.denials,
        expected_errors=state.expected_errors,
        unexpected_errors=unexpected,
        unexpected_error_kinds=dict(state.unexpected),
        quarantines=dict(state.quarantines),
        traces_checked=state.checked,
        traces_complete=state.complete,
        traces_incomplete_expected=state.incomplete_expected,
        traces_incomplete_unexpected=state.incomplete_unexpected,
        unexpected_missing=dict(state.unexpected_missing),
        example_trace_id=state.example_trace_id,
        silence=silence,
        criteria=tuple(criteria),
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
