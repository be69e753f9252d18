"""The synthetic validation loop: simulated ARK agents, instrumented for real, driving the whole pipeline.

    ark-obs synthetic                                  # the seed's loop: 1 pass/s for 30 s
    ark-obs synthetic --rate 50 --duration 10 --bad-share 0.1
    ark-obs synthetic --fault kenny-errors --fault silence:Joey --json
    ark-obs synthetic --target http://127.0.0.1:9871   # feed a running ark-obs over HTTP

Each pass is one signal through Kyle -> Joey -> HRM -> Kenny -> Aletheia. Every agent method is wrapped
with the library's own ``instrument_agent_method`` + ``with_trace_id`` (the pass itself too: its
decorator mints the trace id, binds it and observes ``ark_pass_latency_ms`` with the id as exemplar),
every agent records its span with ``record_trace_span`` and heartbeats once per interval. HRM evaluates
every action against the (immutable) Graveyard rules; its decorator records ``hrm_eval_latency_ms`` and
``graveyard_validations_total``, and each violation is counted in ``hrm_denials_total{rule_id,agent}``.
Kyle sets ``kyle_ingest_rate``, Joey ``joey_pattern_confidence_avg``, Kenny ``kenny_exec_success_rate``,
HRM ``ark_ethics_drift``; a simulated Watchdog counts ``watchdog_quarantines_total{agent,reason}``.

Faults (``--fault``, repeatable) and what the report then expects:

- ``kenny-errors``: Kenny's executions raise ``InjectedFault``. The Watchdog quarantines Kenny after 3
  consecutive errors for 5 s (the seed's downtime heuristic); while quarantined Kenny is skipped, so
  those traces stop at Kenny. These errors and incomplete traces are *expected*: they do not fail
  "zero unexpected errors" or "every trace complete", and an extra criterion requires at least one
  quarantine of Kenny. Anything else that raises is unexpected.
- ``silence:AGENT``: AGENT stops heartbeating at its third heartbeat tick (it keeps processing). An
  extra criterion requires the heartbeat monitor to report it down within 2 intervals of its first
  missed heartbeat.
- ``drop:AGENT``: AGENT's span is lost for ``--drop-share`` of the passes (default 0.1): those traces
  must be reported incomplete with exactly AGENT missing, and every other trace complete.
- ``skip-revision``: Kenny's state manager skips a revision on every ``SKIP_REVISION_EVERY``-th write
  (Kenny writes ``position:SYMBOL`` after each execution, with ``track_state_operation(..., key=,
  revision=)``). Without it every key's revisions must be contiguous; with it the revision checker must
  have counted a gap.

The report judges the run against the seed's validation criteria, plus one per injected fault:

- throughput >= the asked rate: completed passes over the time their starts took (each start owns a
  1/rate slot; the scheduler is open-loop, so slow passes do not lower it, a loop that falls behind
  by more than 0.1 s does, and failed passes are not counted);
- zero unexpected errors (injected ones are counted apart);
- p95 <= 400 ms over the passes (the most recent 200,000 in an endless run);
- every injected violation denied, and no valid action denied;
- every trace complete: each pass' trace is checked with the trace monitor right after it ends, and
  must miss exactly the agents the injected faults explain (none without faults).

A live progress display (rich, on stderr) shows passes, achieved rate, p95, denials, quarantines,
incomplete traces; the report is a table, or JSON with ``--json``; exit status 1 names what failed.

Targets: ``in-process`` (default) records everything on the given collector. ``http://host:port`` sends
spans (``POST /spans`` batches) and heartbeats (``POST /heartbeats/{agent}``) to a running ark-obs and
asks it for trace continuity (``GET /traces/{id}``, as soon as the spans are posted: the service forgets
a finished trace one TTL later; at most 200 checks/s, a random sample beyond) and heartbeat status
(``ark_agent_up`` on its ``/metrics``); the agents' metrics
(decorator latencies, denials, gauges, quarantines) then stay in this process' own collector and never
reach that service's ``/metrics`` - exactly as for an agent process that does not expose them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from ark_obs import catalog
from ark_obs.instrumentation import instrument_agent_method, track_state_operation, with_trace_id
from ark_obs.metrics import MetricsCollector

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ark_obs.app import Service

__all__ = [
    "ARGUMENTS",
    "DEFAULT_LATENCIES",
    "HELP",
    "Criterion",
    "InjectedFault",
    "LatencyModel",
    "PipelineControls",
    "SilenceResult",
    "SyntheticConfig",
    "SyntheticHandle",
    "SyntheticReport",
    "add_arguments",
    "background_hook",
    "build_parser",
    "config_from_args",
    "in_process_collector",
    "main",
    "run_loop",
    "start_background",
]

log = logging.getLogger("ark_obs.synthetic")

PIPELINE: Final[tuple[str, ...]] = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
P95_OBJECTIVE_MS: Final = 400.0  # the seed's decision latency SLO
QUARANTINE_AFTER_ERRORS: Final = 3
QUARANTINE_SECONDS: Final = 5.0  # the seed's downtime heuristic per quarantine
SILENCE_AT_TICK: Final = 2  # silenced agents miss heartbeat ticks 2, 3, ... (ticks 0 and 1 are sent)
SILENCE_LIMIT_INTERVALS: Final = 2.0
# latencies kept for the report's percentiles (a long background run keeps the most recent ones)
MAX_KEPT_LATENCIES: Final = 200_000
RECENT_LATENCIES: Final = 2_000  # the live display's p95
MAX_ERROR_KINDS: Final = 50  # distinct unexpected errors kept by message (an endless run stays bounded)
SCHEDULING_SLACK_SECONDS: Final = 0.1  # a GC pause or a busy neighbour is not falling behind
MAX_HTTP_BATCH: Final = 5_000
HTTP_FLUSH_SECONDS: Final = 0.1
MAX_HTTP_CHECKS_PER_SECOND: Final = 200  # traces validated over HTTP (a random sample beyond this)
SKIP_REVISION_EVERY: Final = 10  # --fault skip-revision: every 10th state write skips a revision
HELP: Final = "Drive simulated, instrumented agents through the pipeline and check the seed's criteria."


class InjectedFault(RuntimeError):
    """An error the loop injected on purpose (``--fault kenny-errors``); expected, never a finding."""


# --- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LatencyModel:
    """A log-normal latency: ``median_ms * exp(sigma * N(0, 1))``; median 0 means no latency at all.

    >>> LatencyModel.parse("35:0.4")
    LatencyModel(median_ms=35.0, sigma=0.4)
    """

    median_ms: float
    sigma: float = 0.35

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_ms) and self.median_ms >= 0):
            raise ValueError(f"median latency must be a finite number >= 0 ms, got {self.median_ms}")
        if not (math.isfinite(self.sigma) and 0 <= self.sigma <= 3):
            raise ValueError(f"sigma must be between 0 and 3, got {self.sigma}")

    @classmethod
    def parse(cls, text: str) -> LatencyModel:
        """``MEDIAN_MS`` or ``MEDIAN_MS:SIGMA``."""
        median, _, sigma = text.partition(":")
        return cls(float(median), float(sigma) if sigma else 0.35)

    def sample(self, rng: random.Random, scale: float = 1.0) -> float:
        """One latency in ms (0 when the median or the scale is 0)."""
        if self.median_ms == 0 or scale == 0:
            return 0.0
        return self.median_ms * scale * math.exp(self.sigma * rng.gauss(0.0, 1.0))


# Median ~130 ms end to end, p95 ~200 ms: inside the 400 ms decision SLO; HRM p95 ~53 ms (SLO: 120 ms).
DEFAULT_LATENCIES: Final[Mapping[str, LatencyModel]] = {
    "Kyle": LatencyModel(10.0),
    "Joey": LatencyModel(35.0),
    "HRM": LatencyModel(30.0),
    "Kenny": LatencyModel(45.0),
    "Aletheia": LatencyModel(10.0),
}

FaultKind = Literal["kenny-errors", "silence", "drop", "skip-revision"]


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault: ``kenny-errors``, ``skip-revision``, ``silence:AGENT`` or ``drop:AGENT``."""

    kind: FaultKind
    agent: str = "Kenny"

    @classmethod
    def parse(cls, text: str, pipeline: Sequence[str] = PIPELINE) -> Fault:
        """Parse the ``--fault`` syntax; unknown kinds and agents raise ValueError naming the choices."""
        kind, _, agent = text.strip().partition(":")
        if kind in ("kenny-errors", "skip-revision") and not agent:
            return cls(kind, "Kenny")  # type: ignore[arg-type]
        if kind in ("silence", "drop") and agent:
            if agent not in pipeline:
                raise ValueError(f"--fault {text}: unknown agent {agent!r}; agents: {', '.join(pipeline)}")
            return cls(kind, agent)  # type: ignore[arg-type]
        raise ValueError(f"--fault {text!r}: expected kenny-errors, silence:AGENT or drop:AGENT, or skip-revision")

    def __str__(self) -> str:
        return self.kind if self.kind in ("kenny-errors", "skip-revision") else f"{self.kind}:{self.agent}"


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """What one run does. ``duration_seconds=None`` runs until stopped (the service's background loop)."""

    rate: float = 1.0
    duration_seconds: float | None = 30.0
    bad_share: float = 0.05
    faults: tuple[Fault, ...] = ()
    drop_share: float = 0.1
    target: str = "in-process"
    token: str | None = None
    latencies: Mapping[str, LatencyModel] = field(default_factory=lambda: dict(DEFAULT_LATENCIES))
    latency_scale: float = 1.0
    heartbeat_interval_seconds: float = 1.0
    seed: int | None = None
    validate_traces: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= 100_000):
            raise ValueError(f"rate must be in (0, 100000] passes/s, got {self.rate}")
        if self.duration_seconds is not None and not (0 < self.duration_seconds < math.inf):
            raise ValueError(f"duration must be positive, got {self.duration_seconds}")
        for name in ("bad_share", "drop_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not (math.isfinite(self.latency_scale) and self.latency_scale >= 0):
            raise ValueError(f"latency scale must be >= 0, got {self.latency_scale}")
        if not 0 < self.heartbeat_interval_seconds <= 3600:
            raise ValueError(f"heartbeat interval must be in (0, 3600] s, got {self.heartbeat_interval_seconds}")
        unknown = set(self.latencies) - set(PIPELINE)
        if unknown:
            raise ValueError(f"latency for unknown agent(s) {sorted(unknown)}; agents: {', '.join(PIPELINE)}")
        if self.target != "in-process" and not self.target.startswith(("http://", "https://")):
            raise ValueError(f"target must be 'in-process' or an http(s):// URL, got {self.target!r}")

    def has(self, kind: FaultKind) -> bool:
        """Whether a fault of ``kind`` is injected."""
        return any(f.kind == kind for f in self.faults)

    def fault_agents(self, kind: FaultKind) -> tuple[str, ...]:
        """The agents a fault of ``kind`` applies to."""
        return tuple(f.agent for f in self.faults if f.kind == kind)

    def latency(self, agent: str) -> LatencyModel:
        """The latency model of ``agent`` (zero when not configured)."""
        return self.latencies.get(agent, LatencyModel(0.0))


# --- the report -------------------------------------------------------------------------------------
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


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between closest ranks (None when empty)."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --- what flows through the pipeline ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Signal:
    """A market signal as Kyle ingests it; ``lost_span`` names an agent whose span will be lost."""

    seq: int
    symbol: str
    price: float
    lost_span: str | None = None


@dataclass(frozen=True, slots=True)
class Pattern:
    """Joey's reading of a signal."""

    signal: Signal
    direction: Literal["buy", "sell"]
    confidence: float


@dataclass(frozen=True, slots=True)
class Action:
    """What an agent proposes to do; ``injected`` names the Graveyard rule it was built to break."""

    signal: Signal
    agent: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    leverage: float
    injected: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """HRM's decision on an action."""

    action: Action
    approved: bool
    violations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Execution:
    """Kenny's outcome: executed, skipped (denied or quarantined), or failed."""

    verdict: Verdict
    status: Literal["executed", "denied", "quarantined", "failed"]


# --- the Graveyard: immutable rules HRM checks every action against ------------------------------------
@dataclass(frozen=True, slots=True)
class GraveyardRule:
    """One immutable rule; ``limit`` is a maximum for numeric rules, a forbidden set for symbols."""

    rule_id: str
    description: str
    limit: float | frozenset[str]

    def violated_by(self, action: Action) -> bool:
        """Whether ``action`` breaks this rule."""
        if self.rule_id == "max_position_size":
            return action.quantity > float(self.limit)  # type: ignore[arg-type]
        if self.rule_id == "max_leverage":
            return action.leverage > float(self.limit)  # type: ignore[arg-type]
        if self.rule_id == "restricted_symbol":
            return action.symbol in self.limit  # type: ignore[operator]
        raise ValueError(f"unknown Graveyard rule {self.rule_id!r}")


GRAVEYARD: Final[tuple[GraveyardRule, ...]] = (
    GraveyardRule("max_position_size", "No order above 1,000 units.", 1000.0),
    GraveyardRule("max_leverage", "No leverage above 3x.", 3.0),
    GraveyardRule("restricted_symbol", "No trading in sanctioned symbols.", frozenset({"SANCTIONED"})),
)
SYMBOLS: Final = ("BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT")


def _violating(action: Action, rule: GraveyardRule) -> Action:
    """``action`` changed to break exactly ``rule`` (a known-bad action)."""
    if rule.rule_id == "max_position_size":
        return replace(action, quantity=5_000, injected=rule.rule_id)
    if rule.rule_id == "max_leverage":
        return replace(action, leverage=10.0, injected=rule.rule_id)
    return replace(action, symbol="SANCTIONED", injected=rule.rule_id)


# --- where spans and heartbeats go --------------------------------------------------------------------
class Target(Protocol):
    """Where the loop sends spans and heartbeats, and asks about traces and agents."""

    name: str

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Record one span (never blocks)."""

    async def heartbeat(self, agent: str) -> None:
        """Send one heartbeat."""

    async def agent_up(self, agent: str) -> bool | None:
        """Whether the monitor reports ``agent`` up (None: unknown)."""

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """The pipeline agents the trace store has no span from (None: could not ask)."""

    async def aclose(self) -> None:
        """Flush and release."""


class InProcessTarget:
    """Records on a collector in this process."""

    name = "in-process"

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self._record = collector.traces.record_span
        _ = collector.heartbeats  # created now, not on the first beat of a timed run

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Record the span in the collector's trace store."""
        self._record(trace_id, agent, at=at, duration_ms=duration_ms, ok=ok)

    async def heartbeat(self, agent: str) -> None:
        """Record the heartbeat on the collector's monitor."""
        self.collector.record_heartbeat(agent)

    async def agent_up(self, agent: str) -> bool | None:
        """The heartbeat monitor's verdict now."""
        return self.collector.heartbeats.is_up(agent)

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """Continuity from the trace store, against the monitor's pipeline."""
        report = self.collector.validate_trace_continuity(trace_id)
        if str(report.status) == "unavailable":
            return None
        return tuple(report.missing_agents)

    async def aclose(self) -> None:
        """Nothing to release (the collector belongs to the caller)."""


class HttpTarget:
    """Sends spans in batches and heartbeats to a running ark-obs; asks it about traces and agents."""

    def __init__(self, base_url: str, token: str | None, errors: Counter[str]) -> None:
        import httpx

        self.name = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=self.name, headers=headers, timeout=5.0)
        self._buffer: list[dict[str, Any]] = []
        self._errors = errors
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self.flushes_started = 0
        self.flushes_done = 0  # the number of the last flush that finished: spans buffered before it started are out

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Buffer the span; a background task posts batches every 0.1 s (sooner when the buffer fills)."""
        self._buffer.append({"trace_id": trace_id, "agent": agent, "at": at, "duration_ms": duration_ms, "ok": ok})
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
        if len(self._buffer) >= MAX_HTTP_BATCH:
            self._wake.set()

    async def _flush_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), HTTP_FLUSH_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Post every buffered span now."""
        async with self._lock:
            self.flushes_started += 1
            number = self.flushes_started
            # only what is buffered now: spans buffered meanwhile wait for the next flush, so a flush
            # always ends and "flush n is done" means "everything buffered before it started is posted"
            spans, self._buffer = self._buffer, []
            for i in range(0, len(spans), MAX_HTTP_BATCH):
                batch = spans[i : i + MAX_HTTP_BATCH]
                await self._post("/spans", {"spans": batch}, "POST /spans")
            self.flushes_done = number

    async def _post(self, path: str, body: dict[str, Any] | None, what: str) -> None:
        import httpx

        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            self._errors[f"{what}: {type(exc).__name__}"] += 1
            return
        if response.status_code >= 300:
            self._errors[f"{what}: HTTP {response.status_code}"] += 1

    async def heartbeat(self, agent: str) -> None:
        """POST /heartbeats/{agent}."""
        await self._post(f"/heartbeats/{agent}", None, "POST /heartbeats")

    async def agent_up(self, agent: str) -> bool | None:
        """``ark_agent_up{agent}`` from the service's ``/metrics`` (the service has no heartbeat query)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = await self._client.get("/metrics", params={"name[]": catalog.ARK_AGENT_UP.name})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == catalog.ARK_AGENT_UP.name and sample.labels.get("agent") == agent:
                    return sample.value == 1.0
        return None

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """GET /traces/{id}: ``missing_agents`` against the service's pipeline (all of ours if it is unknown)."""
        import httpx

        try:
            response = await self._client.get(f"/traces/{trace_id}")
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return PIPELINE
        if response.status_code != 200:
            return None
        return tuple(response.json().get("missing_agents", ()))

    async def aclose(self) -> None:
        """Post what is buffered and close the connection pool."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher  # ends after its current flush: a batch is never cut off mid-post
        await self.flush()
        await self._client.aclose()


# --- the run's bookkeeping ----------------------------------------------------------------------------
class RunState:
    """Counters of one run, updated by the passes on the event loop (single-threaded: no locks)."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.last_issued_at = self.started_at
        self.scheduled = 0
        self.passes = 0
        self.latencies: deque[float] = deque(maxlen=MAX_KEPT_LATENCIES)
        self.injected = 0
        self.injected_denied = 0
        self.false_denials = 0
        self.denials = 0
        self.expected_errors = 0
        self.unexpected: Counter[str] = Counter()
        self.quarantines: Counter[str] = Counter()
        self.checked = 0
        self.complete = 0
        self.incomplete_expected = 0
        self.incomplete_unexpected = 0
        self.unexpected_missing: Counter[str] = Counter()
        self.example_trace_id: str | None = None
        self.silent: set[str] = set()
        self.revision_anomalies = 0

    def unexpected_error(self, where: str, exc: BaseException) -> None:
        """Count an error nothing injected (kinds beyond MAX_ERROR_KINDS are lumped together)."""
        key = f"{where}: {type(exc).__name__}: {exc}"[:200]
        if key not in self.unexpected and len(self.unexpected) >= MAX_ERROR_KINDS:
            key = "other errors"
        self.unexpected[key] += 1

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started_at

    def recent_p95(self) -> float | None:
        """p95 of the most recent passes (the live display)."""
        n = len(self.latencies)
        recent = sorted(self.latencies[i] for i in range(max(0, n - RECENT_LATENCIES), n))
        return _quantile(recent, 0.95)

    def check(self, missing: tuple[str, ...] | None, expected_missing: frozenset[str]) -> None:
        """Account for one trace's continuity against what the injected faults explain."""
        if missing is None:
            self.unexpected["trace store unavailable"] += 1
            return
        self.checked += 1
        if not missing and not expected_missing:
            self.complete += 1
        elif set(missing) == expected_missing:
            self.incomplete_expected += 1
        else:
            self.incomplete_unexpected += 1
            for agent in set(missing) ^ expected_missing:
                self.unexpected_missing[agent] += 1


class Watchdog:
    """The simulated ARK Watchdog: quarantines an agent after consecutive errors, for a while."""

    def __init__(self, collector: MetricsCollector, state: RunState, controls: PipelineControls | None = None) -> None:
        self._quarantines = collector.metric(catalog.WATCHDOG_QUARANTINES_TOTAL.name)
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


# --- the agents -----------------------------------------------------------------------------------------
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


# --- one pass ---------------------------------------------------------------------------------------
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
            action = _violating(action, GRAVEYARD[seq % len(GRAVEYARD)])
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
    return _report(config, state, collector, tuple(w.result() for w in silence.values()), target.name)


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


def _report(
    config: SyntheticConfig,
    state: RunState,
    collector: MetricsCollector,
    silence: tuple[SilenceResult, ...],
    target: str,
) -> SyntheticReport:
    """Judge the run against the seed's criteria (plus one per injected fault)."""
    # Throughput of an open-loop generator: completed passes over the time their starts took, each start
    # owning a 1/rate slot, so rate x duration passes started on time is exactly the asked rate. Starting
    # the last pass late (the loop fell behind) stretches that time; lateness within SCHEDULING_SLACK is
    # a hiccup (timer resolution, a GC pause), not falling behind. A pass that failed or never ended is not
    # counted; slow passes show in the latency criterion, not here.
    ideal_last = state.started_at + max(0, state.scheduled - 1) / config.rate
    late = max(0.0, state.last_issued_at - ideal_last - SCHEDULING_SLACK_SECONDS)
    elapsed = state.scheduled / config.rate + late
    achieved = state.passes / elapsed if elapsed > 0 else 0.0
    latencies = sorted(state.latencies)
    p95 = _quantile(latencies, 0.95)
    unexpected = sum(state.unexpected.values())
    faults = ", ".join(map(str, config.faults))
    criteria = [
        Criterion(
            f"throughput >= {config.rate:g} passes/s",
            achieved >= config.rate,
            f"{state.passes} passes in {elapsed:.2f} s = {achieved:.2f}/s",
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
        criteria.append(
            Criterion(
                "every trace complete",
                state.incomplete_unexpected == 0 and state.checked > 0,
                f"{state.complete}/{state.checked} complete{sampled}"
                + (f", {state.incomplete_expected} incomplete as injected" if state.incomplete_expected else "")
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
        latency_p50_ms=_round(_quantile(latencies, 0.50)),
        latency_p95_ms=_round(p95),
        latency_p99_ms=_round(_quantile(latencies, 0.99)),
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


# --- running in the background of the service ---------------------------------------------------------
def background_hook(
    config: SyntheticConfig | None = None, *, announce: Callable[[str], None] | None = None
) -> Callable[[Service], Awaitable[None]]:
    """A ``create_app(..., background=[...])`` hook feeding the service's own collector until shutdown.

    Without ``config``: the seed's loop (1 pass/s, 5% known-bad actions, no faults) at the service's
    heartbeat interval. Once the first pass is through, ``announce`` (default: print to stderr) gets
    the URLs of the status page, /metrics, /slos and that pass' trace.
    """

    async def synthetic_loop(service: Service) -> None:
        settings = service.settings
        cfg = config or SyntheticConfig(
            duration_seconds=None, heartbeat_interval_seconds=settings.heartbeat_interval_seconds
        )
        base = settings.bind_url

        def first(trace_id: str) -> None:
            (announce or _print_err)(service_urls(base, trace_id, cfg.rate))

        report = await run_loop(cfg, service.collector, on_first_pass=first)
        log.info(
            "synthetic loop ended: %d passes, failed criteria: %s", report.passes, ", ".join(report.failed) or "none"
        )

    return synthetic_loop


def service_urls(base: str, trace_id: str, rate: float = 1.0) -> str:
    """The lines ``make run`` prints: where to look."""
    return (
        f"ark-obs is up, fed by the synthetic loop ({rate:g} pass{'' if rate == 1 else 'es'}/s):\n"
        f"  status page    {base}/\n"
        f"  metrics        {base}/metrics\n"
        f"  SLOs           {base}/slos\n"
        f"  a trace        {base}/traces/{trace_id}\n"
        f"  stop with Ctrl-C"
    )


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SyntheticHandle:
    """A loop running in a thread of its own: ``stop()`` ends it and returns its report."""

    def __init__(self, collector: MetricsCollector, config: SyntheticConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.report: SyntheticReport | None = None
        self.error: BaseException | None = None
        self.first_trace_id: str | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(collector, config), name="ark-obs-synthetic", daemon=True
        )
        self._thread.start()
        self._started.wait()

    def _run(self, collector: MetricsCollector, config: SyntheticConfig) -> None:
        asyncio.set_event_loop(self._loop)

        def first(trace_id: str) -> None:
            self.first_trace_id = trace_id

        async def main() -> SyntheticReport:
            self._started.set()
            return await run_loop(config, collector, stop=self._stop, on_first_pass=first)

        try:
            self.report = self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self._started.set()
        finally:
            self._loop.close()

    @property
    def running(self) -> bool:
        """Whether the loop still runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> SyntheticReport | None:
        """Stop scheduling passes, let the ones in flight finish, and return the report."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        return self.report

    def join(self, timeout: float | None = None) -> SyntheticReport | None:
        """Wait for a run with a duration to end on its own."""
        self._thread.join(timeout)
        return self.report


def start_background(collector: MetricsCollector, config: SyntheticConfig) -> SyntheticHandle:
    """Start the loop in a daemon thread with its own event loop, recording on ``collector``."""
    return SyntheticHandle(collector, config)


# --- the command -----------------------------------------------------------------------------------------
def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latency(text: str) -> tuple[str, LatencyModel]:
    agent, sep, model = text.partition("=")
    if not sep or agent not in PIPELINE:
        raise argparse.ArgumentTypeError(
            f"--latency {text!r}: expected AGENT=MEDIAN_MS[:SIGMA], AGENT one of {', '.join(PIPELINE)}"
        )
    try:
        return agent, LatencyModel.parse(model)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--latency {text!r}: {exc}") from None


def _number(text: str, holds: Callable[[float], bool], what: str) -> float:
    """``text`` as a float for which ``holds``; argparse prefixes the option: ``argument --rate: must be ...``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and holds(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _share(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a share between 0 and 1")


def _positive(text: str) -> float:
    return _number(text, lambda v: v > 0, "a positive number")


def _scale(text: str) -> float:
    return _number(text, lambda v: v >= 0, "a number >= 0")


# (flags, add_argument options): cli.py turns each into its ``arg(...)``
ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--rate",), {"type": _positive, "default": 1.0, "help": "passes per second (default 1, the seed's 1 Hz)"}),
    (("--duration",), {"type": _scale, "default": 30.0,
                       "help": "seconds to run (default 30; 0 = until Ctrl-C)"}),
    (("--bad-share",), {"type": _share, "default": 0.05,
                        "help": "share of passes carrying a known-bad action HRM must deny (default 0.05)"}),
    (("--fault",), {"type": _fault, "action": "append", "default": [], "metavar": "FAULT",
                    "help": "inject a fault (repeatable): kenny-errors, skip-revision, silence:AGENT, drop:AGENT"}),
    (("--drop-share",), {"type": _share, "default": 0.1,
                         "help": "share of passes whose span a drop:AGENT fault loses (default 0.1)"}),
    (("--target",), {"default": "in-process",
                     "help": "in-process (default) or http://host:port of a running ark-obs"}),
    (("--token",), {"default": None, "help": "bearer token for an HTTP target (default: $ARK_OBS_INGEST_TOKEN)"}),
    (("--latency",), {"type": _latency, "action": "append", "default": [], "metavar": "AGENT=MS[:SIGMA]",
                      "help": "an agent's log-normal latency: median ms and sigma (repeatable)"}),
    (("--latency-scale",), {"type": _scale, "default": 1.0,
                            "help": "multiply every agent latency (0 = no simulated latency)"}),
    (("--interval",), {"type": _positive, "default": 1.0, "help": "heartbeat interval in seconds (default 1)"}),
    (("--seed",), {"type": int, "default": None, "help": "random seed, for a reproducible run"}),
    (("--json",), {"action": "store_true", "help": "print the report as JSON (no live display)"}),
    (("--quiet",), {"action": "store_true", "help": "no live display"}),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synthetic`` options to ``parser``."""
    for flags, options in ARGUMENTS:
        parser.add_argument(*flags, **options)


def build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synthetic`` subcommand to an ``add_subparsers()`` result; it runs ``main``."""
    parser: argparse.ArgumentParser = subparsers.add_parser("synthetic", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(run=main)
    return parser


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    """The run configuration the parsed options describe."""
    latencies = dict(DEFAULT_LATENCIES)
    latencies.update(dict(args.latency))
    return SyntheticConfig(
        rate=args.rate,
        duration_seconds=args.duration or None,
        bad_share=args.bad_share,
        faults=tuple(dict.fromkeys(args.fault)),
        drop_share=args.drop_share,
        target=args.target,
        token=args.token,
        latencies=latencies,
        latency_scale=args.latency_scale,
        heartbeat_interval_seconds=args.interval,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> int:
    """Run the loop as the options say; print the report; 0 when every criterion holds, else 1."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ark-obs synthetic: {exc}", file=sys.stderr)
        return 2
    live = not (args.json or args.quiet)
    report = asyncio.run(_run_cli(config, live))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    if not report.passed:
        print(f"ark-obs synthetic: FAILED: {'; '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


async def _run_cli(config: SyntheticConfig, live: bool) -> SyntheticReport:
    """Run with a live display on stderr; Ctrl-C or SIGTERM ends the run early, with a report."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if not live:
        return await run_loop(config, in_process_collector(config), stop=stop)
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    with Live(console=console, auto_refresh=False, transient=False) as display:

        def progress(state: RunState) -> None:
            display.update(_progress_table(config, state), refresh=True)

        return await run_loop(config, in_process_collector(config), stop=stop, on_progress=progress)


def _progress_table(config: SyntheticConfig, state: RunState) -> RenderableType:
    from rich.table import Table

    elapsed = state.elapsed
    p95 = state.recent_p95()
    table = Table(title=f"ark-obs synthetic -> {config.target}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    incomplete = state.incomplete_expected + state.incomplete_unexpected
    rows = (
        ("passes", f"{state.passes:,} / {state.scheduled:,} started"),
        ("achieved rate", f"{state.passes / elapsed:,.1f}/s (asked {config.rate:g}/s)" if elapsed > 0 else "-"),
        ("p95 (recent)", "-" if p95 is None else f"{p95:,.1f} ms"),
        ("denials", f"{state.denials:,} ({state.injected_denied:,}/{state.injected:,} injected)"),
        ("quarantines", ", ".join(f"{a} x{n}" for a, n in state.quarantines.items()) or "0"),
        ("incomplete traces", f"{incomplete:,} ({state.incomplete_unexpected:,} unexpected)"),
        ("unexpected errors", f"{sum(state.unexpected.values()):,}"),
        ("silent agents", ", ".join(sorted(state.silent)) or "none"),
    )
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_report(report: SyntheticReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"synthetic validation: {report.passes:,} passes at {report.achieved_rate:,.2f}/s ({report.target})",
        title_justify="left",
    )
    table.add_column("criterion")
    table.add_column("result")
    table.add_column("detail")
    for c in report.criteria:
        table.add_row(c.name, "[green]PASS[/]" if c.passed else "[red]FAIL[/]", c.detail)
    console = Console()
    console.print(table)
    if report.example_trace_id:
        console.print(f"example trace: {report.example_trace_id}")
