"""Where the loop's spans and heartbeats go: this process' collector, or a running ark-obs over HTTP.

One protocol and two implementations, so the agents and the loop never know which one they feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any, Final, Protocol

from ark_obs import catalog
from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic.config import PIPELINE

__all__ = ["HTTP_FLUSH_SECONDS", "HttpTarget", "InProcessTarget", "Target"]

MAX_HTTP_BATCH: Final = 5_000
HTTP_FLUSH_SECONDS: Final = 0.1


class Target(Protocol):
    """Where the loop sends spans and heartbeats, and asks about traces and agents."""

    name: str

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Record one span (never blocks)."""

    async def heartbeat(self, agent: str) -> None:
        """Send one heartbeat."""

    async def agent_up(self, agent: str) -> bool | None:
        """Whether the monitor reports ``agent`` up (None: unknown)."""

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """The pipeline agents the trace store has no span from (None: could not ask)."""

    async def aclose(self) -> None:
        """Flush and release."""


class InProcessTarget:
    """Records on a collector in this process."""

    name = "in-process"

    def __init__(self, collector: MetricsCollector) -> None:
        self.collector = collector
        self._record = collector.traces.record_span
        _ = collector.heartbeats  # created now, not on the first beat of a timed run

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Record the span in the collector's trace store."""
        self._record(trace_id, agent, at=at, duration_ms=duration_ms, ok=ok)

    async def heartbeat(self, agent: str) -> None:
        """Record the heartbeat on the collector's monitor."""
        self.collector.record_heartbeat(agent)

    async def agent_up(self, agent: str) -> bool | None:
        """The heartbeat monitor's verdict now."""
        return self.collector.heartbeats.is_up(agent)

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """Continuity from the trace store, against the monitor's pipeline."""
        report = self.collector.validate_trace_continuity(trace_id)
        if str(report.status) == "unavailable":
            return None
        return tuple(report.missing_agents)

    async def aclose(self) -> None:
        """Nothing to release (the collector belongs to the caller)."""


class HttpTarget:
    """Sends spans in batches and heartbeats to a running ark-obs; asks it about traces and agents."""

    def __init__(self, base_url: str, token: str | None, errors: Counter[str]) -> None:
        import httpx

        self.name = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=self.name, headers=headers, timeout=5.0)
        self._buffer: list[dict[str, Any]] = []
        self._errors = errors
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self.flushes_started = 0
        self.flushes_done = 0  # the number of the last flush that finished: spans buffered before it started are out

    def span(self, trace_id: str, agent: str, at: float, duration_ms: float, ok: bool) -> None:
        """Buffer the span; a background task posts batches every 0.1 s (sooner when the buffer fills)."""
        self._buffer.append({"trace_id": trace_id, "agent": agent, "at": at, "duration_ms": duration_ms, "ok": ok})
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
        if len(self._buffer) >= MAX_HTTP_BATCH:
            self._wake.set()

    async def _flush_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), HTTP_FLUSH_SECONDS)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Post every buffered span now."""
        async with self._lock:
            self.flushes_started += 1
            number = self.flushes_started
            # only what is buffered now: spans buffered meanwhile wait for the next flush, so a flush
            # always ends and "flush n is done" means "everything buffered before it started is posted"
            spans, self._buffer = self._buffer, []
            for i in range(0, len(spans), MAX_HTTP_BATCH):
                batch = spans[i : i + MAX_HTTP_BATCH]
                await self._post("/spans", {"spans": batch}, "POST /spans")
            self.flushes_done = number

    async def _post(self, path: str, body: dict[str, Any] | None, what: str) -> None:
        import httpx

        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            self._errors[f"{what}: {type(exc).__name__}"] += 1
            return
        if response.status_code >= 300:
            self._errors[f"{what}: HTTP {response.status_code}"] += 1

    async def heartbeat(self, agent: str) -> None:
        """POST /heartbeats/{agent}."""
        await self._post(f"/heartbeats/{agent}", None, "POST /heartbeats")

    async def agent_up(self, agent: str) -> bool | None:
        """``ark_agent_up{agent}`` from the service's ``/metrics`` (the service has no heartbeat query)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = await self._client.get("/metrics", params={"name[]": catalog.ARK_AGENT_UP.name})
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == catalog.ARK_AGENT_UP.name and sample.labels.get("agent") == agent:
                    return sample.value == 1.0
        return None

    async def missing_agents(self, trace_id: str) -> tuple[str, ...] | None:
        """GET /traces/{id}: ``missing_agents`` against the service's pipeline (all of ours if it is unknown)."""
        import httpx

        try:
            response = await self._client.get(f"/traces/{trace_id}")
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return PIPELINE
        if response.status_code != 200:
            return None
        return tuple(response.json().get("missing_agents", ()))

    async def aclose(self) -> None:
        """Post what is buffered and close the connection pool."""
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher  # ends after its current flush: a batch is never cut off mid-post
        await self.flush()
        await self._client.aclose()
