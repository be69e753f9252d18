"""What the service serves and runs: the collector built from settings, background hooks, shutdown.

``build_collector`` is the one place settings become a trace monitor, heartbeats, SLOs and the state
revision checker; ``Service`` is what a background hook (the synthetic loop) gets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from ark_obs.metrics import MetricsCollector
from ark_obs.settings import Settings
from ark_obs.slo import SloEngine, load_slo_file
from ark_obs.traces import TraceMonitor
from ark_obs.traces.heartbeats import HeartbeatMonitor
from ark_obs.traces.revisions import RevisionChecker, backend_for

__all__ = ["BackgroundHook", "Service", "build_collector", "close_service", "freeze_long_lived_objects", "run_hook"]

log = logging.getLogger("ark_obs.service")


@dataclass(frozen=True, slots=True)
class Service:
    """What a background hook gets: the settings and the collector the app serves."""

    settings: Settings
    collector: MetricsCollector
    # closed on shutdown: the monitors this app built (a collector passed in stays the caller's)
    owned: tuple[Any, ...] = field(default=(), repr=False)


# A long-running coroutine, started once the app is up and cancelled on shutdown (the synthetic loop).
BackgroundHook: TypeAlias = Callable[[Service], Awaitable[None]]


# --- wiring ------------------------------------------------------------------------------------------
def build_collector(settings: Settings) -> tuple[MetricsCollector, tuple[Any, ...]]:
    """A collector configured by ``settings``, and the monitors it owns (to close on shutdown).

    The trace store, pipeline, TTL and capacity, the watched Redis streams and the SLO file all come
    from ``settings``; a bad SLO file raises ``SloConfigError`` listing every mistake.
    """
    collector = MetricsCollector(
        retention_seconds=settings.retention_seconds,
        slice_seconds=settings.slice_seconds,
        max_series=settings.max_series_per_metric,
    )
    traces = TraceMonitor(
        collector,
        store=settings.trace_store,
        pipeline=settings.pipeline,
        ttl_seconds=settings.trace_ttl_seconds,
        max_in_flight=settings.max_in_flight_traces,
        sweep=True,  # the service does the accounting, also for a store shared with agents
        streams=settings.redis_streams,  # read through the store's client: its timeout applies
        store_timeout=settings.store_timeout_seconds,
        clock_skew_seconds=settings.max_clock_skew_seconds,
        max_agents_per_trace=settings.max_agents_per_trace,
        stall_seconds=settings.stall_seconds,
        history_seconds=settings.trace_history_seconds,
    )
    collector.traces = traces
    heartbeats = HeartbeatMonitor(
        collector,
        settings.heartbeat_interval_seconds,
        sweep=True,
        pipeline=settings.pipeline,
        known=settings.known_agents,
        max_agents=settings.max_heartbeat_agents,
        forget_after_seconds=settings.heartbeat_forget_seconds,
        spans_alive_seconds=settings.stall_seconds if settings.spans_as_heartbeats else None,
    )
    collector.heartbeats = heartbeats
    specs = None if settings.slo_file is None else load_slo_file(settings.slo_file, collector.registry)
    collector.slos = SloEngine(collector, specs)
    collector.revisions = RevisionChecker(
        collector.registry,
        backend=backend_for(traces.store, settings.state_revision_max_keys),
        max_keys=settings.state_revision_max_keys,
        recent_max=settings.state_revision_recent_max,
        clock=collector.clock,
    )
    return collector, (heartbeats, traces)


GC_FREEZE_SECONDS: Final = 5.0
GC_FULL_SECONDS: Final = 600.0


async def freeze_long_lived_objects(
    service: Service, every: float = GC_FREEZE_SECONDS, full_every: float = GC_FULL_SECONDS
) -> None:
    """Keep garbage-collector pauses short while a large trace store lives in this process.

    A full collection walks every tracked object, a 100,000-trace store included: 60-200 ms pauses
    every few seconds under ingest load, which stall scrapes (bench/bench_service.py). Every ``every``
    seconds this collects the young generations and freezes what survived (``gc.freeze``): frozen
    objects are still freed by reference counting, just no longer walked. Every ``full_every`` seconds
    it unfreezes and runs one full collection, so cycles among frozen objects are reclaimed too.
    """
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every)
        if time.monotonic() - last_full >= full_every:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()


async def run_hook(hook: BackgroundHook, service: Service) -> None:
    try:
        await hook(service)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background hook %s failed", getattr(hook, "__name__", hook))


def close_service(service: Service) -> None:
    """Flush the trace store (batched spans land), then close what the app built (heartbeats first)."""
    try:
        service.collector.traces.flush()
    except Exception:
        log.exception("flushing the trace store on shutdown failed")
    for owned in service.owned:
        try:
            owned.close()
        except Exception:
            log.exception("closing %r on shutdown failed", owned)
