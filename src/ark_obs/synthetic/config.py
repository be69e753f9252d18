"""What one synthetic run does: the pipeline's agents, their latencies, the injected faults, the run's options.

Frozen and validated when built, so a bad option fails before any agent runs; the command and the
service's background loop both describe a run as a ``SyntheticConfig``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["DEFAULT_LATENCIES", "PIPELINE", "Fault", "FaultKind", "InjectedFault", "LatencyModel", "SyntheticConfig"]

PIPELINE: Final[tuple[str, ...]] = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")


class InjectedFault(RuntimeError):
    """An error the loop injected on purpose (``--fault kenny-errors``); expected, never a finding."""


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """A log-normal latency: ``median_ms * exp(sigma * N(0, 1))``; median 0 means no latency at all.

    >>> LatencyModel.parse("35:0.4")
    LatencyModel(median_ms=35.0, sigma=0.4)
    """

    median_ms: float
    sigma: float = 0.35

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_ms) and self.median_ms >= 0):
            raise ValueError(f"median latency must be a finite number >= 0 ms, got {self.median_ms}")
        if not (math.isfinite(self.sigma) and 0 <= self.sigma <= 3):
            raise ValueError(f"sigma must be between 0 and 3, got {self.sigma}")

    @classmethod
    def parse(cls, text: str) -> LatencyModel:
        """``MEDIAN_MS`` or ``MEDIAN_MS:SIGMA``."""
        median, _, sigma = text.partition(":")
        return cls(float(median), float(sigma) if sigma else 0.35)

    def sample(self, rng: random.Random, scale: float = 1.0) -> float:
        """One latency in ms (0 when the median or the scale is 0)."""
        if self.median_ms == 0 or scale == 0:
            return 0.0
        return self.median_ms * scale * math.exp(self.sigma * rng.gauss(0.0, 1.0))


# Median ~130 ms end to end, p95 ~200 ms: inside the 400 ms decision SLO; HRM p95 ~53 ms (SLO: 120 ms).
DEFAULT_LATENCIES: Final[Mapping[str, LatencyModel]] = {
    "Kyle": LatencyModel(10.0),
    "Joey": LatencyModel(35.0),
    "HRM": LatencyModel(30.0),
    "Kenny": LatencyModel(45.0),
    "Aletheia": LatencyModel(10.0),
}

FaultKind = Literal["kenny-errors", "silence", "drop", "skip-revision"]


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault: ``kenny-errors``, ``skip-revision``, ``silence:AGENT`` or ``drop:AGENT``."""

    kind: FaultKind
    agent: str = "Kenny"

    @classmethod
    def parse(cls, text: str, pipeline: Sequence[str] = PIPELINE) -> Fault:
        """Parse the ``--fault`` syntax; unknown kinds and agents raise ValueError naming the choices."""
        kind, _, agent = text.strip().partition(":")
        if kind in ("kenny-errors", "skip-revision") and not agent:
            return cls(kind, "Kenny")  # type: ignore[arg-type]
        if kind in ("silence", "drop") and agent:
            if agent not in pipeline:
                raise ValueError(f"--fault {text}: unknown agent {agent!r}; agents: {', '.join(pipeline)}")
            return cls(kind, agent)  # type: ignore[arg-type]
        raise ValueError(f"--fault {text!r}: expected kenny-errors, silence:AGENT or drop:AGENT, or skip-revision")

    def __str__(self) -> str:
        return self.kind if self.kind in ("kenny-errors", "skip-revision") else f"{self.kind}:{self.agent}"


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """What one run does. ``duration_seconds=None`` runs until stopped (the service's background loop)."""

    rate: float = 1.0
    duration_seconds: float | None = 30.0
    bad_share: float = 0.05
    faults: tuple[Fault, ...] = ()
    drop_share: float = 0.1
    target: str = "in-process"
    token: str | None = None
    latencies: Mapping[str, LatencyModel] = field(default_factory=lambda: dict(DEFAULT_LATENCIES))
    latency_scale: float = 1.0
    heartbeat_interval_seconds: float = 1.0
    seed: int | None = None
    validate_traces: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and 0 < self.rate <= 100_000):
            raise ValueError(f"rate must be in (0, 100000] passes/s, got {self.rate}")
        if self.duration_seconds is not None and not (0 < self.duration_seconds < math.inf):
            raise ValueError(f"duration must be positive, got {self.duration_seconds}")
        for name in ("bad_share", "drop_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not (math.isfinite(self.latency_scale) and self.latency_scale >= 0):
            raise ValueError(f"latency scale must be >= 0, got {self.latency_scale}")
        if not 0 < self.heartbeat_interval_seconds <= 3600:
            raise ValueError(f"heartbeat interval must be in (0, 3600] s, got {self.heartbeat_interval_seconds}")
        unknown = set(self.latencies) - set(PIPELINE)
        if unknown:
            raise ValueError(f"latency for unknown agent(s) {sorted(unknown)}; agents: {', '.join(PIPELINE)}")
        if self.target != "in-process" and not self.target.startswith(("http://", "https://")):
            raise ValueError(f"target must be 'in-process' or an http(s):// URL, got {self.target!r}")

    def has(self, kind: FaultKind) -> bool:
        """Whether a fault of ``kind`` is injected."""
        return any(f.kind == kind for f in self.faults)

    def fault_agents(self, kind: FaultKind) -> tuple[str, ...]:
        """The agents a fault of ``kind`` applies to."""
        return tuple(f.agent for f in self.faults if f.kind == kind)

    def latency(self, agent: str) -> LatencyModel:
        """The latency model of ``agent`` (zero when not configured)."""
        return self.latencies.get(agent, LatencyModel(0.0))
