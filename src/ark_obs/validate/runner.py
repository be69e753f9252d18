"""Runs a plan: each step's expectation baseline, its injection, then looks until it decides or its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ark_obs.canary import Verdict
from ark_obs.validate.evidence import EvidenceUnavailable
from ark_obs.validate.expectations import Observation, Readers, check_for
from ark_obs.validate.inject import InjectionFailed, Injector, inject
from ark_obs.validate.plan import Plan, Step
from ark_obs.validate.report import StepResult, ValidationReport

__all__ = ["ProgressCallback", "run_plan", "run_step"]

# (step name, what it observes now, seconds since the step started); called at every look
ProgressCallback = Callable[[str, str, float], None]


def _noop(name: str, observed: str, elapsed: float) -> None:
    return None


async def run_step(step: Step, readers: Readers, injector: Injector, progress: ProgressCallback = _noop) -> StepResult:
    """Run one step; never raises for unreachable evidence or a failed injection (inconclusive instead)."""
    started = time.monotonic()
    deadline = started + step.deadline
    variables: dict[str, str] = {}

    def result(verdict: Verdict, expected: str, observed: str, evidence: str) -> StepResult:
        return StepResult(
            name=step.name,
            verdict=verdict,
            expected=expected,
            observed=observed,
            evidence=evidence,
            seconds=round(time.monotonic() - started, 3),
        )

    expected: str = step.expect.kind
    try:
        check = check_for(step.expect, readers, variables)
        expected = check.expected
        await check.start()
        progress(step.name, "injecting" if step.inject else "looking", 0.0)
        variables.update(await inject(injector, step.inject))
        check.injected()
    except (EvidenceUnavailable, InjectionFailed) as exc:
        injector.restore()
        return result(Verdict.INCONCLUSIVE, expected, "nothing observed", str(exc))
    last: Observation | None = None
    error: str | None = None
    decided: Observation | None = None
    try:
        while True:
            try:
                seen = await check.look()
            except EvidenceUnavailable as exc:
                error = str(exc)
            else:
                last, error = seen, None
                progress(step.name, seen.observed, time.monotonic() - started)
                if seen.verdict is not None:
                    decided = seen
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(check.poll_seconds, remaining))
    finally:
        injector.restore()
    if decided is None:
        if error is not None or last is None:
            return result(Verdict.INCONCLUSIVE, check.expected, "evidence unreachable", error or "no look succeeded")
        decided = check.at_deadline(last)
    assert decided.verdict is not None
    return result(decided.verdict, check.expected, decided.observed, decided.evidence)


async def run_plan(
    plan: Plan,
    readers: Readers,
    injector: Injector,
    *,
    target: str,
    progress: ProgressCallback = _noop,
    on_step: Callable[[StepResult], None] | None = None,
) -> ValidationReport:
    """Every step in order (a failed step does not stop the run: the report names every failure)."""
    results = []
    for step in plan.steps:
        outcome = await run_step(step, readers, injector, progress)
        results.append(outcome)
        if on_step is not None:
            on_step(outcome)
    return ValidationReport(target=target, steps=results)
