"""BASELINE, NOT ark-obs: the seed's design (an RLock, raw observation lists, sort at query time).

Written from the seed's description only so the benchmarks can show what ark-obs' design buys.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict


class SeedStyleCollector:
    """The seed's MetricsCollector as described: every observation kept, sorted per query."""

    def __init__(self, retention_seconds: float = 3600.0) -> None:
        self._lock = threading.RLock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._observations: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.retention = retention_seconds

    def inc_counter(self, name: str, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        key = (name, tuple(sorted((labels or {}).items())))
        with self._lock:
            self._counters[key] += amount

    def observe_histogram(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            self._observations[name].append((time.time(), value))

    def get_histogram_stats(self, name: str) -> dict[str, float | None]:
        cutoff = time.time() - self.retention
        with self._lock:
            obs = self._observations[name]
            obs[:] = [o for o in obs if o[0] >= cutoff]  # the seed's "auto-cleanup of old observations"
            values = sorted(v for _, v in obs)
        if not values:
            return {"count": 0}
        n = len(values)

        def pct(q: float) -> float:
            return values[min(n - 1, int(q * n))]

        return {
            "count": n, "sum": sum(values), "avg": sum(values) / n, "p50": pct(0.5), "p95": pct(0.95),
            "p99": pct(0.99), "min": values[0], "max": values[-1],
        }  # fmt: skip
