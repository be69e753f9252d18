"""SLO route: ``/slos``, every SLO evaluated now, in the seed's ``check_slos()`` shape."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ark_obs.service.wiring import Service
from ark_obs.slo import SloReport

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The SLO route over ``service.collector``."""
    collector = service.collector
    api = APIRouter()

    @api.get("/slos", response_model=SloReport, summary="SLO compliance")
    async def slos() -> SloReport:
        """Every SLO evaluated now (the seed's check_slos() shape: slos, total, met, violated, violations)."""
        return await run_in_threadpool(collector.check_slos)

    return api
