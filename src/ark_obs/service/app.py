"""The app factory: one FastAPI app composed of the routers in ``ark_obs.service.routes``.

>>> app = create_app(Settings())          # what ``ark-obs serve`` runs under uvicorn

Reads (``/metrics``, ``/metrics/json``, ``/slos``, ``/traces``, ``/healthz``, ``/readyz``) are open;
writes (``POST /spans``, ``/traces/{id}/spans``, ``/traceparent/spans``, ``/heartbeats/{agent}``) need
``Authorization: Bearer <ARK_OBS_INGEST_TOKEN>`` when a token is set. Anything that may take a while (an
exposition, an SLO evaluation, a store call) runs in a worker thread, so one large scrape never stalls
the other requests. Request and response models live in ``ark_obs.service.api``, the exposition and its
negotiation in ``ark_obs.service.exposition``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ark_obs import __version__, canary, catalog
from ark_obs.metrics import MetricsCollector
from ark_obs.service import docs_ui, runbook, status_page
from ark_obs.service.api import SpanBatch
from ark_obs.service.middleware import REFUSALS, BodyLimit, HeadAsGet, RefusalCounter
from ark_obs.service.routes import health, heartbeats, ingest, otlp, scrape, slos, state, traces
from ark_obs.service.validation import BODY_PARSE_ERROR, MAX_VALIDATION_ERRORS, validation_response
from ark_obs.service.wiring import BackgroundHook, Service, build_collector, close_service, run_hook
from ark_obs.settings import Settings

__all__ = ["create_app"]


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
    _ = collector.slos  # built now, so the SLO families are on the first scrape

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run_hook(hook, service)) for hook in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(close_service, service)

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
    refused = collector.metric(catalog.ARK_OBS_REQUESTS_REFUSED_TOTAL.name)
    children = {reason: refused.labels(reason) for reason in REFUSALS.values()}  # at 0 from the first scrape
    app.add_middleware(RefusalCounter, count=lambda reason: children[reason].inc())
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

    for area in (scrape, health, slos, traces, ingest, heartbeats, state):
        app.include_router(area.router(service))
    # the live status page at / and its data at /status.json: no Grafana needed to see the pipeline
    app.include_router(status_page.router(collector, settings))
    app.include_router(runbook.router())
    app.include_router(canary.router(canary.CanaryConfig()))
    # OTLP/HTTP: OpenTelemetry exporters feed continuity; same token and body limit as the other writes
    app.include_router(otlp.router(service))
    return app
