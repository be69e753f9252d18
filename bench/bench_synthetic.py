"""The synthetic loop as a load generator: 1,000 passes/s asked in-process, its CPU cost, and its ceiling.

Three measurements in one run, all in-process with zero simulated agent latency:

- the loop asked for 1,000 passes/s for a few seconds (``run_loop``, everything on: decorators, spans,
  heartbeats, continuity checks): the passes/s it achieved (target: at least 1,000) and CPU per pass;
- the same pipeline driven closed-loop (one pass after another, no scheduler): its ceiling in passes/s;
- a bare asyncio baseline: five awaited no-op coroutines per pass, a task per pass, nothing recorded:
  the ceiling of the event loop itself. The ratio says what observability costs per pass.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from ark_obs.synthetic import (
    AgentContext,
    InProcessTarget,
    Pipeline,
    RunState,
    SyntheticConfig,
    in_process_collector,
    run_loop,
)
from bench._timing import sized

ASKED_RATE = 1_000.0
DURATION = sized(3.0, 0.3)
CEILING_SECONDS = sized(2.0, 0.1)


async def _asked() -> dict[str, Any]:
    config = SyntheticConfig(rate=ASKED_RATE, duration_seconds=DURATION, latency_scale=0.0, bad_share=0.05, seed=1)
    collector = in_process_collector(config)
    cpu, wall = time.process_time(), time.perf_counter()
    report = await run_loop(config, collector)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"report": report, "cpu": cpu, "wall": wall}


async def _ceiling() -> float:
    """Passes per second of the instrumented pipeline, one after another, each checked for continuity."""
    config = SyntheticConfig(latency_scale=0.0, seed=2)
    collector = in_process_collector(config)
    target = InProcessTarget(collector)
    pipeline = Pipeline(AgentContext(collector, config, target, random.Random(2)), RunState())
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < CEILING_SECONDS:
        for _ in range(100):
            outcome = await asyncio.create_task(pipeline.run_pass(n, n % 20 == 0))
            await target.missing_agents(outcome.trace_id)
            n += 1
    return n / elapsed


async def _bare() -> float:
    """Passes per second of five awaited no-op coroutines in a task: the event loop's own ceiling."""

    async def agent(x: int) -> int:
        return x

    async def one_pass(i: int) -> int:
        for _ in range(5):
            i = await agent(i)
        return i

    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < CEILING_SECONDS:
        for _ in range(100):
            await asyncio.create_task(one_pass(n))
            n += 1
    return n / elapsed


def run() -> dict[str, Any]:
    """Achieved rate at 1,000/s asked, CPU per pass, and the closed-loop ceilings, side by side."""
    asked = asyncio.run(_asked())
    ceiling = asyncio.run(_ceiling())
    bare = asyncio.run(_bare())
    report = asked["report"]
    cpu_per_pass_us = asked["cpu"] / max(1, report.passes) * 1e6
    rows = [
        {
            "name": f"loop: passes/s achieved, {ASKED_RATE:,.0f}/s asked for {DURATION:g} s",
            "value": report.achieved_rate,
            "unit": "/s",
            "ratio": report.achieved_rate / ASKED_RATE,
            "target": None,
            "ok": report.achieved_rate >= ASKED_RATE,
            "note": f"target >= {ASKED_RATE:,.0f}/s; failed criteria: {', '.join(report.failed) or 'none'}",
        },
        {
            "name": "loop: CPU per pass (all threads)",
            "value": cpu_per_pass_us,
            "unit": "us",
            "ratio": None,
            "target": None,
            "ok": None,
            "note": f"{asked['cpu'] / asked['wall']:.0%} of one core; pass p95 {report.latency_p95_ms} ms",
        },
        {
            "name": "bare asyncio: 5 no-op awaits per pass, closed loop",
            "value": bare,
            "unit": "/s",
            "ratio": None,
            "target": None,
            "ok": None,
            "note": "baseline: nothing recorded",
        },
        {
            "name": "instrumented pipeline, closed loop",
            "value": ceiling,
            "unit": "/s",
            "ratio": bare / ceiling,
            "target": None,
            "ok": ceiling >= ASKED_RATE,
            "note": f"ratio = bare / instrumented (cost of observability); headroom {ceiling / ASKED_RATE:.1f}x",
        },
    ]
    return {"title": "synthetic loop: 1,000 passes/s in-process", "rows": rows}


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
