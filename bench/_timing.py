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
