"""Small timing helpers shared by the benchmarks: min-of-repeats per-call cost, a result row, smoke sizes."""

from __future__ import annotations

import os
import timeit
from collections.abc import Callable
from typing import Any, Final, TypeVar

# ARK_OBS_BENCH_SMOKE=1: every benchmark runs once at a tiny size (make test's smoke run: the code paths,
# not the figures, which are meaningless at that size)
SMOKE_ENV: Final = "ARK_OBS_BENCH_SMOKE"
T = TypeVar("T")


def smoke() -> bool:
    """Whether this is a smoke run (``ARK_OBS_BENCH_SMOKE`` set to anything but empty or 0)."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def sized(full: T, tiny: T) -> T:
    """``full`` in a real run, ``tiny`` in a smoke run."""
    return tiny if smoke() else full


def per_call_ns(fn: Callable[[], Any], number: int = 100_000, repeat: int = 7) -> float:
    """Best-of-``repeat`` cost of one call of ``fn`` in nanoseconds."""
    number, repeat = sized(number, min(number, 5)), sized(repeat, 1)
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
    number, rounds = sized(number, min(number, 5)), sized(rounds, 1)
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number * 1e9)
    return best
