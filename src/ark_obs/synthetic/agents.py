"""The simulated ARK agents (Kyle, Joey, HRM, Kenny, Aletheia), what they share, and the Watchdog that quarantines them.

Every agent method is wrapped with the library's own decorators, so a run exercises the
instrumentation a real ARK agent uses; the switches in ``PipelineControls`` are read at every pass.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Final

from ark_obs import catalog
from ark_obs.instrumentation import instrument_agent_method, track_state_operation, with_trace_id
from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic.config import InjectedFault, SyntheticConfig
from ark_obs.synthetic.domain import GRAVEYARD, Action, Execution, GraveyardRule, Pattern, Signal, Verdict
from ark_obs.synthetic.state import RunState
from ark_obs.synthetic.targets import Target

__all__ = ["Agent", "AgentContext", "Aletheia", "Hrm", "Joey", "Kenny", "Kyle", "PipelineControls", "Watchdog"]

QUARANTINE_AFTER_ERRORS: Final = 3
QUARANTINE_SECONDS: Final = 5.0  # the seed's downtime heuristic per quarantine

SKIP_REVISION_EVERY: Final = 10  # --fault skip-revision: every 10th state write skips a revision


@dataclass(slots=True)
class PipelineControls:
    """Switches a running pipeline reads at every pass: the injections and faults ``ark-obs validate`` flips.

    Mutable on purpose: a validation step turns Kenny's errors on while the loop runs. The faults that
    break a safeguard (``hrm_allows``, ``watchdog_off``) exist to prove that validation notices.
    """

    kenny_errors: bool = False
    skip_revision: bool = False
    hrm_allows: bool = False  # HRM approves every action: known-bad ones get through
    watchdog_off: bool = False  # the Watchdog never quarantines

    @classmethod
    def from_config(cls, config: SyntheticConfig) -> PipelineControls:
        """The switches ``config``'s faults set."""
        return cls(kenny_errors=config.has("kenny-errors"), skip_revision=config.has("skip-revision"))


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What every simulated agent shares in a run."""

    collector: MetricsCollector
    config: SyntheticConfig
    target: Target
    rng: random.Random
    controls: PipelineControls = field(default_factory=PipelineControls)


class Watchdog:
    """The simulated ARK Watchdog: quarantines an agent after consecutive errors, for a while."""

    def __init__(self, collector: MetricsCollector, state: RunState, controls: PipelineControls | None = None) -> None:
        self._quarantines = collector.metric(catalog.WATCHDOG_QUARANTINES_TOTAL.name)
        # the series it can count exist at 0 from the start: "none yet" is reported, not unknown
        self._quarantines.labels("Kenny", "exec_errors")
        self._state = state
        self._controls = controls or PipelineControls()
        self._errors: Counter[str] = Counter()
        self._until: dict[str, float] = {}

    def quarantined(self, agent: str) -> bool:
        """Whether ``agent`` is isolated now."""
        until = self._until.get(agent)
        return until is not None and time.monotonic() < until

    def failure(self, agent: str, reason: str) -> None:
        """An agent failed; the third failure in a row quarantines it."""
        self._errors[agent] += 1
        if self._errors[agent] >= QUARANTINE_AFTER_ERRORS and not self._controls.watchdog_off:
            self._errors[agent] = 0
            self._until[agent] = time.monotonic() + QUARANTINE_SECONDS
            self._quarantines.labels(agent, reason).inc()
            self._state.quarantines[agent] += 1

    def success(self, agent: str) -> None:
        """An agent succeeded: its error streak ends."""
        self._errors[agent] = 0


class Agent:
    """A simulated ARK agent: simulated work of configurable latency, and a span per trace it sees.

    Methods are decorated per instance (``_instrument``), because the decorators resolve their metrics
    on a collector at decoration time and each run records on its own collector.
    """

    name: str = "Agent"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self._latency = ctx.config.latency(self.name)
        self._scale = ctx.config.latency_scale
        self._span = ctx.target.span

    def _instrument(self, method: Any, latency_metric: str, counter_metric: str) -> Any:
        return instrument_agent_method(
            latency_metric=latency_metric, counter_metric=counter_metric, agent=self.name, collector=self.ctx.collector
        )(with_trace_id(method))

    def _default_metrics(self) -> tuple[str, str]:
        # the seed's naming (kyle_process_latency_ms, kyle_signals_processed_total), declared on decoration
        lower = self.name.lower()
        return f"{lower}_process_latency_ms", f"{lower}_signals_processed_total"

    async def _work(self) -> None:
        ms = self._latency.sample(self.ctx.rng, self._scale)
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)

    def _record_span(self, trace_id: str, signal: Signal, at: float, started: float, ok: bool) -> None:
        if signal.lost_span != self.name:
            self._span(trace_id, self.name, at, (perf_counter() - started) * 1000.0, ok)


class Kyle(Agent):
    """Ingests signals; sets ``kyle_ingest_rate`` (signals per second, refreshed each second)."""

    name = "Kyle"

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.ingest = self._instrument(self._ingest, *self._default_metrics())
        self._rate = ctx.collector.metric(catalog.KYLE_INGEST_RATE.name)
        self._count = 0
        self._since = time.monotonic()

    async def _ingest(self, signal: Signal, trace_id: str | None = None) -> Signal:
        at, started = time.time(), perf_counter()
        await self._work()
        self._count += 1
        now = time.monotonic()
        if now - self._since >= 1.0:
            self._rate.set(self._count / (now - self._since))
            self._count, self._since = 0, now
        self._record_span(str(trace_id), signal, at, started, True)
        return signal


class Joey(Agent):
    """Finds a pattern; sets ``joey_pattern_confidence_avg`` (exponentially weighted, about 100 signals)."""

    name = "Joey"

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.find_pattern = self._instrument(self._find_pattern, *self._default_metrics())
        self._avg_gauge = ctx.collector.metric(catalog.JOEY_PATTERN_CONFIDENCE_AVG.name)
        self._avg: float | None = None

    async def _find_pattern(self, signal: Signal, trace_id: str | None = None) -> Pattern:
        at, started = time.time(), perf_counter()
        await self._work()
        confidence = 0.65 + 0.3 * self.ctx.rng.random()  # mean 0.8; the seed's target is > 0.7
        self._avg = confidence if self._avg is None else self._avg + 0.01 * (confidence - self._avg)
        self._avg_gauge.set(self._avg)
        self._record_span(str(trace_id), signal, at, started, True)
        return Pattern(signal, "buy" if signal.seq % 2 else "sell", confidence)


class Hrm(Agent):
    """Evaluates actions against the Graveyard; denies each violation; watches the rules for drift.

    Its decorator records ``hrm_eval_latency_ms`` and ``graveyard_validations_total``; each broken
    rule is counted in ``hrm_denials_total{rule_id,agent}`` (agent: the one proposing the action).
    """

    name = "HRM"

    def __init__(self, ctx: AgentContext, rules: tuple[GraveyardRule, ...] = GRAVEYARD) -> None:
        super().__init__(ctx)
        self.evaluate = self._instrument(
            self._evaluate, catalog.HRM_EVAL_LATENCY_MS.name, catalog.GRAVEYARD_VALIDATIONS_TOTAL.name
        )
        self.rules = rules
        self._sealed = {r.rule_id: hash(r) for r in rules}
        self._denials = ctx.collector.metric(catalog.HRM_DENIALS_TOTAL.name)
        for rule in rules:  # at 0 from the start: an HRM that denied nothing reports 0, not nothing
            self._denials.labels(rule.rule_id, "Kenny")
        self._drift = ctx.collector.metric(catalog.ARK_ETHICS_DRIFT.name)

    async def _evaluate(self, action: Action, trace_id: str | None = None) -> Verdict:
        at, started = time.time(), perf_counter()
        await self._work()
        violations = (
            () if self.ctx.controls.hrm_allows else tuple(r.rule_id for r in self.rules if r.violated_by(action))
        )
        for rule_id in violations:
            self._denials.labels(rule_id, action.agent).inc()
        self._record_span(str(trace_id), action.signal, at, started, True)
        return Verdict(action, not violations, violations)

    def check_drift(self) -> int:
        """Set ``ark_ethics_drift`` to the number of rules that changed since HRM sealed them."""
        current = {r.rule_id: hash(r) for r in self.rules}
        drift = sum(1 for rule_id, h in self._sealed.items() if current.get(rule_id) != h)
        self._drift.set(drift)
        return drift


class Kenny(Agent):
    """Executes approved actions; sets ``kenny_exec_success_rate`` (percent of the last 100 executions)."""

    name = "Kenny"

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.execute = self._instrument(self._execute, *self._default_metrics())
        self._controls = ctx.controls
        self._revisions: dict[str, int] = {}
        self._writes = 0
        self._outcomes: deque[bool] = deque(maxlen=100)
        self._successes = 0
        self._rate = ctx.collector.metric(catalog.KENNY_EXEC_SUCCESS_RATE.name)

    async def _execute(self, verdict: Verdict, trace_id: str | None = None) -> Execution:
        at, started = time.time(), perf_counter()
        ok = False
        try:
            await self._work()
            if not verdict.approved:  # a denied action is acknowledged, never executed
                ok = True
                return Execution(verdict, "denied")
            if self._controls.kenny_errors:
                self._executed(False)
                raise InjectedFault("injected fault: Kenny's execution was rejected")
            self._executed(True)
            self._write_position(verdict.action.symbol)
            ok = True
            return Execution(verdict, "executed")
        finally:
            self._record_span(str(trace_id), verdict.action.signal, at, started, ok)

    def _write_position(self, symbol: str) -> None:
        # the Mutable Core write after an execution: the key's next revision (or one further, as injected)
        started = perf_counter()
        key = f"position:{symbol}"
        self._writes += 1
        skip = self._controls.skip_revision and self._writes % SKIP_REVISION_EVERY == 0
        revision = self._revisions[key] = self._revisions.get(key, 0) + (2 if skip else 1)
        track_state_operation(
            "write", self.name, (perf_counter() - started) * 1000.0, key=key, revision=revision,
            collector=self.ctx.collector,
        )  # fmt: skip

    def _executed(self, ok: bool) -> None:
        outcomes = self._outcomes
        if len(outcomes) == outcomes.maxlen:
            self._successes -= outcomes[0]
        outcomes.append(ok)
        self._successes += ok
        self._rate.set(100.0 * self._successes / len(outcomes))


class Aletheia(Agent):
    """Audits every decision, executed or not: the last agent of every trace."""

    name = "Aletheia"

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        self.audit = self._instrument(self._audit, *self._default_metrics())

    async def _audit(self, execution: Execution, trace_id: str | None = None) -> str:
        at, started = time.time(), perf_counter()
        await self._work()
        self._record_span(str(trace_id), execution.verdict.action.signal, at, started, True)
        return f"{execution.verdict.action.symbol}:{execution.status}"
