"""Small timing helpers shared by the benchmarks: min-of-repeats per-call cost, and a result row."""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any


def per_call_ns(fn: Callable[[], Any], number: int = 100_000, repeat: int = 7) -> float:
    """Best-of-``repeat`` cost of one call of ``fn`` in nanoseconds."""
    timer = timeit.Timer(fn)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def row(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    target: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One result: ``ratio`` is value / baseline, ``ok`` whether the ratio meets ``target`` (<=)."""
    ratio = value / baseline if baseline else None
    ok = None if target is None or ratio is None else ratio <= target
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "ok": ok,
        "note": note,
    }


def interleaved_ns(fns: dict[str, Callable[[], Any]], number: int = 20_000, rounds: int = 25) -> dict[str, float]:
    """Best per-call cost (ns) of each function, measured in alternating batches.

    Comparisons on a shared 2-core machine drift with load and CPU frequency; alternating short batches
    exposes every contender to the same conditions, and the minimum keeps the least disturbed batch.
    """
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number * 1e9)
    return best
