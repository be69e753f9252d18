"""OTLP/HTTP route: ``POST /v1/traces``, OpenTelemetry exporters feeding trace continuity.

Same bearer token, body limit and batch limit as the other writes; the decoding lives in
``ark_obs.service.otlp``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ark_obs import catalog
from ark_obs.service.auth import AgentGuard, allowed_agents, auth_responses, forbidden_agents, write_guard
from ark_obs.service.otlp import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_PROTOBUF,
    DEFAULT_RESOURCE_ATTRIBUTE,
    DEFAULT_SPAN_ATTRIBUTE,
    REJECTED_REASON,
    Decoded,
    ExportResponseJson,
    OtlpError,
    StatusJson,
    check_start,
    count_json_span_keys,
    decode,
    encode_response,
    encode_status,
    gunzip,
    media_type,
    refuse_implausible,
    store_spans,
)
from ark_obs.service.wiring import Service
from ark_obs.traces import SPAN_METRIC, StoreUnavailable, TraceMonitor

__all__ = ["DECODERS", "DECODE_WAIT_SECONDS", "router", "router_for"]


def bare(exc: OtlpError) -> OtlpError:
    """``exc`` without its traceback and cause: carried back from the worker thread, a traceback keeps the
    decoding frames alive (an 8 MiB body, the parsed document) in a reference cycle that only a full
    collection frees, and the service runs one every 10 minutes (wiring.freeze_long_lived_objects): under
    a flood of refused bodies resident memory grew by hundreds of MB."""
    exc.__traceback__ = None
    exc.__cause__ = exc.__context__ = None
    return exc


DECODERS: Final = 1  # requests decoded at once
DECODE_WAIT_SECONDS: Final = 2.0  # a request waits this long for its turn, then gets 429


def router(service: Service) -> APIRouter:
    """``POST /v1/traces`` into ``service.collector.traces``, with the app's token, limits and attributes."""
    settings = service.settings
    return router_for(
        service.collector.traces,
        max_spans=settings.max_batch_spans,
        max_decompressed_bytes=settings.max_decompressed_bytes,
        resource_attribute=settings.otlp_agent_attribute,
        span_attribute=settings.otlp_span_agent_attribute,
        dependencies=write_guard(settings.token, settings.bound_tokens),
        responses=auth_responses(settings.token, settings.bound_tokens),
    )


def router_for(
    traces: TraceMonitor,
    *,
    max_spans: int,
    max_decompressed_bytes: int,
    resource_attribute: str = DEFAULT_RESOURCE_ATTRIBUTE,
    span_attribute: str = DEFAULT_SPAN_ATTRIBUTE,
    dependencies: Iterable[Any] = (),
    responses: dict[int | str, dict[str, Any]] | None = None,
    decoders: int = DECODERS,
    decode_wait_seconds: float = DECODE_WAIT_SECONDS,
) -> APIRouter:
    """``POST /v1/traces`` into ``traces``; ``dependencies`` are the app's write guard (its bearer token),
    ``responses`` what that guard may answer (documented in the schema).

    The raw body is bounded by the app's body limit like every write; a gzip body's inflated size by
    ``max_decompressed_bytes``; a request's span count by ``max_spans`` (413 past either).
    """
    api = APIRouter(dependencies=list(dependencies))
    dropped_family = traces.collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name)
    unavailable = dropped_family.labels(SPAN_METRIC, "store_unavailable")
    rejected_counter = dropped_family.labels(SPAN_METRIC, REJECTED_REASON)

    def step_check(media: str) -> Callable[[bytes], None]:
        # each inflated step of a gzip body: its first bytes must start a request, and a JSON body's span
        # keys are counted as it inflates, so either stops the inflating (a key cut in two by a step
        # boundary is missed, so this never over-counts)
        seen = 0
        first = True

        def check(step: bytes) -> None:
            nonlocal seen, first
            if first:
                check_start(step[:64], media)
                first = False
            if media == CONTENT_TYPE_JSON:
                seen += count_json_span_keys(step)
                if seen > max_spans:
                    raise OtlpError(413, f"more than {max_spans} spans in one request (ARK_OBS_MAX_BATCH_SPANS)")

        return check

    # Decoding is CPU work that holds the interpreter in long C calls (inflating aside): one request
    # decodes at a time, so /healthz and the other routes wait for one such call at most, and a flood of
    # large bodies is answered 429 (retryable, per the OTLP spec) instead of queueing without bound.
    decoding = threading.BoundedSemaphore(decoders)

    def handle(body: bytes, media: str, encoding: str, allowed: AgentGuard) -> Decoded | OtlpError:
        """Decode and store; a refusal is returned, not raised (see ``bare``)."""
        try:
            return handle_or_raise(body, media, encoding, allowed)
        except OtlpError as exc:
            return bare(exc)

    def handle_or_raise(body: bytes, media: str, encoding: str, allowed: AgentGuard) -> Decoded:
        if not decoding.acquire(timeout=decode_wait_seconds):
            raise OtlpError(429, "busy decoding other exports; retry", retry_after=1)
        try:
            if encoding == "gzip":
                body = gunzip(body, max_decompressed_bytes, step_check(media))
            decoded = decode(
                body, media, resource_attribute=resource_attribute, span_attribute=span_attribute, max_spans=max_spans
            )
        finally:
            decoding.release()
        refused = forbidden_agents(allowed, {s.agent for s in decoded.spans})
        if refused:
            shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
            raise OtlpError(403, f"this token may not write for agent(s) {shown} (ARK_OBS_INGEST_TOKENS)")
        decoded = refuse_implausible(decoded, traces)
        try:
            store_spans(traces, decoded.spans, unavailable)
        except StoreUnavailable as exc:
            raise OtlpError(503, f"trace store unavailable ({exc or 'no answer'}); retry", retry_after=1) from exc
        if decoded.rejected:
            rejected_counter.inc(decoded.rejected)
        return decoded

    @api.post(
        "/v1/traces",
        summary="OTLP/HTTP trace export",
        response_class=Response,
        responses={
            **(responses or {}),
            200: {
                "model": ExportResponseJson,
                "description": "ExportTraceServiceResponse in the request's encoding (partial_success when "
                "spans were refused).",
                "content": {CONTENT_TYPE_PROTOBUF: {}},
            },
            **{
                status: {"model": StatusJson, "description": why, "content": {CONTENT_TYPE_PROTOBUF: {}}}
                for status, why in (
                    (400, "The body could not be decoded (google.rpc.Status)."),
                    (403, "A span names an agent the token may not write for (ARK_OBS_INGEST_TOKENS)."),
                    (413, "Body, inflated body or span count over its limit."),
                    (415, "Neither application/x-protobuf nor application/json, or an unknown encoding."),
                    (429, "Other exports are being decoded: retry after Retry-After."),
                    (503, "The trace store cannot take the spans: retry after Retry-After."),
                )
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    CONTENT_TYPE_PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                    CONTENT_TYPE_JSON: {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def export_traces(request: Request) -> Response:
        """Record the spans of an OpenTelemetry exporter (OTLP/HTTP, protobuf or JSON, optionally gzip)."""
        media = media_type(request.headers.get("content-type"))
        encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
        reply_type = media if media in (CONTENT_TYPE_PROTOBUF, CONTENT_TYPE_JSON) else CONTENT_TYPE_JSON
        try:
            if reply_type != media:
                raise OtlpError(415, f"content type {media or '(none)'!r}: send {CONTENT_TYPE_PROTOBUF} or JSON")
            if encoding not in ("gzip", "identity"):
                raise OtlpError(415, f"content encoding {encoding!r}: send gzip or none")
            body = await request.body()
            outcome = await run_in_threadpool(handle, body, media, encoding, allowed_agents(request))
            if isinstance(outcome, OtlpError):
                raise outcome
            decoded = outcome
        except OtlpError as exc:
            headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
            return Response(
                encode_status(exc.status, exc.message, reply_type),
                status_code=exc.status,
                media_type=reply_type,
                headers=headers,
            )
        return Response(encode_response(decoded, reply_type), media_type=reply_type)

    return api
