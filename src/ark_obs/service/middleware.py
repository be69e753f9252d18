"""ASGI middleware of the service: the request body limit, HEAD answered like GET, refusals counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REFUSALS", "BodyLimit", "BodyTooLarge", "HeadAsGet", "RefusalCounter"]


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


# the statuses that mean "refused by a limit or a rule", and the reason label each is counted under
REFUSALS: Final = {
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    422: "invalid",
    429: "busy",
    503: "unavailable",
}


class RefusalCounter:
    """ASGI middleware: every answer in ``REFUSALS`` is counted (``ark_obs_requests_refused_total{reason}``).

    The outermost layer, so refusals made by the other middleware (the body limit's 413) count too.
    """

    def __init__(self, app: ASGIApp, count: Callable[[str], None]) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        count = self.count

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                reason = REFUSALS.get(message["status"])
                if reason is not None:
                    count(reason)
            await send(message)

        await self.app(scope, receive, watch)
