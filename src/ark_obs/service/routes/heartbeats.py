"""Heartbeat ingest: ``POST /heartbeats/{agent}``, an agent saying it is alive."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request

from ark_obs import catalog
from ark_obs.service.api import ErrorOut, HeartbeatOut
from ark_obs.service.auth import auth_responses, require_agents, unavailable, write_guard
from ark_obs.service.wiring import Service
from ark_obs.settings import NAME_PATTERN
from ark_obs.traces.heartbeats import HEARTBEAT_METRIC

__all__ = ["router"]


def router(service: Service) -> APIRouter:
    """The heartbeat route over ``service.collector.heartbeats``, guarded by the ingest token."""
    collector = service.collector
    heartbeats = collector.heartbeats
    dropped = collector.metric(catalog.ARK_OBS_DROPPED_TOTAL.name)
    # a beat the monitor refused is counted under one of these reasons: the answer is then 503, never 200
    dropped_beats = {
        reason: dropped.labels(HEARTBEAT_METRIC, reason) for reason in ("cardinality", "store_unavailable")
    }
    settings = service.settings
    api = APIRouter(dependencies=write_guard(settings.token, settings.bound_tokens))

    @api.post(
        "/heartbeats/{agent}",
        response_model=HeartbeatOut,
        summary="Record a heartbeat",
        responses={
            **auth_responses(settings.token, settings.bound_tokens),
            503: {"model": ErrorOut, "description": "The beat was not recorded: store down or agent limit."},
        },
    )
    async def post_heartbeat(
        request: Request,
        agent: Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="Agent name.")],
    ) -> HeartbeatOut:
        """Record that ``agent`` is alive (silent for 2 intervals: reported down).

        200: the beat is taken (a Redis store writes it within its flush interval). 503: it was not
        (the store is down, or the monitor already tracks its maximum number of agents).
        """
        require_agents(request, (agent,))
        health = heartbeats.check()
        if not health.healthy:
            raise unavailable(health.detail or health.backend)
        before = {reason: child.get() for reason, child in dropped_beats.items()}
        heartbeats.beat(agent)
        refused = [reason for reason, child in dropped_beats.items() if child.get() != before[reason]]
        if refused:
            raise HTTPException(503, f"heartbeat not recorded ({refused[0]})", headers={"Retry-After": "1"})
        return HeartbeatOut(agent=agent, at=collector.clock())

    return api
