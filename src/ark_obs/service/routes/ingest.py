"""Span ingest: ``POST /spans`` (a batch), ``/traces/{id}/spans`` and ``/traceparent/spans`` (one span).

A 2xx means the spans are in the trace store; when the store cannot take them the answer is 503
(retry: a repeated span is harmless). Span times outside [now - trace TTL, now + clock skew] are 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from ark_obs import catalog
from ark_obs.service.api import Accepted, SpanIn, TraceId, TraceParentTraceId
from ark_obs.service.auth import require_agents, unavailable, write_guard, write_responses
from ark_obs.service.validation import read_batch
from ark_obs.service.wiring import Service
from ark_obs.traces import SPAN_METRIC, StoreUnavailable

__all__ = ["SpanTuple", "router"]

# (trace id, agent, at, duration_ms, ok): what TraceMonitor.record_span takes
SpanTuple = tuple[str, str, float | None, float | None, bool]


def router(service: Service) -> APIRouter:
    """The span-writing routes over ``service.collector.traces``, guarded by the ingest token."""
    collector = service.collector
    settings = service.settings
    traces = collector.traces
    # Spans the store could not take are counted here (by TraceMonitor.on_dropped); a write that saw
    # this count move answers 503 rather than claim its spans landed. Retrying is safe: a repeated
    # span only widens that agent's span.
    dropped_spans = collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name).labels(SPAN_METRIC, "store_unavailable")
    bound = settings.bound_tokens
    responses = write_responses(settings.token, bound)
    api = APIRouter(dependencies=write_guard(settings.token, bound))

    def store(spans: list[SpanTuple]) -> None:
        """Record ``spans`` and flush: on return they are in the store; StoreUnavailable otherwise."""
        health = traces.check()
        if not health.healthy:
            raise StoreUnavailable(health.detail or health.backend)
        drops_before = dropped_spans.get()
        record = traces.record_span
        for trace_id, agent, at, duration_ms, ok in spans:
            record(trace_id, agent, at=at, duration_ms=duration_ms, ok=ok)
        traces.store.flush()  # a buffering store (Redis) has written or dropped them when this returns
        health = traces.check()
        if not health.healthy or dropped_spans.get() != drops_before:
            raise StoreUnavailable(health.detail or "spans were dropped")

    def refuse_implausible_times(spans: Sequence[SpanIn], where: tuple[str | int, ...]) -> None:
        """422 naming each span whose times are outside [now - trace TTL, now + clock skew]."""
        now = collector.clock()
        earliest, latest = now - traces.settings.ttl_seconds, now + traces.clock_skew_seconds
        errors = []
        for i, span in enumerate(spans):
            at, duration_ms = span.at, span.duration_ms
            # the common case in a few comparisons; implausible() below words the rare refusal
            if at is None:
                if duration_ms is None or (earliest <= now - duration_ms / 1000.0 and now <= latest):
                    continue
            elif earliest <= at and at + (duration_ms or 0.0) / 1000.0 <= latest:
                continue
            if span.at is None:
                start, end, field = now - span.duration_ms / 1000.0, now, "duration_ms"  # type: ignore[operator]
            else:
                start, end, field = span.at, span.at + (span.duration_ms or 0.0) / 1000.0, "at"
                if end > now + traces.clock_skew_seconds and start <= now + traces.clock_skew_seconds:
                    field = "duration_ms"
            why = traces.implausible(start, end, now)
            if why:
                loc = (*where, i, field) if where[-1] == "spans" else (*where, field)
                errors.append({"loc": loc, "msg": why, "type": "implausible_time"})
        if errors:
            raise RequestValidationError(errors)

    async def store_or_503(spans: list[SpanTuple]) -> Accepted:
        try:
            await run_in_threadpool(store, spans)
        except StoreUnavailable as exc:
            raise unavailable(str(exc) or "no answer") from exc
        return Accepted(accepted=len(spans))

    @api.post("/traces/{trace_id}/spans", response_model=Accepted, summary="Record one span", responses=responses)
    async def post_span(
        request: Request,
        trace_id: Annotated[TraceId, Path(description="UUID or W3C trace-id.")],
        span: SpanIn,
    ) -> Accepted:
        """Record that ``span.agent`` processed the trace."""
        require_agents(request, (span.agent,))
        refuse_implausible_times([span], ("body",))
        return await store_or_503([(trace_id, span.agent, span.at, span.duration_ms, span.ok)])

    @api.post(
        "/traceparent/spans",
        response_model=Accepted,
        summary="Record one span of the traceparent's trace",
        responses=responses,
    )
    async def post_traced_span(
        request: Request,
        traceparent: Annotated[
            TraceParentTraceId, Header(description="W3C traceparent: the trace the span belongs to.")
        ],
        span: SpanIn,
    ) -> Accepted:
        """Record that ``span.agent`` processed the trace named by the ``traceparent`` header.

        For agents that propagate W3C trace context: forward the header you received, no trace id needed.
        """
        require_agents(request, (span.agent,))
        refuse_implausible_times([span], ("body",))
        return await store_or_503([(traceparent, span.agent, span.at, span.duration_ms, span.ok)])

    @api.post(
        "/spans",
        response_model=Accepted,
        summary="Record a batch of spans",
        responses={
            **responses,
            422: {
                "description": "Validation Error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SpanBatch"}}},
            }
        },
    )
    async def post_spans(request: Request) -> Accepted:
        """Record every span of the batch (spans of one trace or many).

        200: every span is in the store. 503: some may not be; send the whole batch again.
        """
        batch = await read_batch(request, settings.max_batch_spans)
        require_agents(request, {s.agent for s in batch.spans})
        refuse_implausible_times(batch.spans, ("body", "spans"))
        return await store_or_503([(s.trace_id, s.agent, s.at, s.duration_ms, s.ok) for s in batch.spans])

    return api
