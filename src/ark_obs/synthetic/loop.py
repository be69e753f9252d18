"""The loop: a pass drives one signal through the pipeline; ``run_loop`` starts passes on schedule and reports.

``run_loop`` is open-loop (passes start on their 1/rate slots, however long earlier ones take), beats
every agent's heart, checks each trace's continuity, watches silenced agents, then builds the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Final

from ark_obs import catalog
from ark_obs.instrumentation import instrument_agent_method, with_trace_id
from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic.agents import Agent, AgentContext, Aletheia, Hrm, Joey, Kenny, Kyle, PipelineControls, Watchdog
from ark_obs.synthetic.config import InjectedFault, SyntheticConfig
from ark_obs.synthetic.domain import GRAVEYARD, SYMBOLS, Action, Execution, Signal, violating
from ark_obs.synthetic.report import SilenceResult, SyntheticReport, build_report
from ark_obs.synthetic.state import RunState
from ark_obs.synthetic.targets import HTTP_FLUSH_SECONDS, HttpTarget, InProcessTarget, Target

__all__ = ["PassOutcome", "Pipeline", "ProgressCallback", "in_process_collector", "revision_anomalies", "run_loop"]

SILENCE_AT_TICK: Final = 2  # silenced agents miss heartbeat ticks 2, 3, ... (ticks 0 and 1 are sent)
SILENCE_LIMIT_INTERVALS: Final = 2.0

MAX_HTTP_CHECKS_PER_SECOND: Final = 200  # traces validated over HTTP (a random sample beyond this)


@dataclass(frozen=True, slots=True)
class PassOutcome:
    """What one pass did, for the run's accounting."""

    trace_id: str
    injected: str | None
    denied: bool
    status: str
    expected_missing: frozenset[str]


class Pipeline:
    """The five agents, the Watchdog, and the pass that drives a signal through them."""

    def __init__(self, ctx: AgentContext, state: RunState) -> None:
        self.ctx = ctx
        self.state = state
        self.kyle, self.joey, self.hrm = Kyle(ctx), Joey(ctx), Hrm(ctx)
        self.kenny, self.aletheia = Kenny(ctx), Aletheia(ctx)
        self.agents: tuple[Agent, ...] = (self.kyle, self.joey, self.hrm, self.kenny, self.aletheia)
        self.watchdog = Watchdog(ctx.collector, state, ctx.controls)
        self._drop_agents = ctx.config.fault_agents("drop")
        # the pass's decorator mints and binds the trace id, and observes ark_pass_latency_ms with it
        self.run_pass = instrument_agent_method(
            latency_metric=catalog.ARK_PASS_LATENCY_MS.name, agent="Pipeline", collector=ctx.collector
        )(with_trace_id(self._run_pass))

    def _signal(self, seq: int) -> Signal:
        rng = self.ctx.rng
        lost = None
        if self._drop_agents and rng.random() < self.ctx.config.drop_share:
            lost = self._drop_agents[seq % len(self._drop_agents)]
        return Signal(seq, SYMBOLS[seq % len(SYMBOLS)], rng.uniform(10, 500), lost)

    async def _run_pass(self, seq: int, bad: bool, trace_id: str | None = None) -> PassOutcome:
        signal = await self.kyle.ingest(self._signal(seq))
        pattern = await self.joey.find_pattern(signal)
        action = Action(signal, "Kenny", signal.symbol, pattern.direction, 1 + seq % 500, 1.0 + seq % 3)
        if bad:
            action = violating(action, GRAVEYARD[seq % len(GRAVEYARD)])
        verdict = await self.hrm.evaluate(action)
        expected_missing = {signal.lost_span} if signal.lost_span else set()
        if self.watchdog.quarantined("Kenny"):
            execution = Execution(verdict, "quarantined")  # isolated: the trace stops short of Kenny
            expected_missing.add("Kenny")
        else:
            try:
                execution = await self.kenny.execute(verdict)
                self.watchdog.success("Kenny")
            except InjectedFault:
                self.state.expected_errors += 1
                self.watchdog.failure("Kenny", "exec_errors")
                execution = Execution(verdict, "failed")
        await self.aletheia.audit(execution)
        return PassOutcome(str(trace_id), action.injected, not verdict.approved, execution.status,
                           frozenset(expected_missing))  # fmt: skip


# --- the loop ----------------------------------------------------------------------------------------
ProgressCallback = Callable[[RunState], None]


async def run_loop(
    config: SyntheticConfig,
    collector: MetricsCollector | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_progress: ProgressCallback | None = None,
    on_first_pass: Callable[[str], None] | None = None,
) -> SyntheticReport:
    """Run the loop for ``config.duration_seconds`` (or until ``stop`` is set) and report on it.

    ``collector``: where the agents' metrics go (and, in-process, spans and heartbeats); a new one when
    None. ``on_progress`` is called about 4 times a second; ``on_first_pass`` with the first trace id.

    >>> report = asyncio.run(run_loop(SyntheticConfig(rate=20, duration_seconds=2), MetricsCollector()))
    >>> report.passed
    True
    """
    collector = collector or in_process_collector(config)
    stop = stop or asyncio.Event()
    state = RunState()
    if config.target == "in-process":
        interval = collector.heartbeats.interval
        if interval != config.heartbeat_interval_seconds:
            raise ValueError(
                f"the loop heartbeats every {config.heartbeat_interval_seconds:g} s but the collector's heartbeat "
                f"monitor expects every {interval:g} s: agents would be judged on the wrong clock"
            )
        target: Target = InProcessTarget(collector)
    else:
        target = HttpTarget(config.target, config.token or os.environ.get("ARK_OBS_INGEST_TOKEN"), state.unexpected)
    rng = random.Random(config.seed)
    pipeline = Pipeline(AgentContext(collector, config, target, rng, PipelineControls.from_config(config)), state)
    anomalies_before = revision_anomalies(collector, "Kenny")
    silence = {
        agent: _SilenceWatch(agent, config.heartbeat_interval_seconds) for agent in config.fault_agents("silence")
    }
    pending: set[asyncio.Task[None]] = set()
    remote = _RemoteChecks(target, state, rng) if isinstance(target, HttpTarget) else None

    async def one_pass(seq: int, bad: bool) -> None:
        started = perf_counter()
        try:
            outcome: PassOutcome = await pipeline.run_pass(seq, bad)
        except Exception as exc:  # the decorator already counted it in ark_agent_errors_total
            state.unexpected_error("pass", exc)
            return
        state.latencies.append((perf_counter() - started) * 1000.0)
        state.passes += 1
        if state.example_trace_id is None:
            state.example_trace_id = outcome.trace_id
            if on_first_pass is not None:
                on_first_pass(outcome.trace_id)
        state.denials += outcome.denied
        if outcome.injected is not None:
            state.injected += 1
            state.injected_denied += outcome.denied
        elif outcome.denied:
            state.false_denials += 1
        if config.validate_traces:
            if remote is None:
                state.check(await target.missing_agents(outcome.trace_id), outcome.expected_missing)
            else:
                remote.add(outcome.trace_id, outcome.expected_missing)

    async def schedule() -> None:
        total = math.inf if config.duration_seconds is None else max(1, round(config.rate * config.duration_seconds))
        start = state.started_at = time.monotonic()
        seq = 0
        while seq < total and not stop.is_set():
            due = min(total, math.floor((time.monotonic() - start) * config.rate) + 1)
            while seq < due:
                task = asyncio.create_task(one_pass(seq, rng.random() < config.bad_share))
                pending.add(task)
                task.add_done_callback(pending.discard)
                seq += 1
            state.scheduled, state.last_issued_at = seq, time.monotonic()
            if seq < total:
                await _sleep_or_stop(stop, start + seq / config.rate - time.monotonic())

    async def heartbeats() -> None:
        tick = 0
        interval = config.heartbeat_interval_seconds
        start = time.monotonic()
        last_sent: dict[str, float] = {}
        while True:
            beating = []
            for agent in pipeline.agents:
                watch = silence.get(agent.name)
                if watch is not None and tick >= SILENCE_AT_TICK:
                    # due one interval after the last beat actually sent (a late tick must not flatter it)
                    watch.silenced(last_sent.get(agent.name, start) + interval)
                else:
                    beating.append(agent.name)
            sent_at = time.monotonic()
            try:
                await asyncio.gather(*(target.heartbeat(name) for name in beating))
                last_sent.update(dict.fromkeys(beating, sent_at))
                pipeline.hrm.check_drift()
            except Exception as exc:  # keep beating: one failed tick must not silence every agent
                state.unexpected_error("heartbeats", exc)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * interval - time.monotonic()))

    async def watch_silence() -> None:
        step = config.heartbeat_interval_seconds / 20
        while any(not w.done for w in silence.values()):
            for watch in silence.values():
                if not watch.done:
                    up = await target.agent_up(watch.agent)
                    watch.observe(up, time.monotonic())
                    if up is False:
                        state.silent.add(watch.agent)
            await asyncio.sleep(step)

    async def progress() -> None:
        while on_progress is not None:
            on_progress(state)
            await asyncio.sleep(0.25)

    background = [asyncio.create_task(heartbeats()), asyncio.create_task(progress())]
    remote_task = asyncio.create_task(remote.run_forever()) if remote is not None else None
    silence_task = asyncio.create_task(watch_silence()) if silence else None
    try:
        await schedule()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if silence_task is not None:  # a silenced agent needs time to be noticed: wait up to the limit
            limit = (SILENCE_AT_TICK + 1 + SILENCE_LIMIT_INTERVALS) * config.heartbeat_interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(silence_task), max(0.0, limit - state.elapsed) + 0.5)
    finally:
        for task in (*background, *pending, *([silence_task] if silence_task else [])):
            task.cancel()
        await asyncio.gather(*background, *pending, *([silence_task] if silence_task else []), return_exceptions=True)
        if remote is not None and remote_task is not None:
            remote.closing = True  # let it finish the checks under way, then check the rest
            await asyncio.gather(remote_task, return_exceptions=True)
            await remote.target.flush()
            await remote.check_ready()
        await target.aclose()
        if on_progress is not None:
            on_progress(state)
    state.revision_anomalies = revision_anomalies(collector, "Kenny") - anomalies_before
    return build_report(config, state, collector, tuple(w.result() for w in silence.values()), target.name)


def revision_anomalies(collector: MetricsCollector, agent: str) -> int:
    """How many state revision anomalies ``agent``'s writes have caused on ``collector``."""
    from ark_obs.state_revisions import AnomalyKind

    metric = collector.metric(catalog.ARK_STATE_REVISION_ANOMALIES_TOTAL.name)
    return int(sum(metric.labels(agent, kind.value).get() for kind in AnomalyKind))


def in_process_collector(config: SyntheticConfig) -> MetricsCollector:
    """A new collector whose heartbeat monitor expects the loop's heartbeat interval."""
    from ark_obs.heartbeat import HeartbeatMonitor

    collector = MetricsCollector()
    collector.heartbeats = HeartbeatMonitor(collector, config.heartbeat_interval_seconds)
    return collector


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        await asyncio.sleep(0)  # let the passes just started run
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class _RemoteChecks:
    """Traces of an HTTP run, checked with the service as soon as their spans are posted.

    Checking at once matters: the service forgets a finished trace one TTL after finalizing it. Beyond
    MAX_HTTP_CHECKS_PER_SECOND a random sample is checked, and the report says so.
    """

    def __init__(self, target: HttpTarget, state: RunState, rng: random.Random) -> None:
        self.target = target
        self._state = state
        self._rng = rng
        self._pending: list[tuple[int, str, frozenset[str]]] = []
        self._last = time.monotonic()
        self._tokens = float(MAX_HTTP_CHECKS_PER_SECOND)  # a bucket: bursts up to one second's budget
        self._gate = asyncio.Semaphore(16)
        self.closing = False

    def add(self, trace_id: str, expected_missing: frozenset[str]) -> None:
        """Check ``trace_id`` once a flush that starts after now has posted its spans."""
        self._pending.append((self.target.flushes_started, trace_id, expected_missing))

    async def run_forever(self) -> None:
        """Check what is ready every HTTP_FLUSH_SECONDS until ``closing`` is set."""
        while not self.closing:
            await asyncio.sleep(HTTP_FLUSH_SECONDS)
            await self.check_ready()

    async def check_ready(self) -> None:
        """Check the traces whose spans are posted (a sample, beyond the per-second budget)."""
        done = self.target.flushes_done
        ready = [p for p in self._pending if p[0] < done]
        self._pending = [p for p in self._pending if p[0] >= done]
        now = time.monotonic()
        self._tokens = min(MAX_HTTP_CHECKS_PER_SECOND, self._tokens + MAX_HTTP_CHECKS_PER_SECOND * (now - self._last))
        self._last = now
        if len(ready) > self._tokens:
            ready = self._rng.sample(ready, int(self._tokens))
        self._tokens -= len(ready)
        await asyncio.gather(*(self._one(trace_id, expected) for _, trace_id, expected in ready))

    async def _one(self, trace_id: str, expected_missing: frozenset[str]) -> None:
        async with self._gate:
            self._state.check(await self.target.missing_agents(trace_id), expected_missing)


class _SilenceWatch:
    """Tracks one silenced agent: up before the silence, and when it was first reported down."""

    def __init__(self, agent: str, interval: float) -> None:
        self.agent = agent
        self.interval = interval
        self.first_missed: float | None = None  # monotonic
        self.down_at: float | None = None
        self.was_up = False
        self.done = False

    def silenced(self, at: float) -> None:
        if self.first_missed is None:
            self.first_missed = at

    def observe(self, up: bool | None, now: float) -> None:
        if self.first_missed is None or now < self.first_missed:
            self.was_up |= up is True
            return
        if up is False and self.down_at is None:
            self.down_at = now
            self.done = True

    def result(self) -> SilenceResult:
        delay = None if self.down_at is None or self.first_missed is None else self.down_at - self.first_missed
        wall = None if self.first_missed is None else time.time() - (time.monotonic() - self.first_missed)
        return SilenceResult(
            agent=self.agent,
            first_missed_beat_at=wall,
            reported_down_after_seconds=None if delay is None else round(delay, 3),
            limit_seconds=SILENCE_LIMIT_INTERVALS * self.interval,
            was_up_before=self.was_up,
        )
