"""The HTTP API's data: what the service accepts and answers, as pydantic models and typed parameters.

The OpenAPI schema is generated from these, so each constraint here is both checked and documented:
trace ids (a lowercase UUID or a W3C trace-id, never all zeros), agent names, W3C ``traceparent``
headers, span fields, and every response body.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ark_obs import __version__
from ark_obs.context import ZERO_TRACE_IDS, parse_traceparent
from ark_obs.metrics import HistogramStats
from ark_obs.settings import NAME_PATTERN
from ark_obs.traces import TraceReport, TraceStatus

# API_TRACE_ID_PATTERN (below) has no look-ahead (pydantic's regex engine has none), so the
# all-zero ids are excluded with a JSON Schema "not" and a validator: the schema and the checks agree.
_ZERO_IDS: Final = frozenset(ZERO_TRACE_IDS)
METRIC_NAME_PATTERN: Final = r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$"
MAX_EXPECTED_AGENTS: Final = 32
_AGENT: Final = NAME_PATTERN.strip("^$")
# ?expected=Kyle,Joey: up to 32 agent names, commas with optional spaces around them
EXPECTED_PATTERN: Final = rf"^ *{_AGENT}( *, *{_AGENT}){{0,{MAX_EXPECTED_AGENTS - 1}}} *$"
MAX_NAME_FILTERS: Final = 200
MAX_TRACE_LIST: Final = 1000
# Span times: Unix seconds, up to the year 5138; durations up to a day.
MAX_UNIX_SECONDS: Final = 1e11
MAX_DURATION_MS: Final = 86_400_000.0


# The API takes a UUID or W3C trace-id in either case (RFC 4122 allows upper case on input, and the library
# and OTLP take such ids), and answers for it in lower case: every form accepted for writing is readable.
API_TRACE_ID_PATTERN: Final = (
    r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


def _not_all_zero(trace_id: str) -> str:
    # the pattern has checked the form; a set lookup is all that is left (this runs once per span)
    if trace_id in _ZERO_IDS:
        raise ValueError("an all-zero trace id is invalid")
    return trace_id if trace_id.islower() or trace_id.isdigit() else trace_id.lower()


AgentName = Annotated[
    str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64, examples=["Kyle"], description="Agent name.")
]
TraceId = Annotated[
    str,
    Field(
        pattern=API_TRACE_ID_PATTERN,
        min_length=32,
        max_length=36,
        examples=["4bf92f3577b34da6a3ce929d0e0e4736"],
        description="A UUID or a W3C trace-id (32 hex digits), either case (taken in lower case), not all zeros.",
        json_schema_extra={"not": {"enum": list(ZERO_TRACE_IDS)}},
    ),
    AfterValidator(_not_all_zero),
]


def _traceparent_trace_id(header: str) -> str:
    parsed = parse_traceparent(header)
    if parsed is None:
        raise ValueError("not a valid W3C traceparent: version ff, an all-zero id, or data after a version-00 header")
    return parsed.trace_id


# A W3C traceparent (version-traceid-parentid-flags); "not" spells out what the pattern cannot: version
# ff, all-zero ids, and data after a version-00 header are invalid (ark_obs.context.parse_traceparent).
TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$"
TraceParentTraceId = Annotated[
    str,
    Field(
        pattern=TRACEPARENT_PATTERN,
        max_length=512,
        examples=["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        json_schema_extra={
            "not": {
                "anyOf": [
                    {"pattern": "^ff-"},
                    {"pattern": "^[0-9a-f]{2}-0{32}-"},
                    {"pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-0{16}-"},
                    {"pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}-"},
                ]
            }
        },
    ),
    AfterValidator(_traceparent_trace_id),  # the header's value becomes its trace id
]


# --- response and request models --------------------------------------------------------------------
class ErrorOut(BaseModel):
    """An error: what went wrong, in words."""

    detail: str


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"
    version: str = __version__


class Check(BaseModel):
    """One readiness check."""

    name: str
    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    """Readiness: 200 when every check passes, 503 naming the failing ones otherwise."""

    status: Literal["ready", "not_ready"]
    failing: list[str]
    checks: list[Check]


NonFinite = Literal["NaN", "+Inf", "-Inf"]


class ExemplarOut(BaseModel):
    """An exemplar: the trace behind one observation."""

    labels: dict[str, str]
    value: float | NonFinite
    timestamp: float | None = None


class SampleOut(BaseModel):
    """One sample of a family; non-finite values are the strings NaN, +Inf and -Inf (JSON has none)."""

    name: str
    labels: dict[str, str]
    value: float | NonFinite
    timestamp: float | None = None
    exemplar: ExemplarOut | None = None


class FamilyOut(BaseModel):
    """A metric family with its samples, as the registry collects it."""

    name: str
    type: str
    help: str
    unit: str
    samples: list[SampleOut]


class MetricsJson(BaseModel):
    """Every metric family with its samples, plus windowed stats of every histogram (all series)."""

    families: list[FamilyOut]
    histograms: dict[str, HistogramStats]


class SpanOut(BaseModel):
    """One agent's part in a trace (Unix seconds)."""

    agent: str
    start: float
    end: float
    duration_ms: float
    ok: bool


class TraceReportOut(BaseModel):
    """The continuity report: the seed's complete, missing_agents, agents_seen, latency_ms, and more."""

    trace_id: str = Field(description="the canonical id the report answers for (a UUID in its 32-hex W3C form)")
    requested_id: str = Field(description="the id as it was asked for (either form)")
    status: TraceStatus
    known: bool
    complete: bool
    missing_agents: list[str]
    agents_seen: list[str] = Field(description="in the order the agents started")
    latency_ms: float | None = Field(description="first span's start to last span's end")
    out_of_order: list[str] = Field(description="agents seen before one that precedes them in the pipeline")
    failed_agents: list[str]
    expected_agents: list[str]
    span_count: int
    spans: list[SpanOut]
    waiting_on: str | None = Field(
        None, description="in flight: the first expected agent without a span, where the trace waits (else null)"
    )
    waited_seconds: float | None = Field(None, description="in flight: seconds since the trace's last span arrived")
    failed_at: str | None = Field(
        None, description="status failed: the agent the trace failed at (first failed expected agent)"
    )

    @classmethod
    def of(cls, report: TraceReport) -> TraceReportOut:
        """The response for a monitor's report."""
        return cls(
            trace_id=report.trace_id,
            requested_id=report.requested_id or report.trace_id,
            status=report.status,
            known=report.known,
            complete=report.complete,
            missing_agents=list(report.missing_agents),
            agents_seen=list(report.agents_seen),
            latency_ms=report.latency_ms,
            out_of_order=list(report.out_of_order),
            failed_agents=list(report.failed_agents),
            expected_agents=list(report.expected_agents),
            span_count=report.span_count,
            spans=[
                SpanOut(agent=s.agent, start=s.start, end=s.end, duration_ms=s.duration_ms, ok=s.ok)
                for s in report.spans
            ],
            waiting_on=report.waiting_on,
            waited_seconds=report.waited_seconds,
            failed_at=report.failed_at,
        )


class TraceList(BaseModel):
    """The most recent traces in one state, newest first."""

    status: Literal["incomplete", "stalled", "failed"]
    count: int
    traces: list[TraceReportOut]


class SpanIn(BaseModel):
    """One span: an agent processed the trace."""

    # strict: JSON types as the schema says them (0 is not false, "1.5" is not a number)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    agent: AgentName
    at: float | None = Field(
        None, ge=0, le=MAX_UNIX_SECONDS, description="Unix time (s) the agent started; default: arrival."
    )
    duration_ms: float | None = Field(
        None, ge=0, le=MAX_DURATION_MS, description="How long the agent took (ms); default 0."
    )
    ok: bool = Field(True, description="False when the agent failed on this trace.")


class BatchSpanIn(SpanIn):
    """A span of a batch, which may hold spans of many traces."""

    trace_id: TraceId


class SpanBatch(BaseModel):
    """A batch of spans, of one trace or many."""

    model_config = ConfigDict(extra="forbid", strict=True)

    spans: list[BatchSpanIn]


class Accepted(BaseModel):
    """How many spans are now in the trace store."""

    accepted: int


class HeartbeatOut(BaseModel):
    """A recorded heartbeat."""

    agent: str
    at: float = Field(description="Unix time (s) the heartbeat was recorded")
