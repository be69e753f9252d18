"""Trace continuity: which agents saw each signal, which are missing, where traces stall, how long a pass took.

>>> from ark_obs.metrics import MetricsCollector
>>> collector = MetricsCollector(ticker=False)
>>> for agent in ("Kyle", "Joey", "HRM"):
...     collector.record_trace_span("abc-123", agent)
>>> report = collector.validate_trace_continuity("abc-123", ["Kyle", "Joey", "HRM", "Kenny", "Aletheia"])
>>> report["complete"], report["missing_agents"]
(False, ['Kenny', 'Aletheia'])

A ``TraceMonitor`` writes spans into a bounded ``TraceStore``: ``store_memory`` (embedded, the default)
or ``store_redis`` (shared by agents in many processes and hosts and by several ark-obs replicas).
A trace is *finalized* when every agent of the pipeline has a span (counted complete, its latency
observed with the trace id as exemplar) or when it has been idle for ``ttl_seconds`` (counted
incomplete under the first missing agent). A finalized trace is kept for another ``ttl_seconds`` so
reports still answer and late spans are recognised: a span for a finalized trace is counted in
``ark_trace_late_spans_total`` and otherwise ignored, so a trace is counted exactly once and its
reported latency is the one observed.

With a shared store, *recorders* (agents) only write; *sweeping* monitors (the ark-obs service and its
replicas) do the accounting, each outcome claimed once in Redis, so counters summed over replicas
count every trace once. An embedded memory store is always its own sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from ark_obs import catalog
from ark_obs._periodic import Periodic
from ark_obs._seeddict import SeedDict
from ark_obs.context import _canonical, canonical_trace_id
from ark_obs.registry import MAX_LABEL_VALUE_LENGTH

if TYPE_CHECKING:
    from ark_obs.metrics import MetricsCollector
    from ark_obs.store_redis import StreamDepths

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
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    UNAVAILABLE = "unavailable"  # the store could not be read


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
    """A trace as a store holds it: one span per agent, in start order (ties: arrival order)."""

    trace_id: str
    spans: tuple[Span, ...]
    state: TraceState
    span_count: int

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

    def _seed_items(self) -> dict[str, Any]:
        items = SeedDict._seed_items(self)
        items["requested_id"] = self.requested_id or self.trace_id
        items["known"] = self.known
        return items

    @property
    def known(self) -> bool:
        """Whether the store holds this trace."""
        return self.status in (TraceStatus.IN_FLIGHT, TraceStatus.COMPLETE, TraceStatus.INCOMPLETE)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Whether a store answers, for readiness."""

    backend: str
    healthy: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """What a store needs to know to finalize and bound traces."""

    pipeline: tuple[str, ...] = DEFAULT_PIPELINE
    ttl_seconds: float = DEFAULT_TTL_SECONDS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    recent_max: int = DEFAULT_RECENT_MAX
    max_agents: int = DEFAULT_MAX_AGENTS_PER_TRACE

    def __post_init__(self) -> None:
        if not self.pipeline:
            raise ValueError("the pipeline needs at least one agent")
        if len(set(self.pipeline)) != len(self.pipeline):
            raise ValueError(f"the pipeline names an agent twice: {self.pipeline}")
        if not self.ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {self.ttl_seconds}")
        if self.max_in_flight < 1 or self.recent_max < 1:
            raise ValueError("max_in_flight and recent_max must be at least 1")
        if self.max_agents < len(self.pipeline):
            raise ValueError(f"max_agents ({self.max_agents}) must hold the pipeline's {len(self.pipeline)} agents")


class TraceSink(Protocol):
    """What a store reports outcomes to (the sweeping ``TraceMonitor``)."""

    def on_complete(self, trace_id: str, latency_ms: float | None) -> None:
        """A trace was finalized complete (latency None if its data expired before accounting)."""

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

    def on_complete(self, trace_id: str, latency_ms: float | None) -> None:
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

    def in_flight(self) -> int:
        """Traces not finalized yet."""

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


def build_report(
    trace_id: str,
    record: TraceRecord | None,
    expected: Sequence[str],
    status: TraceStatus | None = None,
    requested_id: str = "",
) -> TraceReport:
    """The report on ``record`` against ``expected`` agents (``record`` None: unknown or unavailable).

    ``trace_id`` is the canonical id; ``requested_id`` the form it was asked for (default: the same).
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
    return TraceReport(
        trace_id=trace_id,
        status=TraceStatus(record.state.value),
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


def register(collector: MetricsCollector, scrape: Any, owner: str) -> None:
    """Add a scrape-time collector; a second sweeping monitor on one collector is a programming error."""
    try:
        collector.add_collector(scrape)
    except ValueError as exc:  # prometheus_client's DuplicateTimeseries
        raise ValueError(
            f"this collector already exports what a {owner} exports ({exc}); close the previous {owner} "
            "before creating another, or pass sweep=False for a recorder"
        ) from exc


def unregister(collector: MetricsCollector, scrape: Any) -> None:
    """Remove a scrape-time collector added by ``register`` (a closed monitor exports nothing)."""
    remove = getattr(collector, "remove_collector", None)
    if remove is not None:
        remove(scrape)
        return
    with contextlib.suppress(KeyError):
        collector.registry.prometheus.unregister(scrape)


def default_pipeline() -> tuple[str, ...]:
    """The pipeline from ``ARK_OBS_PIPELINE`` (comma-separated), else Kyle, Joey, HRM, Kenny, Aletheia."""
    raw = os.environ.get(ENV_PIPELINE, "")
    agents = tuple(a.strip() for a in raw.split(",") if a.strip())
    return agents or DEFAULT_PIPELINE


def _env_number(name: str, default: float) -> float:
    """A positive number from the environment; a bad value is logged and the default used.

    An agent must not crash on a typo here; ``ark-obs check-config`` reports it.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        log.error("ignoring %s=%r: not a positive number; using %g", name, raw, default)
        return default
    return value


class TraceMonitor:
    """Records spans into a bounded store, validates continuity, and accounts for every trace once.

    ``store``: a ``TraceStore``, a URL (``memory``, ``redis://host:port/db``), or None for
    ``$ARK_OBS_TRACE_STORE`` (default memory). ``pipeline``, ``ttl_seconds`` and ``max_in_flight``
    default to ``$ARK_OBS_PIPELINE``, ``$ARK_OBS_TRACE_TTL_SECONDS`` and ``$ARK_OBS_MAX_IN_FLIGHT_TRACES``,
    else Kyle..Aletheia, 300 s and 100,000. ``sweep``: whether this monitor finalizes expired traces
    and counts outcomes; None means yes for a store of its own (memory), no for a shared one (Redis),
    where the ark-obs service sweeps. ``streams``: Redis streams whose XLEN is exported at scrape time
    as ``redis_stream_depth{stream}``, read from ``streams_url`` or the Redis trace store.
    ``store_timeout``: read timeout of a Redis store this monitor opens from a URL (default 0.25 s).
    """

    def __init__(
        self,
        collector: MetricsCollector,
        store: TraceStore | str | None = None,
        pipeline: Sequence[str] | None = None,
        ttl_seconds: float | None = None,
        max_in_flight: int | None = None,
        *,
        recent_max: int = DEFAULT_RECENT_MAX,
        sweep: bool | None = None,
        background: bool = True,
        sweep_interval: float = DEFAULT_SWEEP_SECONDS,
        streams: Sequence[str] = (),
        streams_url: str | None = None,
        stream_timeout: float = 0.25,
        store_timeout: float | None = None,
        clock_skew_seconds: float = DEFAULT_CLOCK_SKEW_SECONDS,
        max_agents_per_trace: int | None = None,
    ) -> None:
        self.collector = collector
        self.settings = TraceSettings(
            tuple(pipeline) if pipeline is not None else default_pipeline(),
            float(ttl_seconds) if ttl_seconds is not None else _env_number(ENV_TTL, DEFAULT_TTL_SECONDS),
            int(max_in_flight)
            if max_in_flight is not None
            else int(_env_number(ENV_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT)),
            int(recent_max),
            int(max_agents_per_trace)
            if max_agents_per_trace is not None
            else int(_env_number(ENV_MAX_AGENTS, DEFAULT_MAX_AGENTS_PER_TRACE)),
        )
        self._clock = collector.clock
        self.clock_skew_seconds = float(clock_skew_seconds)
        self._owns_store = store is None or isinstance(store, str)
        if store is None or isinstance(store, str):
            from ark_obs.store_redis import open_store

            options = {} if store_timeout is None else {"timeout": store_timeout}
            store = open_store(store or os.environ.get(ENV_STORE) or "memory", **options)
        self.store: TraceStore = store
        self.sweeping = (not store.shared) if sweep is None else sweep
        # unlabelled children, resolved once: completion is on the recording path of a memory store
        self._complete = collector.metric(catalog.ARK_TRACES_COMPLETE_TOTAL.name)._unlabelled()
        self._latency = collector.metric(catalog.ARK_TRACE_LATENCY_MS.name)._unlabelled()
        self._incomplete = collector.metric(catalog.ARK_TRACES_INCOMPLETE_TOTAL.name)
        self._evicted = collector.metric(catalog.ARK_TRACES_EVICTED_TOTAL.name)
        self._late = collector.metric(catalog.ARK_TRACE_LATE_SPANS_TOTAL.name)._unlabelled()
        self._dropped = collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name)
        self._add = store.add  # bound once: the hot path calls it per span
        self._errors_logged: set[str] = set()
        if streams and not self.sweeping:
            raise ValueError("stream depths are exported by a sweeping monitor: pass sweep=True")
        self._streams = self._stream_reader(streams, streams_url, stream_timeout)
        store.bind(self.settings, self)
        self._worker: Periodic | None = None
        self._closed = False
        self._scrape: _TraceCollector | None = None
        if self.sweeping:
            self._scrape = _TraceCollector(self)
            register(collector, self._scrape, "TraceMonitor")
            if background:
                self._worker = Periodic(self, "sweep", sweep_interval, "ark-obs-traces")

    @property
    def pipeline(self) -> tuple[str, ...]:
        """The agents every trace must pass, in order."""
        return self.settings.pipeline

    def _stream_reader(self, streams: Sequence[str], url: str | None, timeout: float) -> StreamDepths | None:
        if not streams:
            return None
        from ark_obs.store_redis import RedisStore, StreamDepths

        if url is not None:
            return StreamDepths.from_url(url, tuple(streams), timeout=timeout)
        if isinstance(self.store, RedisStore):
            return StreamDepths(self.store.client, tuple(streams), timeout=timeout)
        raise ValueError("streams to watch need streams_url or a Redis trace store")

    # recording: the hot path -------------------------------------------------------------------------
    def record_span(
        self,
        trace_id: str,
        agent: str,
        *,
        at: float | None = None,
        duration_ms: float | None = None,
        ok: bool = True,
    ) -> None:
        """Record that ``agent`` processed ``trace_id``; never raises on bad data or a store failure.

        ``at`` is when the span started (unix seconds); by default the span ends now and started
        ``duration_ms`` earlier (0 when not given). Non-string ids and negative durations are
        programming errors and raise.
        """
        now = self._clock()
        if at is None and duration_ms is None:
            start = end = now
            bad_time = False
        else:
            if at is None:
                start, end = now - duration_ms / 1000.0, now  # type: ignore[operator]
            else:
                start = at
                end = at if duration_ms is None else at + duration_ms / 1000.0
            # x - x is 0.0 for every finite float, NaN for NaN and infinities; the chained comparison
            # also refuses times outside [now - ttl, now + clock skew]
            bad_time = not (
                start <= end
                and start - start == 0.0
                and end - end == 0.0
                and now - self.settings.ttl_seconds <= start
                and end <= now + self.clock_skew_seconds
            )
        if (
            bad_time
            or type(trace_id) is not str
            or type(agent) is not str
            or not 0 < len(trace_id) <= MAX_TRACE_ID_LENGTH
            or not 0 < len(agent) <= MAX_LABEL_VALUE_LENGTH
        ):
            checked = self._check(trace_id, agent, start, end, duration_ms, now)
            if checked is None:
                return
            trace_id, agent = checked
        if len(trace_id) == 36:  # the UUID form of an id is stored under its W3C form: one trace
            trace_id = _canonical.get(trace_id) or canonical_trace_id(trace_id)
        try:
            self._add(trace_id, agent, start, end, ok, now)
        except Exception as exc:  # a store bug must not reach the agent
            self._log_once("add", exc)
            self.on_dropped(1, repr(exc))

    def _check(
        self, trace_id: object, agent: object, start: float, end: float, duration_ms: float | None, now: float
    ) -> tuple[str, str] | None:
        """The slow path of ``record_span``: coerce, raise on programming errors, drop bad data."""
        if isinstance(trace_id, uuid.UUID):
            trace_id = str(trace_id)
        if not isinstance(trace_id, str) or not isinstance(agent, str):
            raise TypeError(
                f"trace_id and agent must be strings, got {type(trace_id).__name__} and {type(agent).__name__}"
            )
        if duration_ms is not None and duration_ms < 0:
            raise ValueError(f"duration_ms must not be negative, got {duration_ms}")
        if not trace_id or not agent:
            raise ValueError("trace_id and agent must not be empty")
        registry = self.collector.registry
        if len(trace_id) > MAX_TRACE_ID_LENGTH or len(agent) > MAX_LABEL_VALUE_LENGTH:
            registry.drop(SPAN_METRIC, "label_too_long", f"trace id or agent longer than {MAX_TRACE_ID_LENGTH}")
            return None
        if not (math.isfinite(start) and math.isfinite(end)):
            registry.drop(SPAN_METRIC, "non_finite", "span time or duration is not finite")
            return None
        why = self.implausible(start, end, now)
        if why:
            registry.drop(SPAN_METRIC, "implausible_time", why)
            return None
        return trace_id, agent

    def implausible(self, start: float, end: float, now: float) -> str:
        """Why a span from ``start`` to ``end`` cannot be right at ``now`` ('' when it can)."""
        if start < now - self.settings.ttl_seconds:
            return (
                f"the span starts {now - start:.0f} s ago, before the trace TTL "
                f"({self.settings.ttl_seconds:g} s): a clock or unit error"
            )
        if end > now + self.clock_skew_seconds:
            return (
                f"the span ends {end - now:.0f} s in the future, beyond the clock-skew allowance "
                f"({self.clock_skew_seconds:g} s)"
            )
        return ""

    # queries ---------------------------------------------------------------------------------------------
    def validate(self, trace_id: str, expected_agents: Sequence[str] | None = None) -> TraceReport:
        """Which agents saw ``trace_id``, which of ``expected_agents`` (default: the pipeline) are missing.

        Either form of a UUID id finds the trace; the report's ``trace_id`` is the canonical one.
        """
        expected = self.pipeline if expected_agents is None else tuple(expected_agents)
        requested = str(trace_id)
        canonical = canonical_trace_id(requested)
        try:
            self.store.flush()  # this process' own spans count, even when the store batches writes
            record = self.store.get(canonical)
        except StoreUnavailable:
            return build_report(canonical, None, expected, TraceStatus.UNAVAILABLE, requested)
        return build_report(canonical, record, expected, requested_id=requested)

    def recent_incomplete(self, limit: int = 20) -> list[TraceReport]:
        """The most recently expired incomplete traces (newest first), against the pipeline; [] if unavailable."""
        try:
            records = self.store.recent_incomplete(max(0, limit))
        except StoreUnavailable:
            return []
        return [build_report(r.trace_id, r, self.pipeline) for r in records]

    def in_flight(self) -> int | None:
        """Traces not finalized yet, or None when the store cannot be read."""
        try:
            return self.store.in_flight()
        except StoreUnavailable:
            return None

    def check(self) -> StoreHealth:
        """The store's health, for readiness."""
        return self.store.health()

    def healthy(self) -> bool:
        """Whether the store answers."""
        return self.store.health().healthy

    # background work -----------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> None:
        """Finalize traces idle for ``ttl_seconds`` and count outcomes (the background thread calls this)."""
        if not self.sweeping:
            return
        # on failure health already says so, and the next sweep catches up
        with contextlib.suppress(StoreUnavailable):
            self.store.flush()  # spans recorded before this sweep take part in it
            self.store.sweep(self._clock() if now is None else now)

    def flush(self) -> None:
        """Push buffered spans to the store and, when sweeping, count the outcomes they produced."""
        try:
            self.store.flush()
            if self.sweeping:
                self.store.sweep(None)
        except StoreUnavailable:
            pass

    def close(self) -> None:
        """Stop the background sweep and flush; closes the store if this monitor opened it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.flush()
        if self._scrape is not None:
            unregister(self.collector, self._scrape)
            self._scrape.release()
            self._scrape = None
        if self._owns_store:
            self.store.close()
        if self._streams is not None:
            self._streams.close()

    # the store's outcome sink --------------------------------------------------------------------------
    def on_complete(self, trace_id: str, latency_ms: float | None) -> None:
        """Count a complete trace and observe its latency with the trace id as exemplar."""
        self._complete.inc()
        if latency_ms is not None:
            self._latency.observe(latency_ms, trace_id)

    def on_expired(self, record: TraceRecord) -> None:
        """Count an incomplete trace under its first missing pipeline agent."""
        seen = set(record.agents)
        missing = next((a for a in self.pipeline if a not in seen), "")
        self._incomplete.labels(missing).inc()

    def on_late(self, count: int) -> None:
        """Count spans that arrived after their trace was finalized."""
        self._late.inc(count)

    def on_evicted(self, reason: str, count: int) -> None:
        """Count in-flight traces dropped before finalizing."""
        self._evicted.labels(reason).inc(count)

    def on_dropped(self, count: int, detail: str) -> None:
        """Count spans the store could not take (logged once)."""
        if count <= 0:
            return
        self.collector.registry.drop(SPAN_METRIC, "store_unavailable", detail)
        if count > 1:
            self._dropped.labels(SPAN_METRIC, "store_unavailable").inc(count - 1)

    def on_refused(self, count: int, detail: str) -> None:
        """Count spans refused because their trace holds ``max_agents`` agents (logged once)."""
        if count <= 0:
            return
        self.collector.registry.drop(SPAN_METRIC, "trace_full", detail)
        if count > 1:
            self._dropped.labels(SPAN_METRIC, "trace_full").inc(count - 1)

    def _log_once(self, where: str, exc: BaseException) -> None:
        if where not in self._errors_logged:
            self._errors_logged.add(where)
            log.error("ark-obs trace store %s failed: %r (logged once)", where, exc)


class _TraceCollector:
    """Scrape-time families of a sweeping monitor: ``ark_traces_in_flight`` and ``redis_stream_depth``.

    Stream depths are read with a bounded timeout; on failure the family is left out of that scrape.
    When streams are watched this collector also exports the values agents set on the
    ``redis_stream_depth`` gauge (one family, no duplicate), XLEN winning for watched streams.
    """

    def __init__(self, monitor: TraceMonitor) -> None:
        self._monitor = monitor
        self._stream_gauge: Any = None
        if monitor._streams is not None:
            gauge = monitor.collector.metric(catalog.REDIS_STREAM_DEPTH.name)
            # KeyError: already taken over (a second monitor on the same collector)
            with contextlib.suppress(KeyError):
                monitor.collector.registry.prometheus.unregister(gauge.raw)
            self._stream_gauge = gauge

    def release(self) -> None:
        """Give the ``redis_stream_depth`` gauge back to the registry (the monitor is closing)."""
        if self._stream_gauge is not None:
            with contextlib.suppress(ValueError):
                self._monitor.collector.registry.prometheus.register(self._stream_gauge.raw)
            self._stream_gauge = None

    def describe(self) -> Iterator[Metric]:
        """The families this collector yields (names only)."""
        yield GaugeMetricFamily(catalog.ARK_TRACES_IN_FLIGHT.name, catalog.ARK_TRACES_IN_FLIGHT.help)
        if self._stream_gauge is not None:
            spec = catalog.REDIS_STREAM_DEPTH
            yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        """Read the in-flight count and stream depths now."""
        in_flight = self._monitor.in_flight()
        if in_flight is not None:
            spec = catalog.ARK_TRACES_IN_FLIGHT
            yield GaugeMetricFamily(spec.name, spec.help, value=in_flight)
        streams = self._monitor._streams
        if self._stream_gauge is None or streams is None:
            return
        spec = catalog.REDIS_STREAM_DEPTH
        depths = streams.read()
        family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for raw_family in self._stream_gauge.raw.collect():
            for sample in raw_family.samples:
                stream = sample.labels.get("stream", "")
                if depths is None or stream not in depths:
                    family.add_metric([stream], sample.value)
        for stream, depth in (depths or {}).items():
            family.add_metric([stream], depth)
        yield family
