"""The trace monitor: spans into a bounded store, continuity reports, every trace accounted for once."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from ark_obs import catalog
from ark_obs._periodic import Periodic
from ark_obs.context import _canonical, canonical_trace_id
from ark_obs.registry import MAX_LABEL_VALUE_LENGTH
from ark_obs.source import MetricSource
from ark_obs.traces.model import (
    DEFAULT_CLOCK_SKEW_SECONDS,
    DEFAULT_MAX_AGENTS_PER_TRACE,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PIPELINE,
    DEFAULT_RECENT_MAX,
    DEFAULT_STALL_SECONDS,
    DEFAULT_SWEEP_SECONDS,
    DEFAULT_TTL_SECONDS,
    ENV_MAX_AGENTS,
    ENV_MAX_IN_FLIGHT,
    ENV_PIPELINE,
    ENV_STALL,
    ENV_STORE,
    ENV_TTL,
    MAX_TRACE_ID_LENGTH,
    SPAN_METRIC,
    StoreHealth,
    StoreUnavailable,
    TraceRecord,
    TraceReport,
    TraceSettings,
    TraceStatus,
    TraceStore,
    build_report,
    failed_at,
)
from ark_obs.traces.redis_store import RedisStore, StreamDepths, open_store

log = logging.getLogger("ark_obs")

SPAN_BEAT_SECONDS = 0.25  # an agent's spans count as a beat at most this often (a quarter interval)
# Incomplete traces this monitor finalized, kept in memory with their reports for the status page
# (the store forgets a trace one TTL after it expired; the page lists what its counter counts).
EXPIRED_KEPT = 1000


def register(collector: MetricSource, scrape: Any, owner: str) -> None:
    """Add a scrape-time collector; a second sweeping monitor on one collector is a programming error."""
    try:
        collector.add_collector(scrape)
    except ValueError as exc:  # prometheus_client's DuplicateTimeseries
        raise ValueError(
            f"this collector already exports what a {owner} exports ({exc}); close the previous {owner} "
            "before creating another, or pass sweep=False for a recorder"
        ) from exc


def unregister(collector: MetricSource, scrape: Any) -> None:
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
    as ``redis_stream_depth{stream}``, read from ``streams_url`` (a client of its own, with ``stream_timeout``)
    or through the Redis trace store's client (the store's timeout).
    ``store_timeout``: read timeout of a Redis store this monitor opens from a URL (default 0.25 s).
    ``stall_seconds``: an in-flight trace without a span this long is stalled at its first missing
    pipeline agent (default ``$ARK_OBS_STALL_SECONDS``, else 6 s). ``history_seconds``: how long a
    finalized trace stays answerable (at least ``ttl_seconds``, the default), at most ``max_in_flight``.
    """

    def __init__(
        self,
        collector: MetricSource,
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
        stall_seconds: float | None = None,
        history_seconds: float = 0.0,
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
            float(stall_seconds) if stall_seconds is not None else _env_number(ENV_STALL, DEFAULT_STALL_SECONDS),
            float(history_seconds),
        )
        self._clock = collector.clock
        self.clock_skew_seconds = float(clock_skew_seconds)
        self._owns_store = store is None or isinstance(store, str)
        if store is None or isinstance(store, str):
            options = {} if store_timeout is None else {"timeout": store_timeout}
            store = open_store(store or os.environ.get(ENV_STORE) or "memory", **options)
        self.store: TraceStore = store
        self.sweeping = (not store.shared) if sweep is None else sweep
        # unlabelled children, resolved once: completion is on the recording path of a memory store
        self._complete = collector.metric(catalog.ARK_TRACES_COMPLETE_TOTAL.name)._unlabelled()
        self._latency = collector.metric(catalog.ARK_TRACE_LATENCY_MS.name)._unlabelled()
        self._incomplete = collector.metric(catalog.ARK_TRACES_INCOMPLETE_TOTAL.name)
        self._failed = collector.metric(catalog.ARK_TRACES_FAILED_TOTAL.name)
        self._evicted = collector.metric(catalog.ARK_TRACES_EVICTED_TOTAL.name)
        self._late = collector.metric(catalog.ARK_TRACE_LATE_SPANS_TOTAL.name)._unlabelled()
        self._dropped = collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name)
        self._span_latency = collector.metric(catalog.ARK_SPAN_LATENCY_MS.name)
        self._spans = collector.metric(catalog.ARK_SPANS_TOTAL.name)
        # agent -> [latency observe, ok counter inc, error counter inc (bound once), next span beat (monitor clock)];
        # bounded like the series themselves
        self._span_slis: dict[str, list[Any]] = {}
        # called with an agent whose span arrived, at most every SPAN_BEAT_SECONDS per agent (the
        # heartbeat monitor sets it: agents that only send spans count as alive)
        self.agent_seen: Callable[[str], None] | None = None
        self._add = store.add  # bound once: the hot path calls it per span
        self._expired: deque[tuple[float, TraceReport]] = deque(maxlen=EXPIRED_KEPT)
        self._errors_logged: set[str] = set()
        if streams and not self.sweeping:
            raise ValueError("stream depths are exported by a sweeping monitor: pass sweep=True")
        self._streams = self._stream_reader(streams, streams_url, stream_timeout)
        store.bind(self.settings, self)
        self._worker: Periodic | None = None
        self._closed = False
        self._scrape: _TraceCollector | None = None
        if self.sweeping:
            # the first incomplete trace of each missing agent is a step from 0 that rate() sees, not a
            # series born at 1: the pipeline's label sets exist at 0 from the first scrape (while the
            # series cap leaves room for them and one more)
            if len(self.pipeline) < collector.registry.max_series:
                for agent in self.pipeline:
                    self._incomplete.labels(agent)
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
        if url is not None:
            return StreamDepths.from_url(url, tuple(streams), timeout=timeout)
        if isinstance(self.store, RedisStore):
            return StreamDepths(self.store.client, tuple(streams))  # the store client's timeout applies
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
        # the span-metrics SLIs (as OpenTelemetry's span-metrics connector derives them), once per span
        slis = self._span_slis.get(agent) or self._span_sli(agent)
        (slis[1] if ok else slis[2])()
        if end > start or duration_ms is not None:  # a span without timing is counted, not timed
            slis[0]((end - start) * 1000.0, trace_id)
        if now >= slis[3] and self.agent_seen is not None:
            slis[3] = now + SPAN_BEAT_SECONDS
            try:
                self.agent_seen(agent)
            except Exception as exc:  # a heartbeat store bug must not reach the agent
                self._log_once("span beat", exc)

    def _span_sli(self, agent: str) -> list[Any]:
        """The span-metric children of ``agent`` (cached while under the series cap; refused ones count drops)."""
        slis = [
            self._span_latency.labels(agent).observe,
            self._spans.labels(agent, "ok").inc,
            self._spans.labels(agent, "error").inc,
            -math.inf,
        ]
        if len(self._span_slis) < self.collector.registry.max_series:
            self._span_slis[agent] = slis
        return slis

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
        if record is None:
            return build_report(canonical, None, expected, requested_id=requested)
        return self._report(record, expected, requested)

    def _report(self, record: TraceRecord, expected: Sequence[str], requested: str = "") -> TraceReport:
        return build_report(
            record.trace_id,
            record,
            expected,
            requested_id=requested,
            now=self._clock(),
            stall_seconds=self.settings.stall_seconds,
        )

    def recent_incomplete(self, limit: int = 20) -> list[TraceReport]:
        """The most recently expired incomplete traces (newest first), against the pipeline; [] if unavailable."""
        try:
            records = self.store.recent_incomplete(max(0, limit))
        except StoreUnavailable:
            return []
        return [build_report(r.trace_id, r, self.pipeline) for r in records]

    def recent_failed(self, limit: int = 20) -> list[TraceReport]:
        """The most recently completed traces an agent failed in (newest first); [] if unavailable."""
        try:
            records = self.store.recent_failed(max(0, limit))
        except StoreUnavailable:
            return []
        return [build_report(r.trace_id, r, self.pipeline) for r in records]

    def recent_stalled(self, limit: int = 20) -> list[TraceReport]:
        """Stalled traces, the most recently active first, with the agent each waits on; [] if unavailable."""
        try:
            records = self.store.recent_stalled(self._clock(), max(0, limit))
        except StoreUnavailable:
            return []
        return [self._report(r, self.pipeline) for r in records]

    def in_flight(self) -> int | None:
        """Traces not finalized yet, or None when the store cannot be read."""
        try:
            return self.store.in_flight()
        except StoreUnavailable:
            return None

    def forgotten_why(self, trace_id: str) -> str:
        """Why ``trace_id`` is not held: what the store keeps, and how far back its finished traces reach now."""
        keep = max(self.settings.ttl_seconds, self.settings.history_seconds)
        try:
            reach = self.store.history_reach(self._clock())
        except StoreUnavailable:
            reach = None
        held = "none is held now" if reach is None else f"the oldest held finished {reach:.0f} s ago"
        return (
            f"unknown trace {trace_id}: not in flight, and not among the finished traces kept "
            f"(ARK_OBS_TRACE_HISTORY_SECONDS={keep:g} s, at most {self.settings.max_in_flight:,} traces; {held}): "
            "never seen, evicted, or finished longer ago than that"
        )

    def stalled(self) -> dict[str, int] | None:
        """Stalled traces now by the pipeline agent they wait on, or None when the store cannot be read."""
        try:
            return self.store.stalled(self._clock())
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
    def on_complete(self, trace_id: str, latency_ms: float | None, record: TraceRecord | None = None) -> None:
        """Count a complete trace and observe its latency with the trace id as exemplar; a trace an agent
        failed in is also counted in ``ark_traces_failed_total`` under the agent it failed at."""
        self._complete.inc()
        if latency_ms is not None:
            self._latency.observe(latency_ms, trace_id)
        if record is not None:
            agent = failed_at(record.spans, self.pipeline)
            if agent is not None:
                self._failed.labels(agent if agent in self.pipeline else "other").inc()

    def on_expired(self, record: TraceRecord) -> None:
        """Count an incomplete trace under its first missing pipeline agent."""
        seen = set(record.agents)
        missing = next((a for a in self.pipeline if a not in seen), "")
        self._incomplete.labels(missing).inc()
        self._expired.appendleft((self._clock(), build_report(record.trace_id, record, self.pipeline)))

    def expired_since(self, since: float) -> list[tuple[float, TraceReport]]:
        """(when, report) of the incomplete traces this monitor finalized after ``since``, newest first.

        Kept in memory, the newest ``EXPIRED_KEPT``: what this process counted in
        ``ark_traces_incomplete_total``, with reports that outlive the store's copy.
        """
        out = []
        for item in list(self._expired):
            if item[0] < since:
                break
            out.append(item)
        return out

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
    """Scrape-time families of a sweeping monitor: ``ark_traces_in_flight``, ``ark_traces_stalled`` and
    ``redis_stream_depth``.

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
        spec = catalog.ARK_TRACES_STALLED
        yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        if self._stream_gauge is not None:
            spec = catalog.REDIS_STREAM_DEPTH
            yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        """Read the in-flight count and stream depths now."""
        in_flight = self._monitor.in_flight()
        if in_flight is not None:
            spec = catalog.ARK_TRACES_IN_FLIGHT
            yield GaugeMetricFamily(spec.name, spec.help, value=in_flight)
        stalled = self._monitor.stalled()
        if stalled is not None:
            spec = catalog.ARK_TRACES_STALLED
            family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for agent, count in stalled.items():
                family.add_metric([agent], count)
            yield family
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
