"""The narrow interface the subsystems read from: a registry, its sliding window and a clock.

Traces, heartbeats and the SLO engine depend on this protocol, not on ``MetricsCollector`` (the seed's
facade, which composes them and is the one implementation): layers point down, and a subsystem can be
read, tested and replaced without the facade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ark_obs.registry import ArkRegistry
from ark_obs.window import Clock, Reading, Window

__all__ = ["Increase", "MetricSource"]

# increase() of one series over one window: (per-value increases, min, max), None without data
Increase = tuple[tuple[float, ...], float, float] | None


class MetricSource(Protocol):
    """Readings of declared metrics over time, and a place to hang scrape-time collectors."""

    @property
    def registry(self) -> ArkRegistry:
        """The metrics, declared once, and their drop accounting."""

    @property
    def clock(self) -> Clock:
        """Seconds since the epoch (injectable in tests)."""

    @property
    def window(self) -> Window:
        """The sliding window that windowed values (increase, stats) come from."""

    def metric(self, name: str) -> Any:
        """The metric object called ``name`` (unknown names raise)."""

    def readings(self, name: str, labels: Mapping[str, object] | None = None) -> list[Reading]:
        """Current cumulative readings of the series of ``name`` matching ``labels``."""

    def increase_many(
        self, name: str, windows: Sequence[float], labels: Mapping[str, object] | None = None, *, minmax: bool = True
    ) -> dict[float, Increase]:
        """``increase()`` of the matching series over each window."""

    def add_collector(self, collector: Any) -> None:
        """Register a scrape-time collector so every exposition includes it."""

    def remove_collector(self, collector: Any) -> None:
        """Unregister a scrape-time collector added with ``add_collector``."""
