"""The status page: one self-contained HTML page at ``/``, refreshed live from the service's own JSON.

>>> app.include_router(router(collector, settings))    # in create_app  # doctest: +SKIP

For a deployment without Grafana (and for ``make run``). The page (``static/status.html``: inline CSS
and JavaScript, nothing fetched from outside the service) polls every 1.5 s:

- ``GET /slos``: each SLO's status, value against objective, and error budget left;
- ``GET /status.json`` (served here): the trace store's health (down or degraded, what fails and since
  when), agents up, silent or unknown from the heartbeat monitor, the decision latency distribution over
  the last 5 minutes (per-bucket counts of ``ark_pass_latency_ms``, and of ``ark_trace_latency_ms`` for
  services fed only over HTTP), trace counts (the failed ones apart), denial and quarantine counts, the
  traces stalled now (the ``ark_traces_stalled`` reading), the incomplete traces of the window,
  and, with ``ARK_OBS_PROMETHEUS_URL``, the fleet's numbers from the shipped recording rules;
- ``GET /traces?status=stalled`` when the service offers it: the newest traces waiting on an agent (the
  stalled tile counts them all from ``/status.json``'s ``stalled``, the reading ``ark_traces_stalled`` gives).

One time base: every counter the page shows (``StatusOut.period``) is an increase over the SLO window
(``window_seconds``, 5 minutes), the same window ``/slos`` judges, and the page says how much of it
this process has observed (``observed_seconds``). Counts of events are whole numbers. The incomplete
traces listed are the newest of those this process finalized in that same window (their reports are
kept in memory, so the list outlives the store's copy of each trace), with how many more the count holds.

Nothing is green without evidence: a counter nothing has reported to this process (no series: HRM
denials and quarantines when agents only post spans and heartbeats over HTTP) is None, shown as "not
reported"; an HRM or Watchdog running in this process creates its series at 0, so none reads 0. While
the store is down the agents are unknown, not "no heartbeat yet". Every red or amber element links to
its section of the runbook (``runbook_url``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ark_obs import catalog
from ark_obs.service.fleet import FleetOut, FleetSource

if TYPE_CHECKING:
    from ark_obs.metrics import MetricsCollector
    from ark_obs.settings import Settings

__all__ = [
    "AgentOut",
    "IncompleteOut",
    "LatencyOut",
    "PeriodOut",
    "StatusOut",
    "StoreOut",
    "router",
    "snapshot",
    "status_html",
]

LATENCY_WINDOW_SECONDS: Final = 300.0  # the SLO window of decision_latency_p95
DECISION_THRESHOLD_MS: Final = 400.0
REFRESH_MS: Final = 1500
INCOMPLETE_SHOWN: Final = 10  # rows of the incomplete-trace list
DEFAULT_RUNBOOK_URL: Final = "http://127.0.0.1:9871/runbook"


class AgentOut(BaseModel):
    """One agent's heartbeat state; ``up`` is None when it is not known (never beat, or the store is down)."""

    agent: str
    up: bool | None
    state: Literal["up", "silent", "unknown"]
    why_unknown: str | None = Field(description="'no heartbeat yet' or 'store down' while state is unknown")
    in_pipeline: bool
    last_beat: float | None = Field(description="Unix time (s) of its last heartbeat")
    silent_seconds: float | None
    quarantines_in_window: int | None = Field(
        description="Watchdog quarantines of this agent over window_seconds (None: no quarantine of any agent"
        " was ever reported to this service, so it cannot know)"
    )
    quarantines_total: int | None = Field(description="since this service started (None: as above)")


class BucketOut(BaseModel):
    """Observations in one histogram bucket over the window: ``le`` is its upper bound (None: +Inf)."""

    le: float | None
    count: int


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
    over_threshold: int = Field(description="observations above threshold_ms in the window")
    buckets: list[BucketOut]


class TracesOut(BaseModel):
    """Trace continuity totals since the service started."""

    in_flight: int | None
    complete: int
    incomplete: int
    incomplete_by_missing_agent: dict[str, int]


class PeriodOut(BaseModel):
    """Counter increases over the page's one time base, ``StatusOut.window_seconds``, as whole events.

    None means nothing reported the counter to this process (it has no series), not zero.
    """

    complete: int
    incomplete: int
    failed: int = Field(description="complete traces an agent failed in (ark_traces_failed_total)")
    failed_by_agent: dict[str, int] = Field(description="``failed`` by the agent the traces failed at")
    denials: int | None
    quarantines: int | None


class StoreOut(BaseModel):
    """The trace (and heartbeat) store as this service sees it now."""

    backend: str
    state: Literal["ok", "degraded", "down"] = Field(
        description="down: it does not answer; degraded: it answers, but spans were dropped in the window"
    )
    detail: str = Field(description="what fails (no credential)")
    since: float | None = Field(description="Unix time (s) it stopped answering, while down")
    dropped_in_window: int = Field(description="spans dropped because the store could not take them, in the window")


class IncompleteOut(BaseModel):
    """An incomplete trace this process finalized in the window, with its report."""

    trace_id: str
    expired_at: float
    held: bool = Field(description="the store still holds it: GET /traces/{trace_id} answers")
    missing_agents: list[str]
    agents_seen: list[str]
    latency_ms: float | None


class StatusOut(BaseModel):
    """What the status page shows besides the SLOs."""

    generated_at: float
    started_at: float = Field(description="Unix time (s) this service started counting")
    window_seconds: float = Field(description="the period of every count in ``period`` (the SLO window)")
    observed_seconds: float = Field(description="how much of that window this service has observed")
    trace_ttl_seconds: float = Field(description="an expired trace is held in the store this long")
    runbook_url: str = Field(description="base URL of the runbook; a section is {runbook_url}#{anchor}")
    store: StoreOut
    period: PeriodOut
    sources: dict[str, str] = Field(description="where each tile's number comes from")
    fleet: FleetOut | None = Field(description="the fleet's numbers, when ARK_OBS_PROMETHEUS_URL is set")
    heartbeat_interval_seconds: float
    pipeline: list[str]
    agents: list[AgentOut]
    decision_latency: LatencyOut
    trace_latency: LatencyOut
    traces: TracesOut
    incomplete: list[IncompleteOut] = Field(description="the newest incomplete traces of the window")
    incomplete_more: int = Field(description="incomplete traces of the window not in ``incomplete``")
    stalled: dict[str, int] | None = Field(
        None,
        description="traces stalled now by the agent they wait on, as ark_traces_stalled reads them; "
        "null when the store cannot be read",
    )
    denials: int
    quarantines: dict[str, int]
    heartbeat_failures: dict[str, int]


@lru_cache(maxsize=1)
def status_html() -> str:
    """The page, read once from the package."""
    return resources.files("ark_obs.service").joinpath("static/status.html").read_text(encoding="utf-8")


def _whole(value: float) -> int:
    return round(max(value, 0.0))


def _totals(collector: MetricsCollector, name: str, label: str | None = None) -> dict[str, int]:
    """A counter's current value summed per value of ``label`` (key "" without a label), in whole events."""
    spec = collector.metric(name).spec
    index = spec.labels.index(label) if label is not None else None
    out: dict[str, float] = {}
    for reading in collector.readings(name):
        values: tuple[str, ...] = reading.key[1]  # type: ignore[index]
        key = values[index] if index is not None else ""
        out[key] = out.get(key, 0.0) + reading.values[0]
    return {k: _whole(v) for k, v in out.items()}


def _latency(collector: MetricsCollector, name: str, window: float, threshold: float) -> LatencyOut:
    spec = collector.metric(name).spec
    bounds: tuple[float, ...] = spec.buckets
    inc = collector.increase(name, window)
    counts: Iterable[float] = inc[0][:-1] if inc is not None else [0.0] * (len(bounds) + 1)
    buckets = [BucketOut(le=bounds[i] if i < len(bounds) else None, count=_whole(c)) for i, c in enumerate(counts)]
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
) -> int | None:
    """A counter's increase over ``window``, summed over series; None when it has no series at all.

    Rounded to a whole number: these count events, and the window's interpolation at its start must not
    show an operator 82.5 traces.
    """
    inc = collector.increase(name, window, labels, minmax=False)
    return None if inc is None else _whole(inc[0][0])


def _agents(collector: MetricsCollector, pipeline: tuple[str, ...], window: float, store_down: bool) -> list[AgentOut]:
    states = collector.heartbeats.status()
    by_agent = {s.agent: s for s in states or ()}
    unreadable = states is None or store_down
    quarantine = catalog.WATCHDOG_QUARANTINES_TOTAL.name
    totals = _totals(collector, quarantine, "agent")
    out = []
    for agent in (*pipeline, *sorted((set(by_agent) | set(totals)) - set(pipeline))):
        s = None if unreadable else by_agent.get(agent)
        # once the Watchdog reports any quarantine, an agent without a series has had none
        mine = (_increase(collector, quarantine, window, {"agent": agent}) or 0) if agent in totals else 0
        state: Literal["up", "silent", "unknown"] = "unknown" if s is None else "up" if s.up else "silent"
        out.append(
            AgentOut(
                agent=agent,
                up=None if s is None else s.up,
                state=state,
                why_unknown=None if s is not None else "store down" if unreadable else "no heartbeat yet",
                in_pipeline=agent in pipeline,
                last_beat=None if s is None else s.last_beat,
                silent_seconds=None if s is None else round(s.silent_seconds, 3),
                quarantines_in_window=mine if totals else None,
                quarantines_total=totals.get(agent, 0) if totals else None,
            )
        )
    return out


def _store(collector: MetricsCollector, window: float) -> StoreOut:
    traces = collector.traces
    health = traces.check()
    beats = collector.heartbeats.check()
    failing = health if not health.healthy else beats if not beats.healthy else None
    dropped = (
        _increase(
            collector,
            catalog.ARK_OBS_DROPPED_TOTAL.name,
            window,
            {"metric": "trace_span", "reason": "store_unavailable"},
        )
        or 0
    )
    if failing is not None:
        return StoreOut(
            backend=failing.backend,
            state="down",
            detail=failing.detail or "does not answer",
            since=failing.since,
            dropped_in_window=dropped,
        )
    return StoreOut(
        backend=health.backend,
        state="degraded" if dropped else "ok",
        detail=f"{dropped} span{'s' if dropped != 1 else ''} dropped in the window: the store could not take them"
        if dropped
        else "",
        since=None,
        dropped_in_window=dropped,
    )


def _incomplete(
    collector: MetricsCollector, now: float, window: float, counted: int
) -> tuple[list[IncompleteOut], int]:
    traces = collector.traces
    expired = traces.expired_since(now - window)
    ttl = traces.settings.ttl_seconds
    rows = [
        IncompleteOut(
            trace_id=r.trace_id,
            expired_at=at,
            held=now - at < ttl,
            missing_agents=list(r.missing_agents),
            agents_seen=list(r.agents_seen),
            latency_ms=r.latency_ms,
        )
        for at, r in expired[:INCOMPLETE_SHOWN]
    ]
    return rows, max(counted, len(expired)) - len(rows)


def snapshot(
    collector: MetricsCollector,
    started_at: float | None = None,
    *,
    runbook_url: str = DEFAULT_RUNBOOK_URL,
    fleet_out: FleetOut | None = None,
) -> StatusOut:
    """Everything ``/status.json`` returns, read from ``collector`` now (``started_at``: default now)."""
    traces, heartbeats = collector.traces, collector.heartbeats
    heartbeats.sweep()  # fresh up/down, as a scrape would see it
    now = collector.clock()
    started = now if started_at is None else started_at
    window = min(LATENCY_WINDOW_SECONDS, collector.window.retention)
    store = _store(collector, window)
    incomplete = _totals(collector, catalog.ARK_TRACES_INCOMPLETE_TOTAL.name, "missing_agent")
    failed = catalog.ARK_TRACES_FAILED_TOTAL.name
    failed_by_agent = {
        agent: n
        for agent in _totals(collector, failed, "agent")
        if (n := _increase(collector, failed, window, {"agent": agent}) or 0)
    }
    period = PeriodOut(
        complete=_increase(collector, catalog.ARK_TRACES_COMPLETE_TOTAL.name, window) or 0,
        incomplete=_increase(collector, catalog.ARK_TRACES_INCOMPLETE_TOTAL.name, window) or 0,
        failed=sum(failed_by_agent.values()),
        failed_by_agent=failed_by_agent,
        denials=_increase(collector, catalog.HRM_DENIALS_TOTAL.name, window),
        quarantines=_increase(collector, catalog.WATCHDOG_QUARANTINES_TOTAL.name, window),
    )
    rows, more = _incomplete(collector, now, window, period.incomplete)
    here = "this ark-obs process"
    sources = {
        "traces": f"{here} (ark_traces_*_total)",
        "denials": f"{here} (hrm_denials_total)",
        "quarantines": f"{here} (watchdog_quarantines_total)",
        "availability": f"{here} (/slos)",
        "burn": f"{here} (/slos)",
    }
    if fleet_out is not None:
        sources.update(fleet_out.sources)
    return StatusOut(
        generated_at=now,
        started_at=started,
        window_seconds=window,
        observed_seconds=round(min(window, max(0.0, now - started)), 3),
        trace_ttl_seconds=traces.settings.ttl_seconds,
        runbook_url=runbook_url,
        store=store,
        period=period,
        sources=sources,
        fleet=fleet_out,
        heartbeat_interval_seconds=heartbeats.interval,
        pipeline=list(traces.pipeline),
        agents=_agents(collector, traces.pipeline, window, store.state == "down"),
        decision_latency=_latency(collector, catalog.ARK_PASS_LATENCY_MS.name, window, DECISION_THRESHOLD_MS),
        trace_latency=_latency(collector, catalog.ARK_TRACE_LATENCY_MS.name, window, DECISION_THRESHOLD_MS),
        traces=TracesOut(
            in_flight=traces.in_flight(),
            complete=sum(_totals(collector, catalog.ARK_TRACES_COMPLETE_TOTAL.name).values()),
            incomplete=sum(incomplete.values()),
            incomplete_by_missing_agent=incomplete,
        ),
        incomplete=rows,
        incomplete_more=more,
        stalled=traces.stalled(),
        denials=sum(_totals(collector, catalog.HRM_DENIALS_TOTAL.name).values()),
        quarantines=_totals(collector, catalog.WATCHDOG_QUARANTINES_TOTAL.name, "agent"),
        heartbeat_failures=_totals(collector, catalog.AGENT_HEARTBEAT_FAILURES_TOTAL.name, "agent"),
    )


def router(collector: MetricsCollector, settings: Settings | None = None) -> APIRouter:
    """``GET /`` (the page) and ``GET /status.json`` (its data) for the service serving ``collector``.

    ``settings``: the runbook base URL and the Prometheus giving the fleet's numbers (None: defaults).
    """
    api = APIRouter(tags=["status page"])
    started_at = collector.clock()  # the counters the page shows start with the service
    runbook_url = settings.runbook_url if settings is not None else DEFAULT_RUNBOOK_URL
    source = FleetSource(settings.prometheus_url) if settings is not None and settings.prometheus_url else None

    @api.get("/", response_class=HTMLResponse, summary="Status page")
    async def page() -> HTMLResponse:
        """A live page: store health, SLOs and error budgets, agents, decision latency, stuck traces."""
        return HTMLResponse(status_html(), headers={"Cache-Control": "no-cache"})

    @api.get("/status.json", response_model=StatusOut, summary="Status page data")
    async def status() -> Any:
        """Store health, agents, the decision latency distribution, trace counts and the fleet's numbers."""
        fleet_out = await source.read() if source is not None else None
        return await run_in_threadpool(
            lambda: snapshot(collector, started_at, runbook_url=runbook_url, fleet_out=fleet_out)
        )

    return api
