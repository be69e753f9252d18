"""Trace continuity routes: ``/traces/{id}`` (which agents saw one signal) and ``/traces`` (incomplete,
stalled or failed ones)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from starlette.concurrency import run_in_threadpool

from ark_obs.service.api import (
    EXPECTED_PATTERN,
    MAX_EXPECTED_AGENTS,
    MAX_TRACE_LIST,
    ErrorOut,
    TraceId,
    TraceList,
    TraceReportOut,
)
from ark_obs.service.wiring import Service
from ark_obs.traces import TraceStatus

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The trace routes over ``service.collector.traces``."""
    traces = service.collector.traces
    api = APIRouter()

    @api.get(
        "/traces/{trace_id}",
        response_model=TraceReportOut,
        summary="Trace continuity",
        responses={
            404: {"model": ErrorOut, "description": "The store holds no such trace."},
            503: {"model": ErrorOut, "description": "The trace store could not be read."},
        },
    )
    async def trace(
        trace_id: Annotated[TraceId, Path(description="UUID or W3C trace-id.")],
        expected: Annotated[
            str | None,
            Query(
                pattern=EXPECTED_PATTERN,
                max_length=MAX_EXPECTED_AGENTS * 70,
                description="Comma-separated agents to check for (default: the pipeline).",
                examples=["Kyle,Joey,HRM"],
            ),
        ] = None,
    ) -> TraceReportOut:
        """Which agents saw the trace, which are missing, in what order, and how long the pass took."""
        agents = _expected_agents(expected)
        report = await run_in_threadpool(traces.validate, trace_id, agents)
        if report.status is TraceStatus.UNAVAILABLE:
            raise HTTPException(503, "trace store unavailable", headers={"Retry-After": "1"})
        if not report.known:
            raise HTTPException(404, await run_in_threadpool(traces.forgotten_why, trace_id))
        return TraceReportOut.of(report)

    listings = {
        "incomplete": traces.recent_incomplete,
        "stalled": traces.recent_stalled,
        "failed": traces.recent_failed,
    }

    @api.get("/traces", response_model=TraceList, summary="Recent stuck, stalled or failed traces")
    async def trace_list(
        status: Annotated[
            Literal["incomplete", "stalled", "failed"],
            Query(
                description="incomplete: expired with agents missing; stalled: in flight without a span for "
                "ARK_OBS_STALL_SECONDS (with waiting_on and waited_seconds); failed: complete, an agent failed "
                "(with failed_at)."
            ),
        ] = "incomplete",
        limit: Annotated[int, Query(ge=1, le=MAX_TRACE_LIST, description="Most traces returned.")] = 20,
    ) -> TraceList:
        """The most recent traces in that state, newest first (stalled: the most recently active first)."""
        reports = await run_in_threadpool(listings[status], limit)
        items = [TraceReportOut.of(r) for r in reports[:limit]]
        return TraceList(status=status, count=len(items), traces=items)

    return api


def _expected_agents(expected: str | None) -> tuple[str, ...] | None:
    """``"Kyle, Joey"`` -> ("Kyle", "Joey"); None keeps the pipeline (EXPECTED_PATTERN has vetted the names)."""
    if expected is None:
        return None
    return tuple(a.strip() for a in expected.split(","))
