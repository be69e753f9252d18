"""Health routes: ``/healthz`` (the process is alive) and ``/readyz`` (registry and trace store answer)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from ark_obs.service.api import Check, Health, Readiness
from ark_obs.service.wiring import Service

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The health routes over ``service.collector``."""
    collector = service.collector
    traces = collector.traces
    api = APIRouter()

    @api.get("/healthz", response_model=Health, summary="Liveness")
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

    @api.get(
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

    return api
