"""Trace continuity: which agents saw each signal, which are missing, where traces stall, how long a pass took.

>>> from ark_obs.metrics import MetricsCollector
>>> collector = MetricsCollector(ticker=False)
>>> for agent in ("Kyle", "Joey", "HRM"):
...     collector.record_trace_span("abc-123", agent)
>>> report = collector.validate_trace_continuity("abc-123", ["Kyle", "Joey", "HRM", "Kenny", "Aletheia"])
>>> report["complete"], report["missing_agents"]
(False, ['Kenny', 'Aletheia'])

A ``TraceMonitor`` writes spans into a bounded ``TraceStore``: ``memory`` (embedded, the default)
or ``redis_store`` (shared by agents in many processes and hosts and by several ark-obs replicas).
A trace is *finalized* when every agent of the pipeline has a span (counted complete, its latency
observed with the trace id as exemplar) or when it has been idle for ``ttl_seconds`` (counted
incomplete under the first missing agent). A finalized trace is kept for another ``ttl_seconds`` so
reports still answer and late spans are recognised: a span for a finalized trace is counted in
``ark_trace_late_spans_total`` and otherwise ignored, so a trace is counted exactly once and its
reported latency is the one observed.

With a shared store, *recorders* (agents) only write; *sweeping* monitors (the ark-obs service and its
replicas) do the accounting, each outcome claimed once in Redis, so counters summed over replicas
count every trace once. An embedded memory store is always its own sweeper.

Modules: ``model`` (spans, records, reports, the store protocol), ``monitor`` (``TraceMonitor``),
``memory`` (the embedded store), ``redis_store`` with ``redis_scripts`` and ``redis_cluster`` (the
shared store on Redis or Redis Cluster), ``heartbeats`` (agents alive or silent), ``revisions``
(state history continuity: revision gaps, regressions, duplicates).
"""

from ark_obs.traces.heartbeats import AgentHeartbeat, HeartbeatMonitor, HeartbeatStore
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.model import (
    DEFAULT_PIPELINE,
    SPAN_METRIC,
    NullSink,
    Span,
    StoreHealth,
    StoreUnavailable,
    TraceRecord,
    TraceReport,
    TraceSettings,
    TraceSink,
    TraceState,
    TraceStatus,
    TraceStore,
    build_report,
)
from ark_obs.traces.monitor import TraceMonitor, default_pipeline, register, unregister
from ark_obs.traces.redis_store import RedisStore, StreamDepths, open_store
from ark_obs.traces.revisions import AnomalyKind, AnomalyList, RevisionAnomaly, RevisionChecker, backend_for

__all__ = [
    "DEFAULT_PIPELINE",
    "SPAN_METRIC",
    "AgentHeartbeat",
    "AnomalyKind",
    "AnomalyList",
    "HeartbeatMonitor",
    "HeartbeatStore",
    "MemoryStore",
    "NullSink",
    "RedisStore",
    "RevisionAnomaly",
    "RevisionChecker",
    "Span",
    "StoreHealth",
    "StoreUnavailable",
    "StreamDepths",
    "TraceMonitor",
    "TraceRecord",
    "TraceReport",
    "TraceSettings",
    "TraceSink",
    "TraceState",
    "TraceStatus",
    "TraceStore",
    "backend_for",
    "build_report",
    "default_pipeline",
    "open_store",
    "register",
    "unregister",
]
