"""``/canary/analysis`` for rollout controllers: Argo Rollouts GETs it, Flagger's webhook POSTs it.

Identical concurrent requests share one analysis, verdicts are reused for ``cache_seconds``, and at most
``max_concurrent_analyses`` distinct analyses run at once (429 beyond); all of them share one Prometheus client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Final

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ark_obs.canary.analysis import analyze
from ark_obs.canary.config import SELECTOR_PATTERN, CanaryConfig, parse_selector
from ark_obs.canary.prometheus import PrometheusClient
from ark_obs.canary.results import CanaryAnalysis, Verdict

__all__ = ["WEBHOOK_STATUS", "FlaggerMetadata", "FlaggerWebhook", "InconclusiveStatus", "router"]

# Flagger advances on 200-202 and counts anything else as a failed check. Both refusals are 4xx: an
# inconclusive verdict is an answer, not a server fault (a 5xx would read as ark-obs failing).
WEBHOOK_STATUS: Final[Mapping[Verdict, int]] = {Verdict.PASS: 200, Verdict.FAIL: 412, Verdict.INCONCLUSIVE: 409}


SelectorText = Annotated[str, Field(pattern=SELECTOR_PATTERN, max_length=256, examples=["canary", 'track="canary"'])]


class FlaggerMetadata(BaseModel):
    """The webhook's ``metadata`` map: the selectors ark-obs reads, and whatever else Flagger was given."""

    model_config = ConfigDict(extra="allow")

    canary: SelectorText | None = None
    baseline: SelectorText | None = None


class FlaggerWebhook(BaseModel):
    """What Flagger POSTs to a webhook; ``metadata.canary`` / ``metadata.baseline`` may carry selectors."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    phase: str | None = None
    metadata: FlaggerMetadata = Field(default_factory=FlaggerMetadata)


class _Cache:
    """Recent verdicts by selector pair, and in-flight analyses shared by concurrent callers.

    The endpoints are open reads and each analysis runs about a dozen Prometheus queries: without
    this, a burst of requests would be a burst of queries on Prometheus. At most ``max_running``
    distinct analyses run at once; a request for one more raises ``TooManyAnalyses`` (429).
    """

    MAX_ENTRIES: Final = 32

    def __init__(self, ttl: float, max_running: int = 4) -> None:
        self.ttl = ttl
        self.max_running = max_running
        self._done: dict[tuple[str, str], tuple[float, CanaryAnalysis]] = {}
        self._running: dict[tuple[str, str], asyncio.Task[CanaryAnalysis]] = {}

    async def get(self, key: tuple[str, str], compute: Callable[[], Awaitable[CanaryAnalysis]]) -> CanaryAnalysis:
        now = time.monotonic()
        hit = self._done.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        task = self._running.get(key)
        if task is None:
            if len(self._running) >= self.max_running:
                raise StarletteHTTPException(
                    429,
                    f"{len(self._running)} canary analyses are running (the limit, "
                    "ARK_OBS_CANARY_MAX_CONCURRENT_ANALYSES); retry shortly",
                    headers={"Retry-After": "1"},
                )

            async def run() -> CanaryAnalysis:
                return await compute()

            task = asyncio.ensure_future(run())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        result = await asyncio.shield(task)
        if self.ttl > 0:
            self._done[key] = (time.monotonic(), result)
            while len(self._done) > self.MAX_ENTRIES:
                self._done.pop(next(iter(self._done)))
        return result


class InconclusiveStatus(IntEnum):
    """The status code POST /canary/analysis gives an inconclusive verdict."""

    HALT = 409
    LET_THROUGH = 200


CanaryParam = Annotated[
    str | None,
    Query(
        max_length=256,
        pattern=SELECTOR_PATTERN,
        description="Canary selector: a track value or one matcher on track (default: configured).",
    ),
]
BaselineParam = Annotated[
    str | None,
    Query(max_length=256, pattern=SELECTOR_PATTERN, description="Baseline selector (default: configured)."),
]


class _SharedPathRoute(APIRoute):
    """An APIRoute whose 405 names every method its path serves (``path_methods``, set per router).

    Starlette answers a wrong method with the ``Allow`` of the first route matching the path, so
    ``OPTIONS /canary/analysis`` would say ``Allow: GET`` although POST is served too.
    """

    path_methods: ClassVar[set[str]] = set()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allowed = ", ".join(sorted(self.path_methods | self.methods))
            raise StarletteHTTPException(405, headers={"Allow": allowed})
        await super().handle(scope, receive, send)


def router(config: CanaryConfig | None = None) -> APIRouter:
    """``GET /canary/analysis`` (Argo Rollouts ``web`` provider) and ``POST`` (Flagger webhook).

    ``config`` defaults to ``CanaryConfig()``: the ``ARK_OBS_CANARY_*`` environment variables.
    """
    cfg = config if config is not None else CanaryConfig()
    cache = _Cache(cfg.cache_seconds, cfg.max_concurrent_analyses)
    # one client (and connection pool) for every analysis, per event loop: its connections belong to one
    shared: dict[asyncio.AbstractEventLoop, PrometheusClient] = {}

    def client() -> PrometheusClient:
        loop = asyncio.get_running_loop()
        if loop not in shared:
            shared.clear()  # a previous loop's client: its loop is gone (only tests run several loops)
            shared[loop] = PrometheusClient(cfg.prometheus_url, cfg.timeout_seconds)
        return shared[loop]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for owned in list(shared.values()):
            await owned.__aexit__()
        shared.clear()

    # a class per router: FastAPI may copy routes when the router is included, keeping only their class
    route_class: type[_SharedPathRoute] = type("CanaryRoute", (_SharedPathRoute,), {"path_methods": set()})
    api = APIRouter(tags=["canary"], route_class=route_class, lifespan=lifespan)

    async def verdict(canary: str | None, baseline: str | None) -> CanaryAnalysis:
        # the schema's pattern has admitted only selectors that parse_selector accepts
        c = parse_selector(canary) if canary is not None else cfg.selector
        b = parse_selector(baseline) if baseline is not None else cfg.baseline_selector
        return await cache.get((c, b), lambda: analyze(cfg, canary=c, baseline=b, client=client()))

    @api.get(
        "/canary/analysis",
        response_model=CanaryAnalysis,
        summary="Canary verdict (Argo Rollouts web metric)",
    )
    async def get_analysis(canary: CanaryParam = None, baseline: BaselineParam = None) -> CanaryAnalysis:
        """Always 200 with the verdict in ``verdict``: pass, fail or inconclusive (Argo reads the body)."""
        return await verdict(canary, baseline)

    @api.post(
        "/canary/analysis",
        response_model=CanaryAnalysis,
        summary="Canary verdict (Flagger webhook)",
        responses={
            412: {"model": CanaryAnalysis, "description": "fail: a tripwire or burn rate says roll back."},
            409: {"model": CanaryAnalysis, "description": "inconclusive: no verdict (the reason says why)."},
        },
    )
    async def post_analysis(
        hook: Annotated[FlaggerWebhook | None, Body()] = None,
        canary: CanaryParam = None,
        baseline: BaselineParam = None,
        inconclusive_status: Annotated[
            InconclusiveStatus,
            Query(description="Status of an inconclusive verdict: 409 (default) halts a hook, 200 lets it through."),
        ] = InconclusiveStatus.HALT,
    ) -> JSONResponse:
        """The verdict as a status code: 200 pass, 412 fail, 409 inconclusive; changes nothing.

        Flagger has no "inconclusive": a ``rollout`` hook counts every non-2xx as a failed check (and
        rolls back at ``threshold``), a ``confirm-*`` hook waits for a 200 without counting. So a
        ``rollout`` hook with ``?inconclusive_status=200`` counts only fails, and ``confirm-*`` hooks
        with the default hold the canary while the verdict is inconclusive.
        """
        metadata = hook.metadata if hook is not None else FlaggerMetadata()
        result = await verdict(canary or metadata.canary, baseline or metadata.baseline)
        status = WEBHOOK_STATUS[result.verdict]
        if result.verdict is Verdict.INCONCLUSIVE:
            status = int(inconclusive_status)
        return JSONResponse(result.model_dump(mode="json"), status_code=status)

    route_class.path_methods.update(m for r in api.routes if isinstance(r, APIRoute) for m in r.methods or ())
    return api
