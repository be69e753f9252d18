"""The status page: one self-contained HTML page at ``/``, refreshed live from the service's own JSON.

>>> app.include_router(router(collector))    # in create_app  # doctest: +SKIP

For a deployment without Grafana (and for ``make run``). The page (``static/status.html``: inline CSS
and JavaScript, nothing fetched from outside the service) polls every 1.5 s:

- ``GET /slos``: each SLO's status, value against objective, and error budget left;
- ``GET /traces?status=incomplete``: the most recent traces that expired incomplete, with the agent
  each one is missing;
- ``GET /status.json`` (served here): agents up or silent from the heartbeat monitor, the decision
  latency distribution over the last 5 minutes (per-bucket counts of ``ark_pass_latency_ms``, and of
  ``ark_trace_latency_ms`` for services fed only over HTTP), and trace, denial and quarantine totals.

One time base: every counter the page shows (``StatusOut.period``) is an increase over the SLO window
(``window_seconds``, 5 minutes), the same window ``/slos`` judges, and the page says how much of it
this process has observed (``observed_seconds``). The incomplete-trace list holds traces for one trace
TTL after they expire; the page counts them from the same answer it lists them from
(``/traces?status=incomplete&limit=100``, the newest 10 shown), so the list and its count never disagree
(``period.incomplete_listed_period`` is the counter's increase over that TTL, for readers of the JSON).
A counter nothing has reported to this process (no series: HRM denials and
quarantines when agents only post spans and heartbeats over HTTP) is None, shown as "not reported".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ark_obs import catalog

if TYPE_CHECKING:
    from ark_obs.metrics import MetricsCollector

__all__ = ["AgentOut", "LatencyOut", "PeriodOut", "StatusOut", "router", "snapshot", "status_html"]

LATENCY_WINDOW_SECONDS: Final = 300.0  # the SLO window of decision_latency_p95
DECISION_THRESHOLD_MS: Final = 400.0
REFRESH_MS: Final = 1500


class AgentOut(BaseModel):
    """One agent's heartbeat state; ``up`` is None for a pipeline agent that never beat."""

    agent: str
    up: bool | None
    in_pipeline: bool
    last_beat: float | None = Field(description="Unix time (s) of its last heartbeat")
    silent_seconds: float | None
    quarantines_in_window: float | None = Field(
        description="Watchdog quarantines of this agent over window_seconds (None: no quarantine of any agent"
        " was ever reported to this service, so it cannot know)"
    )
    quarantines_total: float | None = Field(description="since this service started (None: as above)")


class BucketOut(BaseModel):
    """Observations in one histogram bucket over the window: ``le`` is its upper bound (None: +Inf)."""

    le: float | None
    count: float


class LatencyOut(BaseModel):
    """A latency histogram over the window: per-bucket counts and interpolated percentiles (ms)."""

    metric: str
    window_seconds: float
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    lower_bounds: list[str] = Field(
        default=[],
        description="fields (p50, p95, p99, max) that are only a lower bound, shown '> value': events above "
        "the highest finite bucket in multiprocess mode",
    )
    threshold_ms: float
    over_threshold: float = Field(description="observations above threshold_ms in the window")
    buckets: list[BucketOut]


class TracesOut(BaseModel):
    """Trace continuity totals since the service started."""

    in_flight: int | None
    complete: float
    incomplete: float
    incomplete_by_missing_agent: dict[str, float]


class PeriodOut(BaseModel):
    """Counter increases over the page's one time base, ``StatusOut.window_seconds``.

    None means nothing reported the counter to this process (it has no series), not zero.
    """

    complete: float
    incomplete: float
    incomplete_listed_period: float = Field(
        description="incomplete traces over the last trace TTL: the period the incomplete list holds"
    )
    denials: float | None
    quarantines: float | None


class StatusOut(BaseModel):
    """What the status page shows besides the SLOs and the incomplete traces."""

    generated_at: float
    started_at: float = Field(description="Unix time (s) this service started counting")
    window_seconds: float = Field(description="the period of every count in ``period`` (the SLO window)")
    observed_seconds: float = Field(description="how much of that window this service has observed")
    trace_ttl_seconds: float = Field(description="an incomplete trace is listed for this long after it expired")
    period: PeriodOut
    heartbeat_interval_seconds: float
    pipeline: list[str]
    agents: list[AgentOut]
    decision_latency: LatencyOut
    trace_latency: LatencyOut
    traces: TracesOut
    denials: float
    quarantines: dict[str, float]
    heartbeat_failures: dict[str, float]


@lru_cache(maxsize=1)
def status_html() -> str:
    """The page, read once from the package."""
    return resources.files("ark_obs.service").joinpath("static/status.html").read_text(encoding="utf-8")


def _totals(collector: MetricsCollector, name: str, label: str | None = None) -> dict[str, float]:
    """A counter's current value summed per value of ``label`` (key "" without a label)."""
    spec = collector.metric(name).spec
    index = spec.labels.index(label) if label is not None else None
    out: dict[str, float] = {}
    for reading in collector.readings(name):
        values: tuple[str, ...] = reading.key[1]  # type: ignore[index]
        key = values[index] if index is not None else ""
        out[key] = out.get(key, 0.0) + reading.values[0]
    return out


def _latency(collector: MetricsCollector, name: str, window: float, threshold: float) -> LatencyOut:
    spec = collector.metric(name).spec
    bounds: tuple[float, ...] = spec.buckets
    inc = collector.increase(name, window)
    counts: Iterable[float] = inc[0][:-1] if inc is not None else [0.0] * (len(bounds) + 1)
    buckets = [
        BucketOut(le=bounds[i] if i < len(bounds) else None, count=round(max(c, 0.0), 6)) for i, c in enumerate(counts)
    ]
    stats = collector.get_histogram_stats(name, window_seconds=window)
    over = sum(b.count for b in buckets if b.le is None or b.le > threshold)
    return LatencyOut(
        metric=name,
        window_seconds=window,
        count=stats.count,
        p50=stats.p50,
        p95=stats.p95,
        p99=stats.p99,
        max=stats.max if stats.max is not None and math.isfinite(stats.max) else None,
        lower_bounds=[f for f in stats.lower_bounds if f in ("p50", "p95", "p99", "max")],
        threshold_ms=threshold,
        over_threshold=over,
        buckets=buckets,
    )


def _increase(
    collector: MetricsCollector, name: str, window: float, labels: dict[str, str] | None = None
) -> float | None:
    """A counter's increase over ``window``, summed over series; None when it has no series at all.

    Rounded to a whole number: these count events, and the window's interpolation at its start must not
    show an operator 82.5 traces.
    """
    inc = collector.increase(name, window, labels, minmax=False)
    return None if inc is None else float(round(max(inc[0][0], 0.0)))


def _agents(collector: MetricsCollector, pipeline: tuple[str, ...], window: float) -> list[AgentOut]:
    states = {s.agent: s for s in collector.heartbeats.status() or ()}
    quarantine = catalog.WATCHDOG_QUARANTINES_TOTAL.name
    totals = _totals(collector, quarantine, "agent")
    out = []
    for agent in (*pipeline, *sorted((set(states) | set(totals)) - set(pipeline))):
        s = states.get(agent)
        # once the Watchdog reports any quarantine, an agent without a series has had none
        mine = (_increase(collector, quarantine, window, {"agent": agent}) or 0.0) if agent in totals else 0.0
        out.append(
            AgentOut(
                agent=agent,
                up=None if s is None else s.up,
                in_pipeline=agent in pipeline,
                last_beat=None if s is None else s.last_beat,
                silent_seconds=None if s is None else round(s.silent_seconds, 3),
                quarantines_in_window=mine if totals else None,
                quarantines_total=totals.get(agent, 0.0) if totals else None,
            )
        )
    return out


def snapshot(collector: MetricsCollector, started_at: float | None = None) -> StatusOut:
    """Everything ``/status.json`` returns, read from ``collector`` now (``started_at``: default now)."""
    traces, heartbeats = collector.traces, collector.heartbeats
    heartbeats.sweep()  # fresh up/down, as a scrape would see it
    now = collector.clock()
    started = now if started_at is None else started_at
    window = min(LATENCY_WINDOW_SECONDS, collector.window.retention)
    ttl = min(traces.settings.ttl_seconds, collector.window.retention)
    incomplete = _totals(collector, catalog.ARK_TRACES_INCOMPLETE_TOTAL.name, "missing_agent")
    period = PeriodOut(
        complete=_increase(collector, catalog.ARK_TRACES_COMPLETE_TOTAL.name, window) or 0.0,
        incomplete=_increase(collector, catalog.ARK_TRACES_INCOMPLETE_TOTAL.name, window) or 0.0,
        incomplete_listed_period=_increase(collector, catalog.ARK_TRACES_INCOMPLETE_TOTAL.name, ttl) or 0.0,
        denials=_increase(collector, catalog.HRM_DENIALS_TOTAL.name, window),
        quarantines=_increase(collector, catalog.WATCHDOG_QUARANTINES_TOTAL.name, window),
    )
    return StatusOut(
        generated_at=now,
        started_at=started,
        window_seconds=window,
        observed_seconds=round(min(window, max(0.0, now - started)), 3),
        trace_ttl_seconds=traces.settings.ttl_seconds,
        period=period,
        heartbeat_interval_seconds=heartbeats.interval,
        pipeline=list(traces.pipeline),
        agents=_agents(collector, traces.pipeline, window),
        decision_latency=_latency(collector, catalog.ARK_PASS_LATENCY_MS.name, window, DECISION_THRESHOLD_MS),
        trace_latency=_latency(collector, catalog.ARK_TRACE_LATENCY_MS.name, window, DECISION_THRESHOLD_MS),
        traces=TracesOut(
            in_flight=traces.in_flight(),
            complete=sum(_totals(collector, catalog.ARK_TRACES_COMPLETE_TOTAL.name).values()),
            incomplete=sum(incomplete.values()),
            incomplete_by_missing_agent=incomplete,
        ),
        denials=sum(_totals(collector, catalog.HRM_DENIALS_TOTAL.name).values()),
        quarantines=_totals(collector, catalog.WATCHDOG_QUARANTINES_TOTAL.name, "agent"),
        heartbeat_failures=_totals(collector, catalog.AGENT_HEARTBEAT_FAILURES_TOTAL.name, "agent"),
    )


def router(collector: MetricsCollector) -> APIRouter:
    """``GET /`` (the page) and ``GET /status.json`` (its data) for the service serving ``collector``."""
    api = APIRouter(tags=["status page"])
    started_at = collector.clock()  # the counters the page shows start with the service

    @api.get("/", response_class=HTMLResponse, summary="Status page")
    async def page() -> HTMLResponse:
        """A live page: SLOs and error budgets, agents up or silent, decision latency, stuck traces."""
        return HTMLResponse(status_html(), headers={"Cache-Control": "no-cache"})

    @api.get("/status.json", response_model=StatusOut, summary="Status page data")
    async def status() -> Any:
        """Agents, the decision latency distribution and trace totals, as the status page shows them."""
        return await run_in_threadpool(snapshot, collector, started_at)

    return api
