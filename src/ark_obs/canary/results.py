"""What an analysis says: the ``Verdict``, one ``CheckResult`` per check, and the ``CanaryAnalysis`` over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EXIT_STATUS", "CanaryAnalysis", "CheckResult", "Verdict"]


class Verdict(StrEnum):
    """The outcome of one check or of the whole analysis, as Argo Rollouts names its measurements."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


EXIT_STATUS: Final[Mapping[Verdict, int]] = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 2}


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
