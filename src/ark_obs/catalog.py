"""The ARK metric catalogue: every metric ARK records, declared once as data.

Docs, dashboards and tests read this catalogue; nothing else retypes a metric name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Kind(StrEnum):
    """Prometheus metric type of a catalogue entry."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# Latency buckets in milliseconds, shared by every latency histogram. The SLO thresholds (120 ms for
# HRM, 400 ms for a decision) are exact boundaries so compliance is counted, not interpolated; the
# ~10-25% steps between 75 ms and 600 ms keep interpolated p95/p99 within 5% of the exact value for
# ARK's latency profile (tests/test_window.py checks it on a log-normal sample, median 150 ms).
LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = (
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0,
    175.0, 190.0, 200.0, 225.0, 250.0, 275.0, 300.0, 325.0, 350.0, 375.0, 400.0, 450.0, 500.0,
    550.0, 600.0, 700.0, 800.0, 1000.0, 1500.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name, type, help, unit, labels and multiprocess behaviour.

    ``optional_labels`` may be left out when recording; they are then exported as the empty string,
    which PromQL treats exactly like an absent label.
    """

    name: str
    kind: Kind
    help: str
    unit: str = ""
    labels: tuple[str, ...] = ()
    optional_labels: frozenset[str] = frozenset()
    buckets: tuple[float, ...] = ()
    multiprocess_mode: str = "sum"
    aliases: tuple[str, ...] = ()
    # produced at scrape time by a custom collector (SLOs, trace and heartbeat state), not recorded
    collected: bool = False

    def __post_init__(self) -> None:
        unknown = self.optional_labels - set(self.labels)
        if unknown:
            raise ValueError(f"{self.name}: optional labels {sorted(unknown)} are not among its labels")
        if self.kind is Kind.HISTOGRAM and not self.buckets:
            raise ValueError(f"{self.name}: a histogram needs buckets")
        if self.kind is not Kind.HISTOGRAM and self.buckets:
            raise ValueError(f"{self.name}: only histograms have buckets")
        if self.kind is Kind.COUNTER and not self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counter names end in _total (aliases may omit it)")

    @property
    def required_labels(self) -> frozenset[str]:
        """Labels every recording must name."""
        return frozenset(self.labels) - self.optional_labels


def counter(name: str, help: str, labels: tuple[str, ...] = (), **kw: object) -> MetricSpec:
    """Declare a counter (sum across processes)."""
    return MetricSpec(name, Kind.COUNTER, help, labels=labels, **kw)  # type: ignore[arg-type]


def gauge(name: str, help: str, labels: tuple[str, ...] = (), mode: str = "mostrecent", **kw: object) -> MetricSpec:
    """Declare a gauge; ``mode`` says how processes combine (the newest write wins by default)."""
    return MetricSpec(name, Kind.GAUGE, help, labels=labels, multiprocess_mode=mode, **kw)  # type: ignore[arg-type]


def latency_ms(name: str, help: str, labels: tuple[str, ...] = (), **kw: object) -> MetricSpec:
    """Declare a latency histogram in milliseconds with the shared bucket layout."""
    return MetricSpec(
        name,
        Kind.HISTOGRAM,
        help,
        unit="ms",
        labels=labels,
        buckets=LATENCY_BUCKETS_MS,
        **kw,  # type: ignore[arg-type]
    )


# --- The seed's metrics ----------------------------------------------------------------------------
ARK_PASS_LATENCY_MS = latency_ms(
    "ark_pass_latency_ms", "End-to-end decision latency: Kyle ingestion to Aletheia completion (ms)."
)
HRM_EVAL_LATENCY_MS = latency_ms("hrm_eval_latency_ms", "HRM ethics evaluation including Graveyard checks (ms).")
STATE_WRITE_LATENCY_MS = latency_ms(
    "state_write_latency_ms", "Mutable Core state operation latency (ms).", labels=("operation", "agent")
)
KYLE_INGEST_RATE = gauge("kyle_ingest_rate", "Signals ingested by Kyle per second (target 1.0 Hz).")
JOEY_PATTERN_CONFIDENCE_AVG = gauge(
    "joey_pattern_confidence_avg", "Average confidence of Joey's patterns (target > 0.7)."
)
KENNY_EXEC_SUCCESS_RATE = gauge("kenny_exec_success_rate", "Kenny execution success percentage (target > 95).")
REDIS_STREAM_DEPTH = gauge("redis_stream_depth", "Length of a Redis stream (alert above 5000).", labels=("stream",))
ARK_ETHICS_DRIFT = gauge(
    "ark_ethics_drift", "Number of immutable Graveyard rules that changed (SLO: exactly 0).", mode="max"
)
HRM_DENIALS_TOTAL = counter(
    "hrm_denials_total",
    "Actions denied by HRM, by Graveyard rule and acting agent.",
    labels=("rule_id", "agent"),
    optional_labels=frozenset({"agent"}),
    aliases=("hrm_denials",),
)
WATCHDOG_QUARANTINES_TOTAL = counter(
    "watchdog_quarantines_total", "Agents quarantined by the Watchdog.", labels=("agent", "reason")
)
GRAVEYARD_VALIDATIONS_TOTAL = counter("graveyard_validations_total", "Ethics checks run against the Graveyard.")
AGENT_HEARTBEAT_FAILURES_TOTAL = counter(
    "agent_heartbeat_failures_total",
    "Heartbeat outages detected by the monitor, once per outage.",
    labels=("agent",),
    aliases=("agent_heartbeat_failures",),
)

# --- ark-obs' own metrics ----------------------------------------------------------------------------
ARK_OBS_DROPPED_TOTAL = counter(
    "ark_obs_dropped_total",
    "Recordings ark-obs dropped instead of raising into an agent, by metric and reason.",
    labels=("metric", "reason"),
)
ARK_AGENT_ERRORS_TOTAL = counter(
    "ark_agent_errors_total",
    "Exceptions raised by instrumented agent methods.",
    labels=("agent", "method", "exception"),
)
ARK_TRACEPARENT_INVALID_TOTAL = counter(
    "ark_traceparent_invalid_total", "Malformed incoming trace ids or traceparent headers that were replaced."
)
ARK_OBS_REQUESTS_REFUSED_TOTAL = counter(
    "ark_obs_requests_refused_total",
    "HTTP requests ark-obs refused, by reason: unauthorized (401), forbidden (403: a write for an agent "
    "the token is not bound to), too_large (413: body or batch over its "
    "limit), invalid (422), busy (429: canary analyses at their cap, or OTLP exports waiting to be decoded), "
    "unavailable (503: the store).",
    labels=("reason",),
)
ARK_OBS_CONNECTIONS_CLOSED_TOTAL = counter(
    "ark_obs_connections_closed_total",
    "Connections closed because no complete request came in time (idle, slow_headers, slow_body) or "
    "a body came in tiny chunks (tiny_chunks), and requests refused with 503 past the connection cap "
    "(over_capacity), by reason.",
    labels=("reason",),
)

ARK_AGENT_CANCELLATIONS_TOTAL = counter(
    "ark_agent_cancellations_total",
    "Instrumented agent calls cancelled (asyncio.CancelledError): not errors, still propagated.",
    labels=("agent", "method"),
)
ARK_OPERATION_LATENCY_MS = latency_ms(
    "ark_operation_latency_ms",
    "Latency of operations timed with MetricsContext, by outcome (success or error) (ms).",
    labels=("operation", "agent", "outcome"),
)

# --- traces and heartbeats ---------------------------------------------------------------------------
ARK_TRACES_COMPLETE_TOTAL = counter("ark_traces_complete_total", "Traces that passed every expected agent.")
ARK_TRACES_INCOMPLETE_TOTAL = counter(
    "ark_traces_incomplete_total",
    "Traces that expired incomplete, by the first missing agent (where traces get stuck).",
    labels=("missing_agent",),
)
ARK_TRACE_LATENCY_MS = latency_ms(
    "ark_trace_latency_ms", "End-to-end latency of completed traces, first span start to last span end (ms)."
)
ARK_TRACES_EVICTED_TOTAL = counter(
    "ark_traces_evicted_total", "In-flight traces evicted before completing, by reason.", labels=("reason",)
)
ARK_TRACE_LATE_SPANS_TOTAL = counter("ark_trace_late_spans_total", "Spans that arrived for a trace already finalized.")
ARK_TRACES_IN_FLIGHT = gauge(
    "ark_traces_in_flight", "Traces in the store that are not finalized yet (at scrape time).", collected=True
)
ARK_TRACES_STALLED = gauge(
    "ark_traces_stalled",
    "In-flight traces without a span for ARK_OBS_STALL_SECONDS, by the first pipeline agent they miss "
    "(at scrape time; every replica reads the shared store: aggregate with max by (waiting_on)).",
    labels=("waiting_on",),
    collected=True,
)
ARK_SPAN_LATENCY_MS = latency_ms(
    "ark_span_latency_ms",
    "Duration of each recorded span that carries one (HTTP, OTLP, in-process), by agent: the span-metrics SLI (ms).",
    labels=("agent",),
)
ARK_SPANS_TOTAL = counter(
    "ark_spans_total",
    "Spans recorded (HTTP, OTLP, in-process), by agent and outcome (ok, error).",
    labels=("agent", "outcome"),
)
ARK_TRACES_FAILED_TOTAL = counter(
    "ark_traces_failed_total",
    "Complete traces in which an agent failed (span ok false, OTLP status ERROR), by the agent they failed at "
    "(the first failed pipeline agent; other agents as 'other'); also counted in ark_traces_complete_total.",
    labels=("agent",),
)
ARK_AGENT_LAST_HEARTBEAT_TIMESTAMP_SECONDS = gauge(
    "ark_agent_last_heartbeat_timestamp_seconds",
    "Unix time of the last heartbeat the monitor received from an agent.",
    labels=("agent",),
    collected=True,
)
ARK_AGENT_UP = gauge(
    "ark_agent_up",
    "1 while an agent heartbeats, 0 once it is silent for 1.5 intervals (read at scrape time).",
    labels=("agent",),
    collected=True,
)
ARK_AGENT_IN_PIPELINE = gauge(
    "ark_agent_in_pipeline",
    "1 for each configured pipeline agent: their silence pages, other agents' is summarized.",
    labels=("agent",),
    collected=True,
)
ARK_AGENT_HEARTBEAT_INTERVAL_SECONDS = gauge(
    "ark_agent_heartbeat_interval_seconds",
    "The heartbeat interval agents are expected to keep.",
    collected=True,
)

# --- state history ------------------------------------------------------------------------------------
ARK_STATE_REVISION_ANOMALIES_TOTAL = counter(
    "ark_state_revision_anomalies_total",
    "State revisions that did not follow their key's last one: gap, regression or duplicate.",
    labels=("agent", "kind"),
)

# --- SLOs, evaluated at scrape time ------------------------------------------------------------------
ARK_SLO_VALUE = gauge("ark_slo_value", "Current value of an SLO's indicator.", labels=("slo",), collected=True)
ARK_SLO_OBJECTIVE = gauge("ark_slo_objective", "An SLO's objective.", labels=("slo",), collected=True)
ARK_SLO_MET = gauge(
    "ark_slo_met",
    "1 when an SLO is met, 0 when violated; absent when there is no data.",
    labels=("slo",),
    collected=True,
)
ARK_SLO_ERROR_BUDGET_REMAINING_RATIO = gauge(
    "ark_slo_error_budget_remaining_ratio",
    "Share of the error budget left over the SLO window.",
    labels=("slo",),
    collected=True,
)
ARK_SLO_BURN_RATE = gauge(
    "ark_slo_burn_rate",
    "Error-budget burn rate over a short window.",
    labels=("slo", "window"),
    collected=True,
)
ARK_SLO_EVENTS = gauge(
    "ark_slo_events",
    "Good and total events of an SLO over its window.",
    labels=("slo", "kind"),
    collected=True,
)
ARK_AVAILABILITY_RATIO = gauge(
    "ark_availability_ratio",
    "Availability over a window: (total - downtime) / total.",
    labels=("window",),
    collected=True,
)

# --- restart-proof availability input, read at scrape time (see ark_obs.slo.collector.ProcessQuarantines)
ARK_OBS_START_TIME_SECONDS = gauge(
    "ark_obs_start_time_seconds",
    "Unix time a recording process started; boot names the process in the ark_*_process_total series.",
    labels=("boot",),
    collected=True,
)
ARK_WATCHDOG_QUARANTINES_PROCESS_TOTAL = counter(
    "ark_watchdog_quarantines_process_total",
    "Watchdog quarantines of every agent and reason since the process started (0 from its "
    "first scrape); a restart starts a new boot series instead of resetting this one.",
    labels=("boot",),
    collected=True,
)
ARK_HRM_DENIALS_PROCESS_TOTAL = counter(
    "ark_hrm_denials_process_total",
    "HRM denials of every rule and agent since the process started (0 from its first scrape, so rate() "
    "sees the first denial of a new rule); one boot series per process, as for quarantines.",
    labels=("boot",),
    collected=True,
)

SEED_METRICS: Final[tuple[MetricSpec, ...]] = (
    ARK_PASS_LATENCY_MS,
    HRM_EVAL_LATENCY_MS,
    STATE_WRITE_LATENCY_MS,
    KYLE_INGEST_RATE,
    JOEY_PATTERN_CONFIDENCE_AVG,
    KENNY_EXEC_SUCCESS_RATE,
    REDIS_STREAM_DEPTH,
    HRM_DENIALS_TOTAL,
    WATCHDOG_QUARANTINES_TOTAL,
    GRAVEYARD_VALIDATIONS_TOTAL,
    AGENT_HEARTBEAT_FAILURES_TOTAL,
)

CATALOG: Final[tuple[MetricSpec, ...]] = (
    *SEED_METRICS,
    ARK_ETHICS_DRIFT,
    ARK_OBS_DROPPED_TOTAL,
    ARK_AGENT_ERRORS_TOTAL,
    ARK_TRACEPARENT_INVALID_TOTAL,
    ARK_AGENT_CANCELLATIONS_TOTAL,
    ARK_OPERATION_LATENCY_MS,
    ARK_OBS_CONNECTIONS_CLOSED_TOTAL,
    ARK_OBS_REQUESTS_REFUSED_TOTAL,
    ARK_TRACES_COMPLETE_TOTAL,
    ARK_TRACES_INCOMPLETE_TOTAL,
    ARK_TRACE_LATENCY_MS,
    ARK_TRACES_EVICTED_TOTAL,
    ARK_TRACE_LATE_SPANS_TOTAL,
    ARK_TRACES_IN_FLIGHT,
    ARK_TRACES_STALLED,
    ARK_TRACES_FAILED_TOTAL,
    ARK_SPAN_LATENCY_MS,
    ARK_SPANS_TOTAL,
    ARK_AGENT_LAST_HEARTBEAT_TIMESTAMP_SECONDS,
    ARK_AGENT_UP,
    ARK_AGENT_HEARTBEAT_INTERVAL_SECONDS,
    ARK_STATE_REVISION_ANOMALIES_TOTAL,
    ARK_AGENT_IN_PIPELINE,
    ARK_SLO_VALUE,
    ARK_SLO_OBJECTIVE,
    ARK_SLO_MET,
    ARK_SLO_ERROR_BUDGET_REMAINING_RATIO,
    ARK_SLO_BURN_RATE,
    ARK_SLO_EVENTS,
    ARK_AVAILABILITY_RATIO,
    ARK_OBS_START_TIME_SECONDS,
    ARK_WATCHDOG_QUARANTINES_PROCESS_TOTAL,
    ARK_HRM_DENIALS_PROCESS_TOTAL,
)


def _index(specs: tuple[MetricSpec, ...]) -> MappingProxyType[str, MetricSpec]:
    by_name: dict[str, MetricSpec] = {}
    for spec in specs:
        for name in (spec.name, *spec.aliases):
            if name in by_name:
                raise ValueError(f"metric name {name!r} is declared twice in the catalogue")
            by_name[name] = spec
    return MappingProxyType(by_name)


BY_NAME: Final[MappingProxyType[str, MetricSpec]] = _index(CATALOG)


def markdown_table(specs: tuple[MetricSpec, ...] = CATALOG) -> str:
    """The catalogue as the README's markdown table (tests/test_docs.py keeps the README equal to it)."""
    rows = [
        "| metric | type | unit | labels (`?` optional) | across processes | description |",
        "|---|---|---|---|---|---|",
    ]
    for s in specs:
        labels = ", ".join(f"{name}?" if name in s.optional_labels else name for name in s.labels) or "—"
        name = f"`{s.name}`" + (" (alias " + ", ".join(f"`{a}`" for a in s.aliases) + ")" if s.aliases else "")
        across = "scrape time" if s.collected else s.multiprocess_mode if s.kind is Kind.GAUGE else "sum"
        rows.append(f"| {name} | {s.kind.value} | {s.unit or '—'} | {labels} | {across} | {s.help} |")
    return "\n".join(rows) + "\n"
