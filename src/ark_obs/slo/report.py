"""What an SLO evaluation returns: typed results that are also the seed's dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from ark_obs._seeddict import SeedDict
from ark_obs.slo.spec import Operator, Status

__all__ = ["SloReport", "SloStatus"]


# --- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, eq=False)
class SloStatus(SeedDict):
    """One SLO's evaluation. ``value <operator> objective`` is the statement the SLO makes.

    Typed (``status.met``) and the seed's dict (``status["met"]``, ``json.dumps(status)``).
    """

    name: str
    kind: str
    description: str
    value: Annotated[float | None, Field(description="the indicator: p95 (ms), availability, gauge value, ratio")]
    objective: Annotated[float, Field(description="what value is compared with, in value's unit (400 ms, 0.995)")]
    operator: Operator
    window: Annotated[str | None, Field(description="the SLO window, e.g. '5m'; None for a gauge")]
    window_seconds: float | None
    status: Status
    met: Annotated[bool, Field(description="status == 'met' (no_data is never met)")]
    good_events: Annotated[float | None, Field(description="good events in the window (seconds up for availability)")]
    total_events: float | None
    compliance: Annotated[float | None, Field(description="good_events / total_events")]
    compliance_objective: Annotated[float | None, Field(description="the share of good events required")]
    error_budget_remaining: Annotated[float | None, Field(description="1 - burn_rate; negative once overspent")]
    burn_rate: Annotated[float | None, Field(description="error ratio / (1 - compliance_objective) over the window")]
    burn_rates: Annotated[
        dict[str, float],
        Field(description="burn rate per window with data (5m, 30m, 1h, the SLO's alert windows)"),
    ]
    min_events: int | None
    value_is_lower_bound: Annotated[
        bool,
        Field(
            description="the true value is above value: a latency quantile past the highest finite bucket in "
            "multiprocess mode (no max is shared), read '> value'"
        ),
    ] = False
    source: Annotated[
        str | None,
        Field(description="the series judged over the window, e.g. ark_pass_latency_ms or, when that has no event, "
              "its span-derived fallback"),
    ] = None  # fmt: skip


@dataclass(frozen=True, slots=True, eq=False)
class SloReport(SeedDict):
    """Every SLO's status, in the seed's shape (slos, total, met, violated, violations) and more.

    Typed (``report.violated``) and the seed's dict: ``report["violated"]``, ``"slos" in report``,
    ``json.dumps(report)``; each item of ``report["slos"]`` is an ``SloStatus``, itself a dict.
    """

    slos: list[SloStatus]
    total: int
    met: int
    violated: int
    no_data: int
    violations: Annotated[list[str], Field(description="names of the violated SLOs")]
    availability_ratio: Annotated[dict[str, float], Field(description="availability per window (5m, 30m, 1h)")]
    evaluated_at: float
