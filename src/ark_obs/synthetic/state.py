"""The run's bookkeeping: the counters every pass updates, read by the live display and the report.

A module of its own because the Watchdog, the loop and the report all use it and none of them
should import another for it.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Final

__all__ = ["RunState", "quantile"]

# latencies kept for the report's percentiles (a long background run keeps the most recent ones)
MAX_KEPT_LATENCIES: Final = 200_000
RECENT_LATENCIES: Final = 2_000  # the live display's p95
MAX_ERROR_KINDS: Final = 50  # distinct unexpected errors kept by message (an endless run stays bounded)
SCHEDULING_SLACK_SECONDS: Final = 0.1  # a GC pause or a busy neighbour is not falling behind


class RunState:
    """Counters of one run, updated by the passes on the event loop (single-threaded: no locks)."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.last_issued_at = self.started_at
        self.scheduled = 0
        self.passes = 0
        self.latencies: deque[float] = deque(maxlen=MAX_KEPT_LATENCIES)
        self.injected = 0
        self.injected_denied = 0
        self.false_denials = 0
        self.denials = 0
        self.expected_errors = 0
        self.unexpected: Counter[str] = Counter()
        self.quarantines: Counter[str] = Counter()
        self.checked = 0
        self.complete = 0
        self.incomplete_expected = 0
        self.incomplete_unexpected = 0
        self.unexpected_missing: Counter[str] = Counter()
        self.expected_missing: Counter[str] = Counter()  # agents the injected faults took out of traces
        self.example_trace_id: str | None = None
        self.silent: set[str] = set()
        self.revision_anomalies = 0

    def unexpected_error(self, where: str, exc: BaseException) -> None:
        """Count an error nothing injected (kinds beyond MAX_ERROR_KINDS are lumped together)."""
        key = f"{where}: {type(exc).__name__}: {exc}"[:200]
        if key not in self.unexpected and len(self.unexpected) >= MAX_ERROR_KINDS:
            key = "other errors"
        self.unexpected[key] += 1

    def throughput(self, rate: float) -> tuple[float, float]:
        """(seconds, passes/s): completed passes over the time their starts took; the live display and
        the report read this one figure.

        Open loop: each start owns a 1/rate slot, so rate x duration passes started on time is exactly the
        asked rate. Starting the last pass late (the loop fell behind) stretches that time; lateness within
        SCHEDULING_SLACK_SECONDS is a hiccup (timer resolution, a GC pause), not falling behind. A pass that
        failed or has not ended is not counted; slow passes show in the latency criterion, not here.
        """
        ideal_last = self.started_at + max(0, self.scheduled - 1) / rate
        late = max(0.0, self.last_issued_at - ideal_last - SCHEDULING_SLACK_SECONDS)
        seconds = self.scheduled / rate + late
        return seconds, (self.passes / seconds if seconds > 0 else 0.0)

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started_at

    def recent_p95(self) -> float | None:
        """p95 of the most recent passes (the live display)."""
        n = len(self.latencies)
        recent = sorted(self.latencies[i] for i in range(max(0, n - RECENT_LATENCIES), n))
        return quantile(recent, 0.95)

    def check(self, missing: tuple[str, ...] | None, expected_missing: frozenset[str]) -> None:
        """Account for one trace's continuity against what the injected faults explain."""
        if missing is None:
            self.unexpected["trace store unavailable"] += 1
            return
        self.checked += 1
        if not missing and not expected_missing:
            self.complete += 1
        elif set(missing) == expected_missing:
            self.incomplete_expected += 1
            self.expected_missing.update(expected_missing)
        else:
            self.incomplete_unexpected += 1
            for agent in set(missing) ^ expected_missing:
                self.unexpected_missing[agent] += 1


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile by linear interpolation between closest ranks (None when empty)."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
