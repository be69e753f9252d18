"""Per-call overhead of instrument_agent_method + with_trace_id next to hand-written instrumentation.

Every variant is a method of one agent class doing no work, called in a tight loop (awaited, for the async
ones, inside one running event loop); a variant's overhead is its per-call time minus the bare method's,
best of several interleaved repeats. "Hand-written" is what an agent author would type into the method:
``perf_counter()`` twice, one ``observe()`` and one ``inc()`` on the same cached children; it binds no
trace id. Ours binds one per call: a new one when none is bound ("fresh"), the bound one otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from ark_obs.catalog import LATENCY_BUCKETS_MS, counter, latency_ms
from ark_obs.context import bind_trace_id
from ark_obs.instrumentation import instrument_agent_method, with_trace_id
from ark_obs.metrics import MetricsCollector
from bench._timing import row, sized

CALLS = sized(1_000, 20)
REPEATS = sized(150, 2)
TARGET = 2.0  # ours / hand-written overhead, async path, trace-id binding included
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SIGNAL = {"symbol": "ES", "side": "buy"}


def _agent(collector: MetricsCollector) -> Any:
    """The agent class with one method per variant, all recording on ``collector``."""
    collector.declare(latency_ms("bench_hand_latency_ms", "Hand-written.", labels=("agent", "method")))
    collector.declare(counter("bench_hand_calls_total", "Hand-written.", labels=("agent", "method")))
    observe = collector.metric("bench_hand_latency_ms").labels("Bench", "hand").observe
    inc = collector.metric("bench_hand_calls_total").labels("Bench", "hand").inc
    raw = Histogram(
        "bench_prom_latency_seconds", "Histogram.time()", buckets=LATENCY_BUCKETS_MS, registry=CollectorRegistry()
    )

    def instrumented(kind: str) -> Callable[[Callable[..., Any]], Any]:
        return instrument_agent_method(
            latency_metric=f"bench_ours_{kind}_latency_ms",
            counter_metric=f"bench_ours_{kind}_calls_total",
            collector=collector,
        )

    class Bench:
        def bare(self, signal: Any, trace_id: str | None = None) -> Any:
            return signal

        def hand(self, signal: Any, trace_id: str | None = None) -> Any:
            start = perf_counter()
            result = signal
            observe((perf_counter() - start) * 1000.0)
            inc()
            return result

        @instrumented("sync")
        @with_trace_id
        def ours(self, signal: Any, trace_id: str) -> Any:
            return signal

        @instrumented("sync_untraced")
        def ours_untraced(self, signal: Any, trace_id: str | None = None) -> Any:
            return signal

        @raw.time()
        def prom_time(self, signal: Any, trace_id: str | None = None) -> Any:
            return signal

        def prom_time_with(self, signal: Any, trace_id: str | None = None) -> Any:
            with raw.time():
                return signal

        async def abare(self, signal: Any, trace_id: str | None = None) -> Any:
            return signal

        async def ahand(self, signal: Any, trace_id: str | None = None) -> Any:
            start = perf_counter()
            result = signal
            observe((perf_counter() - start) * 1000.0)
            inc()
            return result

        @instrumented("async")
        @with_trace_id
        async def aours(self, signal: Any, trace_id: str) -> Any:
            return signal

        @instrumented("async_untraced")
        async def aours_untraced(self, signal: Any, trace_id: str | None = None) -> Any:
            return signal

    return Bench()


def _sync_loop(fn: Callable[[Any], Any]) -> Callable[[], float]:
    def timed() -> float:
        start = perf_counter()
        for _ in range(CALLS):
            fn(SIGNAL)
        return perf_counter() - start

    return timed


def _async_loop(fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    async def calls() -> float:
        start = perf_counter()
        for _ in range(CALLS):
            await fn(SIGNAL)
        return perf_counter() - start

    return lambda: loop.run_until_complete(calls())


def _measure(variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Best per-call ns of each variant over interleaved repeats (so drift hits every variant alike)."""
    best = dict.fromkeys(variants, float("inf"))
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(REPEATS):
            for name, timed in variants.items():
                best[name] = min(best[name], timed() / CALLS * 1e9)
    finally:
        if enabled:
            gc.enable()
    return best


def _scenario(agent: Any, loop: asyncio.AbstractEventLoop) -> dict[str, float]:
    sync = ("bare", "hand", "ours", "ours_untraced", "prom_time", "prom_time_with")
    variants = {name: _sync_loop(getattr(agent, name)) for name in sync}
    for name in ("abare", "ahand", "aours", "aours_untraced"):
        variants[name] = _async_loop(getattr(agent, name), loop)
    return _measure(variants)


def run() -> dict[str, Any]:
    """Measure every variant with no trace bound and with one bound; rows of overheads and ratios."""
    agent = _agent(MetricsCollector(ticker=False))
    loop = asyncio.new_event_loop()
    try:
        _scenario(agent, loop)  # warm-up: children, exemplar slots, caches
        fresh = _scenario(agent, loop)
        with bind_trace_id(TRACE):
            bound = _scenario(agent, loop)
    finally:
        loop.close()

    rows: list[dict[str, Any]] = []
    for label, t in (("fresh", fresh), ("bound", bound)):
        s_hand, a_hand = t["hand"] - t["bare"], t["ahand"] - t["abare"]
        rows += [
            row(f"{label}: sync: bare method call", t["bare"], "ns", note="per call, not overhead"),
            row("sync: hand-written perf_counter+observe+inc", s_hand, "ns", note="overhead"),
            row("sync: instrument_agent_method + with_trace_id", t["ours"] - t["bare"], "ns", s_hand),
            row("sync: instrument_agent_method alone", t["ours_untraced"] - t["bare"], "ns", s_hand),
            row("sync: prometheus_client @Histogram.time()", t["prom_time"] - t["bare"], "ns", s_hand,
                note="observes only; no counter, no labels"),
            row("sync: prometheus_client with Histogram.time()", t["prom_time_with"] - t["bare"], "ns", s_hand,
                note="inline context manager"),
            row("async: bare awaited method", t["abare"], "ns", note="per call, not overhead"),
            row("async: hand-written perf_counter+observe+inc", a_hand, "ns", note="overhead"),
            row("async: instrument_agent_method + with_trace_id", t["aours"] - t["abare"], "ns", a_hand, TARGET,
                note="trace-id binding included"),
            row("async: instrument_agent_method alone", t["aours_untraced"] - t["abare"], "ns", a_hand),
        ]  # fmt: skip
    return {
        "title": "Instrumentation overhead per call (ns; ratio = ours / hand-written)",
        "python": sys.version.split()[0],
        "calls_per_repeat": CALLS,
        "repeats": REPEATS,
        "rows": rows,
    }


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
