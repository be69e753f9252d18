"""The HTTP service: scrape, query and ingest endpoints over one ``MetricsCollector``.

>>> app = create_app(Settings())          # what ``ark-obs serve`` runs under uvicorn

Reads (``/metrics``, ``/metrics/json``, ``/slos``, ``/traces``, ``/healthz``, ``/readyz``) are open;
writes (``POST /spans``, ``/traces/{id}/spans``, ``/traceparent/spans``, ``/heartbeats/{agent}``) need
``Authorization: Bearer <ARK_OBS_INGEST_TOKEN>`` when a token is set. Anything that may take a while (an
exposition, an SLO evaluation, a store call) runs in a worker thread, so one large scrape never stalls
the other requests. A 2xx from a write means the spans are in the trace store; when the store cannot
take them the answer is 503 (retry: a repeated span is harmless). Request and response models live in
``ark_obs.api``, the exposition and its negotiation in ``ark_obs.exposition``.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeAlias

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ark_obs import __version__, canary, catalog, docs_ui, otlp, status_page
from ark_obs.api import (
    EXPECTED_PATTERN,
    MAX_EXPECTED_AGENTS,
    MAX_NAME_FILTERS,
    MAX_TRACE_LIST,
    METRIC_NAME_PATTERN,
    Accepted,
    BatchSpanIn,
    Check,
    ErrorOut,
    Health,
    HeartbeatOut,
    MetricsJson,
    Readiness,
    SpanBatch,
    SpanIn,
    TraceId,
    TraceList,
    TraceParentTraceId,
    TraceReportOut,
)
from ark_obs.catalog import Kind
from ark_obs.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GZIP_LEVEL,
    OPENMETRICS_CONTENT_TYPE,
    accepts_gzip,
    families_json,
    render_exposition,
    wants_openmetrics,
)
from ark_obs.heartbeat import HEARTBEAT_METRIC, HeartbeatMonitor
from ark_obs.metrics import MetricsCollector
from ark_obs.settings import NAME_PATTERN, Settings
from ark_obs.slo import SloEngine, SloReport, load_slo_file
from ark_obs.state_revisions import AnomalyList, RevisionChecker, backend_for
from ark_obs.traces import SPAN_METRIC, StoreUnavailable, TraceMonitor, TraceStatus

__all__ = ["BackgroundHook", "Service", "build_collector", "create_app", "freeze_long_lived_objects"]

log = logging.getLogger("ark_obs.app")


# --- the service and its background work ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Service:
    """What a background hook gets: the settings and the collector the app serves."""

    settings: Settings
    collector: MetricsCollector
    # closed on shutdown: the monitors this app built (a collector passed in stays the caller's)
    owned: tuple[Any, ...] = field(default=(), repr=False)


# A long-running coroutine, started once the app is up and cancelled on shutdown (the synthetic loop).
BackgroundHook: TypeAlias = Callable[[Service], Awaitable[None]]


# --- wiring ------------------------------------------------------------------------------------------
def build_collector(settings: Settings) -> tuple[MetricsCollector, tuple[Any, ...]]:
    """A collector configured by ``settings``, and the monitors it owns (to close on shutdown).

    The trace store, pipeline, TTL and capacity, the watched Redis streams and the SLO file all come
    from ``settings``; a bad SLO file raises ``SloConfigError`` listing every mistake.
    """
    collector = MetricsCollector(
        retention_seconds=settings.retention_seconds,
        slice_seconds=settings.slice_seconds,
        max_series=settings.max_series_per_metric,
    )
    traces = TraceMonitor(
        collector,
        store=settings.trace_store,
        pipeline=settings.pipeline,
        ttl_seconds=settings.trace_ttl_seconds,
        max_in_flight=settings.max_in_flight_traces,
        sweep=True,  # the service does the accounting, also for a store shared with agents
        streams=settings.redis_streams,
        stream_timeout=settings.store_timeout_seconds,
        store_timeout=settings.store_timeout_seconds,
        clock_skew_seconds=settings.max_clock_skew_seconds,
        max_agents_per_trace=settings.max_agents_per_trace,
    )
    collector.traces = traces
    heartbeats = HeartbeatMonitor(
        collector,
        settings.heartbeat_interval_seconds,
        sweep=True,
        pipeline=settings.pipeline,
        max_agents=settings.max_heartbeat_agents,
        forget_after_seconds=settings.heartbeat_forget_seconds,
    )
    collector.heartbeats = heartbeats
    specs = None if settings.slo_file is None else load_slo_file(settings.slo_file, collector.registry)
    collector.slos = SloEngine(collector, specs)
    collector.revisions = RevisionChecker(
        collector.registry,
        backend=backend_for(traces.store, settings.state_revision_max_keys),
        max_keys=settings.state_revision_max_keys,
        recent_max=settings.state_revision_recent_max,
        clock=collector.clock,
    )
    return collector, (heartbeats, traces)


GC_FREEZE_SECONDS: Final = 5.0
GC_FULL_SECONDS: Final = 600.0


async def freeze_long_lived_objects(
    service: Service, every: float = GC_FREEZE_SECONDS, full_every: float = GC_FULL_SECONDS
) -> None:
    """Keep garbage-collector pauses short while a large trace store lives in this process.

    A full collection walks every tracked object, a 100,000-trace store included: 60-200 ms pauses
    every few seconds under ingest load, which stall scrapes (bench/bench_service.py). Every ``every``
    seconds this collects the young generations and freezes what survived (``gc.freeze``): frozen
    objects are still freed by reference counting, just no longer walked. Every ``full_every`` seconds
    it unfreezes and runs one full collection, so cycles among frozen objects are reclaimed too.
    """
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every)
        if time.monotonic() - last_full >= full_every:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()


async def _run_hook(hook: BackgroundHook, service: Service) -> None:
    try:
        await hook(service)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background hook %s failed", getattr(hook, "__name__", hook))


def _close(service: Service) -> None:
    """Flush the trace store (batched spans land), then close what the app built (heartbeats first)."""
    try:
        service.collector.traces.flush()
    except Exception:
        log.exception("flushing the trace store on shutdown failed")
    for owned in service.owned:
        try:
            owned.close()
        except Exception:
            log.exception("closing %r on shutdown failed", owned)


_bearer = HTTPBearer(auto_error=False, scheme_name="ingestToken", description="ARK_OBS_INGEST_TOKEN")


def _write_guard(token: str | None) -> list[Any]:
    """Dependencies of the write routes: a constant-time bearer check when a token is set, else none.

    Without a token the schema declares no security, so it never promises a check the app does not make.
    """
    if token is None:
        return []
    expected = token.encode()

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(503, f"trace store unavailable ({detail}); retry", headers={"Retry-After": "1"})


# --- request body limit ----------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    """A request body over the limit (an HTTPException, so FastAPI's body reader passes it through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit (ARK_OBS_MAX_BODY_BYTES)")


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by Content-Length up front or as it streams.

    Always the JSON ``{"detail": ...}`` the schema documents (Starlette's own limiter may answer in
    plain text), and the body is never buffered past the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(self.limit)
        response = JSONResponse({"detail": error.detail}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


BODY_PARSE_ERROR: Final = "There was an error parsing the body"  # FastAPI's detail for a body json.loads refused
MAX_VALIDATION_ERRORS: Final = 20  # errors listed in a 422; "total" counts them all
MAX_ERROR_TEXT: Final = 200  # characters of one message or location part in a 422


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_ERROR_TEXT:
        return value[:MAX_ERROR_TEXT] + "..."
    return value


def validation_response(errors: Sequence[Any], total: int) -> JSONResponse:
    """The documented 422: ``{"detail": [{loc, msg, type}, ...], "total": n}``, bounded in size."""
    detail = [
        {
            "loc": [_short(part) for part in e.get("loc", ())][:16],
            "msg": _short(str(e.get("msg", ""))),
            "type": _short(str(e.get("type", ""))),
        }
        for e in errors
    ]
    return JSONResponse({"detail": detail, "total": total}, status_code=422)


class HeadAsGet:
    """ASGI middleware: ``HEAD`` is answered like ``GET``, headers and status, without the body.

    Load balancers and uptime checks probe with HEAD; FastAPI routes declared with ``get`` answer it 405.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headless(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headless)


VALIDATION_SLICE: Final = 500  # spans validated between two yields to the event loop


class _BoundedValidationError(RequestValidationError):
    """A RequestValidationError that lists some errors and knows how many there were in all."""

    def __init__(self, errors: Sequence[Any], total: int) -> None:
        super().__init__(errors)
        self.total = total


def _unreadable(why: str) -> _BoundedValidationError:
    return _BoundedValidationError([{"loc": ("body",), "msg": why, "type": "json_invalid"}], 1)


_SPAN_LIST: Final = TypeAdapter(list[BatchSpanIn])


async def read_batch(request: Request, max_spans: int) -> SpanBatch:
    """POST /spans' body as a SpanBatch; 413 past ``max_spans``, a bounded 422 when invalid.

    Parsing and validating hold the GIL, so a worker thread would not spare the event loop: the JSON
    is parsed at once (about 10 ms a MiB) and the batch's size checked before any validation, then the
    spans are validated ``VALIDATION_SLICE`` at a time with a yield to the loop in between, so a
    megabyte of invalid spans never holds up /healthz. At most MAX_VALIDATION_ERRORS are kept.
    """
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise _unreadable("the body must be application/json")
    try:
        body = await request.body()
    except ClientDisconnect:  # closed mid-body (by the client, or by the body deadline): nobody to answer
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also not UTF-8, a 5,000-digit integer, deep nesting
        raise _unreadable(f"the body is not readable JSON: {type(exc).__name__}") from None
    spans = data.get("spans") if isinstance(data, dict) else None
    if not isinstance(spans, list):
        try:
            return SpanBatch.model_validate(data)  # the shape is wrong: its errors are few and cheap
        except ValidationError as exc:
            raise _bounded(exc) from None
    if len(spans) > max_spans:
        raise HTTPException(413, f"{len(spans)} spans in one batch; the limit is {max_spans}")
    errors: list[Any] = []
    total = 0
    try:
        SpanBatch.model_validate({**data, "spans": []})  # extra keys next to "spans"
    except ValidationError as exc:
        total += exc.error_count()
        errors += exc.errors(include_url=False, include_input=False, include_context=False)[:MAX_VALIDATION_ERRORS]
    valid: list[BatchSpanIn] = []
    for start in range(0, len(spans), VALIDATION_SLICE):
        if start:
            await asyncio.sleep(0)
        try:
            valid += _SPAN_LIST.validate_python(spans[start : start + VALIDATION_SLICE])
        except ValidationError as exc:
            total += exc.error_count()
            if len(errors) < MAX_VALIDATION_ERRORS:
                for e in exc.errors(include_url=False, include_input=False, include_context=False):
                    errors.append({**e, "loc": ("spans", start + int(e["loc"][0]), *e["loc"][1:])})
    if total:
        first = [{**e, "loc": ("body", *e["loc"])} for e in errors[:MAX_VALIDATION_ERRORS]]
        raise _BoundedValidationError(first, total)
    return SpanBatch.model_construct(spans=valid)


def _bounded(exc: ValidationError) -> _BoundedValidationError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)[:MAX_VALIDATION_ERRORS]
    return _BoundedValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], exc.error_count())


# --- the app ------------------------------------------------------------------------------------------
def create_app(
    settings: Settings | None = None,
    collector: MetricsCollector | None = None,
    *,
    background: Sequence[BackgroundHook] = (),
) -> FastAPI:
    """The ASGI app serving ``collector``; None builds one from ``settings`` (``build_collector``).

    A collector passed in is served as configured (its trace monitor, heartbeats and SLOs); the app
    flushes its trace store on shutdown but leaves closing it to the caller. ``background`` hooks
    start once the app is up and are cancelled, then awaited, on shutdown, before the store is flushed.
    """
    settings = settings or Settings()
    owned: tuple[Any, ...] = ()
    if collector is None:
        collector, owned = build_collector(settings)
    service = Service(settings, collector, owned)
    traces = collector.traces
    heartbeats = collector.heartbeats
    _ = collector.slos  # built now, so the SLO families are on the first scrape
    # Spans the store could not take are counted here (by TraceMonitor.on_dropped); a write that saw
    # this count move answers 503 rather than claim its spans landed. Retrying is safe: a repeated
    # span only widens that agent's span.
    dropped = collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name)
    dropped_spans = dropped.labels(SPAN_METRIC, "store_unavailable")
    dropped_beats = {
        reason: dropped.labels(HEARTBEAT_METRIC, reason) for reason in ("cardinality", "store_unavailable")
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_run_hook(hook, service)) for hook in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(_close, service)

    app = FastAPI(
        title="ark-obs",
        version=__version__,
        summary="Observability of the ARK pipeline: metrics, SLOs, trace continuity and heartbeats.",
        lifespan=lifespan,
        docs_url=None,  # docs_ui serves it without a CDN
        redoc_url=None,  # ReDoc is CDN-only
    )
    docs_ui.mount(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    app.state.service = service
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The schema, with this app's batch limit (a setting, so not in the static model)."""
        if app.openapi_schema is None:
            schema = generate_openapi()
            # POST /spans reads its body itself (see read_batch), so its model is added here
            _, defs = models_json_schema([(SpanBatch, "validation")], ref_template="#/components/schemas/{model}")
            schema["components"]["schemas"].update(defs["$defs"])
            schema["components"]["schemas"]["SpanBatch"]["properties"]["spans"]["maxItems"] = settings.max_batch_spans
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    write_guard = _write_guard(settings.token)
    auth_responses: dict[int | str, dict[str, Any]] = (
        {401: {"model": ErrorOut, "description": "Missing or wrong bearer token."}} if settings.token else {}
    )
    write_responses: dict[int | str, dict[str, Any]] = {
        **auth_responses,
        413: {"model": ErrorOut, "description": "The body or the batch is too large."},
        503: {
            "model": ErrorOut,
            "description": "The trace store is unavailable or dropped spans: retry (a repeated span is harmless).",
        },
    }

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back, which may be most of a 1 MiB body; a body of
        # half a million bad spans would make a 70 MB answer. The first MAX_VALIDATION_ERRORS, each cut
        # short, and how many there were: the answer stays a few KiB whatever the input.
        all_errors = exc.errors()
        return validation_response(all_errors[:MAX_VALIDATION_ERRORS], getattr(exc, "total", len(all_errors)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body json.loads cannot take (not UTF-8, an integer of 5,000 digits, nesting
        # deeper than the recursion limit) with a bare 400; it gets the documented 422 instead
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR and exc.__cause__ is not None:
            why = f"the body is not readable JSON: {type(exc.__cause__).__name__}"
            return validation_response([{"loc": ("body",), "msg": why, "type": "json_invalid"}], 1)
        return await http_exception_handler(request, exc)

    # --- scrape -------------------------------------------------------------------------------------
    @app.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus exposition",
        responses={
            200: {
                "description": "Text format 0.0.4, or OpenMetrics 1.0.0 (with exemplars) when Accept asks.",
                "content": {CONTENT_TYPE_PLAIN_0_0_4: {}, OPENMETRICS_CONTENT_TYPE: {}},
            }
        },
    )
    async def metrics(
        name: Annotated[
            list[Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]],
            Query(
                alias="name[]",
                max_length=MAX_NAME_FILTERS,
                description="Only these families (a family name) or samples (a sample name, e.g. x_bucket).",
            ),
        ] = [],  # noqa: B006 - FastAPI copies query defaults
        accept: Annotated[str | None, Header()] = None,
        accept_encoding: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Every metric, SLO and trace family; ``name[]`` keeps only the named families."""
        om = wants_openmetrics(accept)
        headers = {"Vary": "Accept, Accept-Encoding"}
        level = GZIP_LEVEL if accepts_gzip(accept_encoding) else None
        # in multiprocess mode building the registry reads the files: off the event loop too
        body = await run_in_threadpool(lambda: render_exposition(collector.exposition_registry(), om, name, level))
        if level is not None:
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=OPENMETRICS_CONTENT_TYPE if om else CONTENT_TYPE_PLAIN_0_0_4, headers=headers)

    @app.get("/metrics/json", response_model=MetricsJson, summary="Every metric as JSON")
    async def metrics_json(
        # a default rather than Annotated: the bound is this app's retention, a local the deferred
        # annotations could not see
        window_seconds: float | None = Query(
            None,
            gt=0,
            le=settings.retention_seconds,
            description="Window of the histogram stats (s); default and maximum: the retention.",
        ),
    ) -> MetricsJson:
        """Every family with its samples, and each histogram's count, sum, avg, p50/p95/p99, min, max."""

        def build() -> MetricsJson:
            stats = {
                m.spec.name: collector.get_histogram_stats(m.spec.name, window_seconds=window_seconds)
                for m in collector.registry
                if m.spec.kind is Kind.HISTOGRAM
            }
            return MetricsJson(families=families_json(collector.exposition_registry()), histograms=stats)

        return await run_in_threadpool(build)

    # --- health -------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        """The process is alive."""
        return Health()

    def readiness_checks() -> list[Check]:
        checks = []
        try:
            families = sum(1 for _ in collector.exposition_registry().collect())
            checks.append(Check(name="registry", ok=True, detail=f"{families} families"))
        except Exception as exc:
            checks.append(Check(name="registry", ok=False, detail=f"collect failed: {exc!r}"))
        health = traces.check()
        checks.append(
            Check(name="trace_store", ok=health.healthy, detail=f"{health.backend}: {health.detail}".rstrip(": "))
        )
        return checks

    @app.get(
        "/readyz",
        response_model=Readiness,
        summary="Readiness",
        responses={503: {"model": Readiness, "description": "A check failed; `failing` names it."}},
    )
    async def readyz(response: Response) -> Readiness:
        """200 when the registry collects and the trace store answers; 503 naming the failing check."""
        checks = await run_in_threadpool(readiness_checks)
        failing = [c.name for c in checks if not c.ok]
        if failing:
            response.status_code = 503
        return Readiness(status="not_ready" if failing else "ready", failing=failing, checks=checks)

    # --- SLOs -----------------------------------------------------------------------------------------
    @app.get("/slos", response_model=SloReport, summary="SLO compliance")
    async def slos() -> SloReport:
        """Every SLO evaluated now (the seed's check_slos() shape: slos, total, met, violated, violations)."""
        return await run_in_threadpool(collector.check_slos)

    # --- traces ---------------------------------------------------------------------------------------
    @app.get(
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
            raise HTTPException(404, f"unknown trace {trace_id} (never seen, evicted, or expired)")
        return TraceReportOut.of(report)

    @app.get("/traces", response_model=TraceList, summary="Recent stuck traces")
    async def trace_list(
        status: Annotated[Literal["incomplete"], Query(description="Which traces.")] = "incomplete",
        limit: Annotated[int, Query(ge=1, le=MAX_TRACE_LIST, description="Most traces returned.")] = 20,
    ) -> TraceList:
        """The most recent traces that expired incomplete, newest first, with their missing agents."""
        reports = await run_in_threadpool(traces.recent_incomplete, limit)
        items = [TraceReportOut.of(r) for r in reports[:limit]]
        return TraceList(status=status, count=len(items), traces=items)

    # --- ingest -------------------------------------------------------------------------------------
    def store(spans: list[tuple[str, str, float | None, float | None, bool]]) -> None:
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
        errors = []
        for i, span in enumerate(spans):
            if span.at is None and span.duration_ms is None:
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

    async def store_or_503(spans: list[tuple[str, str, float | None, float | None, bool]]) -> Accepted:
        try:
            await run_in_threadpool(store, spans)
        except StoreUnavailable as exc:
            raise _unavailable(str(exc) or "no answer") from exc
        return Accepted(accepted=len(spans))

    @app.post(
        "/traces/{trace_id}/spans",
        response_model=Accepted,
        summary="Record one span",
        dependencies=write_guard,
        responses=write_responses,
    )
    async def post_span(
        trace_id: Annotated[TraceId, Path(description="UUID or W3C trace-id.")],
        span: SpanIn,
    ) -> Accepted:
        """Record that ``span.agent`` processed the trace."""
        refuse_implausible_times([span], ("body",))
        return await store_or_503([(trace_id, span.agent, span.at, span.duration_ms, span.ok)])

    @app.post(
        "/traceparent/spans",
        response_model=Accepted,
        summary="Record one span of the traceparent's trace",
        dependencies=write_guard,
        responses=write_responses,
    )
    async def post_traced_span(
        traceparent: Annotated[
            TraceParentTraceId, Header(description="W3C traceparent: the trace the span belongs to.")
        ],
        span: SpanIn,
    ) -> Accepted:
        """Record that ``span.agent`` processed the trace named by the ``traceparent`` header.

        For agents that propagate W3C trace context: forward the header you received, no trace id needed.
        """
        refuse_implausible_times([span], ("body",))
        return await store_or_503([(traceparent, span.agent, span.at, span.duration_ms, span.ok)])

    @app.post(
        "/spans",
        response_model=Accepted,
        summary="Record a batch of spans",
        dependencies=write_guard,
        responses={
            **write_responses,
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
        refuse_implausible_times(batch.spans, ("body", "spans"))
        return await store_or_503([(s.trace_id, s.agent, s.at, s.duration_ms, s.ok) for s in batch.spans])

    @app.post(
        "/heartbeats/{agent}",
        response_model=HeartbeatOut,
        summary="Record a heartbeat",
        dependencies=write_guard,
        responses={
            **auth_responses,
            503: {"model": ErrorOut, "description": "The beat was not recorded: store down or agent limit."},
        },
    )
    async def post_heartbeat(
        agent: Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="Agent name.")],
    ) -> HeartbeatOut:
        """Record that ``agent`` is alive (silent for 2 intervals: reported down).

        200: the beat is taken (a Redis store writes it within its flush interval). 503: it was not
        (the store is down, or the monitor already tracks its maximum number of agents).
        """
        health = heartbeats.check()
        if not health.healthy:
            raise _unavailable(health.detail or health.backend)
        before = {reason: child.get() for reason, child in dropped_beats.items()}
        heartbeats.beat(agent)
        refused = [reason for reason, child in dropped_beats.items() if child.get() != before[reason]]
        if refused:
            raise HTTPException(503, f"heartbeat not recorded ({refused[0]})", headers={"Retry-After": "1"})
        return HeartbeatOut(agent=agent, at=collector.clock())

    @app.get("/state/anomalies", response_model=AnomalyList, summary="Recent state revision anomalies")
    async def state_anomalies(
        limit: Annotated[int | None, Query(ge=1, le=100_000, description="Most anomalies to list.")] = None,
    ) -> AnomalyList:
        """The most recent state revisions that broke their key's history (gap, regression, duplicate), newest first."""
        return collector.revisions.listing(limit)

    # the live status page at / and its data at /status.json: no Grafana needed to see the pipeline
    app.include_router(status_page.router(collector))
    app.include_router(canary.router(canary.CanaryConfig()))
    # OTLP/HTTP: OpenTelemetry exporters feed continuity; same token and body limit as the other writes
    app.include_router(
        otlp.router(
            traces,
            max_spans=settings.max_batch_spans,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            resource_attribute=settings.otlp_agent_attribute,
            span_attribute=settings.otlp_span_agent_attribute,
            dependencies=write_guard,
            responses=auth_responses,
        )
    )
    return app


def _expected_agents(expected: str | None) -> tuple[str, ...] | None:
    """``"Kyle, Joey"`` -> ("Kyle", "Joey"); None keeps the pipeline (EXPECTED_PATTERN has vetted the names)."""
    if expected is None:
        return None
    return tuple(a.strip() for a in expected.split(","))
