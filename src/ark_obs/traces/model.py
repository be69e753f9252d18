"""What trace continuity is made of: spans, trace records and reports, store settings, the store protocol.

Stores (``memory``, ``redis_store``) implement ``TraceStore``; ``TraceMonitor`` (``monitor``) drives one
and turns its records into ``TraceReport``s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol

from ark_obs._seeddict import SeedDict
from ark_obs.registry import MAX_LABEL_VALUE_LENGTH

log = logging.getLogger("ark_obs")

DEFAULT_PIPELINE: Final[tuple[str, ...]] = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
DEFAULT_TTL_SECONDS: Final = 300.0
DEFAULT_MAX_IN_FLIGHT: Final = 100_000
DEFAULT_RECENT_MAX: Final = 100
DEFAULT_SWEEP_SECONDS: Final = 1.0
# Hosts synchronised by NTP are within milliseconds; a minute covers a badly drifting one. A span further
# in the future, or older than the TTL (its trace would already be finalized), is a broken clock or a unit
# mistake (``at: 0``, milliseconds for seconds) that would poison ark_trace_latency_ms.
DEFAULT_CLOCK_SKEW_SECONDS: Final = 60.0
# Distinct agents one trace may hold: the pipeline's five, retries under other names, the Watchdog, with
# room to spare. Without a cap one trace id took 104,000 agent names and a 12 MB report.
DEFAULT_MAX_AGENTS_PER_TRACE: Final = 32
# An in-flight trace whose last span arrived this long ago is *stalled* at its first missing pipeline agent.
# The pipeline's latency objective is 400 ms at p95 (decision_latency_p95): in a healthy pass the next
# agent's span follows the previous one within that, plus the transport's batching: 0.1 s for the
# synthetic loop's HTTP batches, 0.05 s for the Redis writer, and up to 5 s for an OpenTelemetry SDK's
# batch span processor (OTEL_BSP_SCHEDULE_DELAY's default). 5 s + 0.4 s, rounded up to 6 s (15 x the
# objective), never flags a healthy pass, and a stalled trace shows within 6 s + one sweep (1 s) of its
# last span: inside the 10 s an incident's first minute needs.
DEFAULT_STALL_SECONDS: Final = 6.0
MAX_TRACE_ID_LENGTH: Final = MAX_LABEL_VALUE_LENGTH
# ``metric`` label of spans dropped in ark_obs_dropped_total (a span is not itself a metric)
SPAN_METRIC: Final = "trace_span"
ENV_STORE: Final = "ARK_OBS_TRACE_STORE"
# Read when a monitor is created without these settings (an agent's lazily created default), so agent
# processes finalize and expire traces like the service; names match ark_obs.settings.
ENV_PIPELINE: Final = "ARK_OBS_PIPELINE"
ENV_TTL: Final = "ARK_OBS_TRACE_TTL_SECONDS"
ENV_MAX_IN_FLIGHT: Final = "ARK_OBS_MAX_IN_FLIGHT_TRACES"
ENV_MAX_AGENTS: Final = "ARK_OBS_MAX_AGENTS_PER_TRACE"
ENV_STALL: Final = "ARK_OBS_STALL_SECONDS"


class StoreUnavailable(Exception):
    """The trace store cannot be reached; raised inside ark-obs only, never into an agent."""


class TraceState(StrEnum):
    """Where a stored trace stands."""

    IN_FLIGHT = "in_flight"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"  # expired before every pipeline agent had a span


class TraceStatus(StrEnum):
    """What a report knows about a trace."""

    UNKNOWN = "unknown"  # never seen, evicted, or forgotten ttl_seconds after it was finalized
    IN_FLIGHT = "in_flight"
    STALLED = "stalled"  # in flight, no span for stall_seconds: waiting on its first missing agent
    COMPLETE = "complete"
    FAILED = "failed"  # every expected agent has a span, and one of them failed: complete, failed at it
    INCOMPLETE = "incomplete"
    UNAVAILABLE = "unavailable"  # the store could not be read


KNOWN_STATUSES: Final = frozenset(
    {TraceStatus.IN_FLIGHT, TraceStatus.STALLED, TraceStatus.COMPLETE, TraceStatus.FAILED, TraceStatus.INCOMPLETE}
)


@dataclass(frozen=True, slots=True)
class Span:
    """One agent's part in a trace: first start and last end (unix seconds), and whether all went well."""

    agent: str
    start: float
    end: float
    ok: bool = True

    @property
    def duration_ms(self) -> float:
        """End minus start, in milliseconds."""
        return (self.end - self.start) * 1000.0


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """A trace as a store holds it: one span per agent, in start order (ties: arrival order).

    ``last_seen``: when its last span arrived (the recording monitor's clock), while in flight.
    """

    trace_id: str
    spans: tuple[Span, ...]
    state: TraceState
    span_count: int
    last_seen: float | None = None

    @property
    def agents(self) -> tuple[str, ...]:
        """Agents with a span, in start order."""
        return tuple(s.agent for s in self.spans)

    @property
    def latency_ms(self) -> float:
        """First span's start to last span's end, in milliseconds."""
        return (max(s.end for s in self.spans) - min(s.start for s in self.spans)) * 1000.0


@dataclass(frozen=True, slots=True, eq=False)
class TraceReport(SeedDict):
    """The seed's continuity result (``complete``, ``missing_agents``, ``agents_seen``, ``latency_ms``) and more.

    Typed (``report.complete``) and the seed's dict, with lists for sequences and spans as dicts:
    ``report["missing_agents"] == []``, ``report.get("complete")``, ``json.dumps(report)``.
    ``trace_id`` is the canonical id the report answers for (a UUID's W3C form, see
    ``ark_obs.context.canonical_trace_id``); ``requested_id`` is the id as it was asked for.
    An unknown trace is never complete: ``known`` is False and every expected agent is missing.
    """

    trace_id: str
    status: TraceStatus
    complete: bool
    missing_agents: tuple[str, ...]
    agents_seen: tuple[str, ...]
    latency_ms: float | None
    out_of_order: tuple[str, ...] = ()
    failed_agents: tuple[str, ...] = ()
    expected_agents: tuple[str, ...] = ()
    span_count: int = 0
    spans: tuple[Span, ...] = field(default=(), repr=False)
    requested_id: str = ""
    waiting_on: str | None = None
    waited_seconds: float | None = None
    failed_at: str | None = None

    def _seed_items(self) -> dict[str, Any]:
        items = SeedDict._seed_items(self)
        items["requested_id"] = self.requested_id or self.trace_id
        items["known"] = self.known
        return items

    @property
    def known(self) -> bool:
        """Whether the store holds this trace."""
        return self.status in KNOWN_STATUSES


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether a store answers, for readiness."""

    backend: str
    healthy: bool
    detail: str = ""
    since: float | None = None  # Unix time (s) the store stopped answering, while it is unhealthy


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """What a store needs to know to finalize and bound traces."""

    pipeline: tuple[str, ...] = DEFAULT_PIPELINE
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    recent_max: int = DEFAULT_RECENT_MAX
    max_agents: int = DEFAULT_MAX_AGENTS_PER_TRACE
    stall_seconds: float = DEFAULT_STALL_SECONDS
    # finalized traces stay answerable this long (at least ttl_seconds; 0: ttl_seconds), at most max_in_flight
    history_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.pipeline:
            raise ValueError("the pipeline needs at least one agent")
        if len(set(self.pipeline)) != len(self.pipeline):
            raise ValueError(f"the pipeline names an agent twice: {self.pipeline}")
        if not self.ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {self.ttl_seconds}")
        if self.max_in_flight < 1 or self.recent_max < 1:
            raise ValueError("max_in_flight and recent_max must be at least 1")
        if not self.history_seconds >= 0:
            raise ValueError(f"history_seconds must not be negative, got {self.history_seconds}")
        if not self.stall_seconds > 0:
            raise ValueError(f"stall_seconds must be positive, got {self.stall_seconds}")
        if self.max_agents < 1:
            raise ValueError(
                f"max_agents (agents outside the pipeline per trace) must be at least 1, got {self.max_agents}"
            )


class TraceSink(Protocol):
    """What a store reports outcomes to (the sweeping ``TraceMonitor``)."""

    def on_complete(self, trace_id: str, latency_ms: float | None, record: TraceRecord | None = None) -> None:
        """A trace was finalized complete (latency None if its data expired before accounting).

        ``record``: the trace when a failed span may be in it (None: every span was ok, or its data expired).
        """

    def on_expired(self, record: TraceRecord) -> None:
        """A trace was finalized incomplete after idling ``ttl_seconds``."""

    def on_late(self, count: int) -> None:
        """Spans arrived for finalized traces."""

    def on_evicted(self, reason: str, count: int) -> None:
        """In-flight traces were dropped before finalizing (reason: capacity, lost)."""

    def on_dropped(self, count: int, detail: str) -> None:
        """Spans could not be written (the store is unavailable)."""

    def on_refused(self, count: int, detail: str) -> None:
        """Spans of new agents were refused: their trace holds ``max_agents`` agents already."""


class NullSink:
    """The sink of a store not bound to a monitor yet: outcomes are not counted."""

    def on_complete(self, trace_id: str, latency_ms: float | None, record: TraceRecord | None = None) -> None:
        """Ignore."""

    def on_expired(self, record: TraceRecord) -> None:
        """Ignore."""

    def on_late(self, count: int) -> None:
        """Ignore."""

    def on_evicted(self, reason: str, count: int) -> None:
        """Ignore."""

    def on_dropped(self, count: int, detail: str) -> None:
        """Ignore."""

    def on_refused(self, count: int, detail: str) -> None:
        """Ignore."""


class TraceStore(Protocol):
    """A bounded trace store. ``add`` never raises and never blocks on I/O; reads raise ``StoreUnavailable``.

    ``add`` takes plain values rather than a ``Span``: it is the hot path, and no object is built there.
    """

    @property
    def backend(self) -> str:
        """``memory`` or ``redis``."""

    @property
    def shared(self) -> bool:
        """Whether other processes see the same traces."""

    def bind(self, settings: TraceSettings, sink: TraceSink) -> None:
        """Attach the monitor's settings and its outcome sink (once, before the first ``add``)."""

    def add(self, trace_id: str, agent: str, start: float, end: float, ok: bool, now: float) -> None:
        """Record a span seen at ``now`` (the monitor's clock, which deadlines are measured on)."""

    def get(self, trace_id: str) -> TraceRecord | None:
        """The trace, or None if the store does not hold it."""

    def sweep(self, now: float | None) -> None:
        """Report outcomes to the sink; with ``now``, first finalize traces idle since ``now - ttl``."""

    def recent_incomplete(self, limit: int) -> list[TraceRecord]:
        """The most recently expired incomplete traces still held, newest first."""

    def recent_failed(self, limit: int) -> list[TraceRecord]:
        """The most recently completed traces with a failed span still held, newest first."""

    def in_flight(self) -> int:
        """Traces not finalized yet."""

    def history_reach(self, now: float) -> float | None:
        """How long before ``now`` the oldest finalized trace still held was finalized (None: none held)."""

    def stalled(self, now: float) -> dict[str, int]:
        """In-flight traces whose last span arrived ``stall_seconds`` or more before ``now``, by the first
        pipeline agent they miss (every pipeline agent present, 0 when none waits on it). A count, not a scan."""

    def recent_stalled(self, now: float, limit: int) -> list[TraceRecord]:
        """Stalled traces (as ``stalled`` counts them), the most recently active first, with ``last_seen``."""

    def flush(self) -> None:
        """Make this process' buffered writes visible to readers now."""

    def health(self) -> StoreHealth:
        """Whether the store answers (cheap: no I/O)."""

    def close(self) -> None:
        """Flush and release connections and threads."""


def _missing_and_order(agents: Sequence[str], expected: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Expected agents without a span, and seen agents that came before one preceding them in ``expected``."""
    seen = set(agents)
    missing = tuple(a for a in expected if a not in seen)
    rank = {a: i for i, a in enumerate(expected)}
    ranked = [rank[a] for a in agents if a in rank]
    out_of_order: list[str] = []
    lowest_after = math.inf
    # walking backwards: an agent is out of order if a later-seen agent ranks before it
    for r in reversed(ranked):
        if lowest_after < r:
            out_of_order.append(expected[r])
        lowest_after = min(lowest_after, r)
    return missing, tuple(reversed(out_of_order))


def first_missing(agents: Sequence[str] | frozenset[str], pipeline: Sequence[str]) -> str:
    """The first agent of ``pipeline`` not in ``agents`` ('' when none is missing): where a trace waits."""
    for agent in pipeline:
        if agent not in agents:
            return agent
    return ""


def failed_at(spans: Sequence[Span], order: Sequence[str]) -> str | None:
    """The agent a trace failed at: the first failed one in ``order``, else the first failed span; None if none."""
    failed = [s.agent for s in spans if not s.ok]
    if not failed:
        return None
    return next((a for a in order if a in failed), failed[0])


def build_report(
    trace_id: str,
    record: TraceRecord | None,
    expected: Sequence[str],
    status: TraceStatus | None = None,
    requested_id: str = "",
    *,
    now: float | None = None,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
) -> TraceReport:
    """The report on ``record`` against ``expected`` agents (``record`` None: unknown or unavailable).

    ``trace_id`` is the canonical id; ``requested_id`` the form it was asked for (default: the same).
    The status is judged against ``expected``, so it never contradicts ``complete``: every expected
    agent seen is ``complete`` (``failed`` if one of them failed); otherwise ``incomplete`` once the
    trace is finalized, ``stalled`` while in flight with its last span ``stall_seconds`` before ``now``,
    else ``in_flight``.
    """
    expected = tuple(dict.fromkeys(expected))
    requested_id = requested_id or trace_id
    if record is None or not record.spans:
        return TraceReport(
            trace_id=trace_id,
            requested_id=requested_id,
            status=status or TraceStatus.UNKNOWN,
            complete=False,
            missing_agents=expected,
            agents_seen=(),
            latency_ms=None,
            expected_agents=expected,
        )
    agents = record.agents
    missing, out_of_order = _missing_and_order(agents, expected)
    waiting_on: str | None = None
    waited: float | None = None
    failed = failed_at(record.spans, expected)
    if not missing:
        judged = TraceStatus.COMPLETE if failed is None else TraceStatus.FAILED
    elif record.state is not TraceState.IN_FLIGHT:
        judged, failed = TraceStatus.INCOMPLETE, None
    else:
        judged, failed, waiting_on = TraceStatus.IN_FLIGHT, None, missing[0]
        if record.last_seen is not None and now is not None:
            waited = max(0.0, now - record.last_seen)
            if now - record.last_seen >= stall_seconds:
                judged = TraceStatus.STALLED
    return TraceReport(
        trace_id=trace_id,
        status=judged,
        waiting_on=waiting_on,
        waited_seconds=waited,
        failed_at=failed,
        complete=not missing,
        missing_agents=missing,
        agents_seen=agents,
        latency_ms=record.latency_ms,
        out_of_order=out_of_order,
        failed_agents=tuple(s.agent for s in record.spans if not s.ok),
        expected_agents=expected,
        span_count=record.span_count,
        spans=record.spans,
        requested_id=requested_id,
    )
