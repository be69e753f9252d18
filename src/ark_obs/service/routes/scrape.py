"""Scrape routes: ``/metrics`` (Prometheus text or OpenMetrics, gzip, ``name[]``) and ``/metrics/json``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ark_obs.catalog import Kind
from ark_obs.service.api import MAX_NAME_FILTERS, METRIC_NAME_PATTERN, MetricsJson
from ark_obs.service.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GZIP_LEVEL,
    OPENMETRICS_CONTENT_TYPE,
    accepts_gzip,
    families_json,
    render_exposition,
    wants_openmetrics,
)
from ark_obs.service.wiring import Service

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The scrape routes over ``service.collector``."""
    collector = service.collector
    settings = service.settings
    api = APIRouter()

    @api.get(
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

    @api.get("/metrics/json", response_model=MetricsJson, summary="Every metric as JSON")
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

    return api
