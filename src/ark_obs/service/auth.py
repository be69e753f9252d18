"""Who may write: the bearer-token guard of the ingest routes and what it adds to their schema."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ark_obs.service.api import ErrorOut

__all__ = ["auth_responses", "unavailable", "write_guard", "write_responses"]


_bearer = HTTPBearer(auto_error=False, scheme_name="ingestToken", description="ARK_OBS_INGEST_TOKEN")


def write_guard(token: str | None) -> list[Any]:
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


def unavailable(detail: str) -> HTTPException:
    return HTTPException(503, f"trace store unavailable ({detail}); retry", headers={"Retry-After": "1"})


def auth_responses(token: str | None) -> dict[int | str, dict[str, Any]]:
    """The 401 a write route documents when a token is set (none otherwise)."""
    return {401: {"model": ErrorOut, "description": "Missing or wrong bearer token."}} if token else {}


def write_responses(token: str | None) -> dict[int | str, dict[str, Any]]:
    """What every span-writing route documents besides its 200."""
    return {
        **auth_responses(token),
        413: {"model": ErrorOut, "description": "The body or the batch is too large."},
        503: {
            "model": ErrorOut,
            "description": "The trace store is unavailable or dropped spans: retry (a repeated span is harmless).",
        },
    }
