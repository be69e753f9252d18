"""Who may write, and for which agents: the bearer-token guard of the ingest routes.

Two kinds of token, either or both:

- ``ARK_OBS_INGEST_TOKEN``, one shared token: its holder may write for any agent;
- ``ARK_OBS_INGEST_TOKENS``, tokens bound to agent names: a write (a span, an OTLP span's agent, a
  heartbeat) for an agent its token is not bound to is refused as a whole with 403, and counted
  (``ark_obs_requests_refused_total{reason="forbidden"}``).

With neither, writes are open and the schema declares no security.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Iterable, Mapping
from typing import Annotated, Any, Final

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ark_obs.service.api import ErrorOut

__all__ = [
    "AgentGuard",
    "allowed_agents",
    "auth_responses",
    "forbidden",
    "forbidden_agents",
    "require_agents",
    "unavailable",
    "write_guard",
    "write_responses",
]


_bearer = HTTPBearer(
    auto_error=False, scheme_name="ingestToken", description="ARK_OBS_INGEST_TOKEN or one of ARK_OBS_INGEST_TOKENS"
)
# request.state attribute: the agents the request's token may write for (None: any)
_ALLOWED: Final = "ark_obs_allowed_agents"

AgentGuard = frozenset[str] | None  # the agents a request may write for; None: any


def write_guard(token: str | None, bound: Mapping[str, AgentGuard] | None = None) -> list[Any]:
    """Dependencies of the write routes: a constant-time bearer check when a token is set, else none.

    ``token`` may write for any agent; each token of ``bound`` for its agents (None: any). The agents
    the request's token allows are left on the request for ``allowed_agents``. Without any token the
    schema declares no security, so it never promises a check the app does not make.
    """
    if token is None and not bound:
        return []
    candidates: list[tuple[bytes, AgentGuard]] = [(token.encode(), None)] if token is not None else []
    candidates += [(t.encode(), agents) for t, agents in (bound or {}).items()]

    async def require_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        matched = False
        allowed: AgentGuard = None
        for expected, agents in candidates:  # every token compared, in constant time each
            if hmac.compare_digest(given, expected):
                matched, allowed = True, agents
        if not matched:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        setattr(request.state, _ALLOWED, allowed)

    return [Depends(require_token)]


def allowed_agents(request: Request) -> AgentGuard:
    """The agents this request's token may write for; None: any (the shared token, or open writes)."""
    allowed: AgentGuard = getattr(request.state, _ALLOWED, None)
    return allowed


def forbidden_agents(allowed: AgentGuard, agents: Iterable[str]) -> list[str]:
    """The agents of ``agents`` outside ``allowed`` (sorted, distinct); empty when all may be written."""
    if allowed is None:
        return []
    return sorted(set(agents) - allowed)


def require_agents(request: Request, agents: Collection[str]) -> None:
    """403 when the request's token may not write for one of ``agents``."""
    refused = forbidden_agents(allowed_agents(request), agents)
    if refused:
        raise forbidden(refused)


def forbidden(agents: list[str]) -> HTTPException:
    shown = ", ".join(agents[:5]) + (f" and {len(agents) - 5} more" if len(agents) > 5 else "")
    return HTTPException(403, f"this token may not write for agent(s) {shown} (ARK_OBS_INGEST_TOKENS)")


def unavailable(detail: str) -> HTTPException:
    return HTTPException(503, f"trace store unavailable ({detail}); retry", headers={"Retry-After": "1"})


def auth_responses(token: str | None, bound: Mapping[str, AgentGuard] | None = None) -> dict[int | str, dict[str, Any]]:
    """The 401 (and with bound tokens the 403) a write route documents when a token is set (none otherwise)."""
    out: dict[int | str, dict[str, Any]] = {}
    if token or bound:
        out[401] = {"model": ErrorOut, "description": "Missing or wrong bearer token."}
    if bound:
        out[403] = {"model": ErrorOut, "description": "The token may not write for this agent (ARK_OBS_INGEST_TOKENS)."}
    return out


def write_responses(
    token: str | None, bound: Mapping[str, AgentGuard] | None = None
) -> dict[int | str, dict[str, Any]]:
    """What every span-writing route documents besides its 200."""
    return {
        **auth_responses(token, bound),
        413: {"model": ErrorOut, "description": "The body or the batch is too large."},
        503: {
            "model": ErrorOut,
            "description": "The trace store is unavailable or dropped spans: retry (a repeated span is harmless).",
        },
    }
