"""State history route: ``/state/anomalies``, the recent revisions that broke their key's history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ark_obs.service.wiring import Service
from ark_obs.traces.revisions import AnomalyList

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The state-anomaly route over ``service.collector.revisions``."""
    collector = service.collector
    api = APIRouter()

    @api.get("/state/anomalies", response_model=AnomalyList, summary="Recent state revision anomalies")
    async def state_anomalies(
        limit: Annotated[int | None, Query(ge=1, le=100_000, description="Most anomalies to list.")] = None,
    ) -> AnomalyList:
        """The most recent state revisions that broke their key's history (gap, regression, duplicate), newest first."""
        return collector.revisions.listing(limit)

    return api
