"""The statistics behind the checks: the canary's 3-sigma denial spike rule and a sustained breach (an alert's ``for``).

Pure functions over samples, no Prometheus: ``baseline_stats`` and ``spike_threshold`` judge the denial
ratio, ``sustained_breach`` the p95 latency.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BaselineStats", "Breach", "baseline_stats", "spike_threshold", "sustained_breach"]


@dataclass(frozen=True, slots=True)
class BaselineStats:
    """Mean and population standard deviation of the baseline's samples, and how far back they reach."""

    mean: float
    stddev: float
    points: int
    span_seconds: float


def baseline_stats(samples: Sequence[tuple[float, float]], at: float) -> BaselineStats | None:
    """Statistics of ``(timestamp, value)`` samples, non-finite values dropped; None when none is left.

    The standard deviation is the population one, as PromQL's ``stddev_over_time`` (the alert's).
    ``span_seconds`` is how far before ``at`` the oldest sample lies.
    """
    finite = [(t, v) for t, v in samples if math.isfinite(v) and math.isfinite(t)]
    if not finite:
        return None
    values = [v for _, v in finite]
    return BaselineStats(
        mean=statistics.fmean(values),
        stddev=statistics.pstdev(values),
        points=len(values),
        span_seconds=at - min(t for t, _ in finite),
    )


def spike_threshold(mean: float, stddev: float, decisions: float, *, sigmas: float = 3.0, floor: float = 0.01) -> float:
    """The denials-per-decision ratio above which the canary's last minute is a spike.

    ``mean + sigmas * max(sqrt(stddev**2 + mean / decisions), floor)``, where ``mean`` and ``stddev``
    are the baseline's 1-minute ratios over the last hour and ``decisions`` the canary's decisions in
    its minute. The statistics and their limits:

    - Per decision, not per second: the canary takes a share of the traffic (the seed's 10%), so its
      denials per second are a fraction of the baseline's even when both deny alike. The alert
      (ArkCanaryHrmDenialsSpike) compares each track with its own history, where the share cancels out.
    - ``stddev`` is the baseline's minute-to-minute spread at the baseline's traffic. A canary minute
      with fewer decisions is noisier: if denials are Poisson at the baseline's ratio, the canary's
      ratio has a sampling variance of ``mean / decisions``, added to the baseline's. Without it a
      10% canary would fail on chance alone (one denial in six decisions is a 17% ratio).
    - The floor (0.01 denials per decision, the alert's 0.01/s at the seed's 1 decision/s) keeps a
      perfectly flat baseline (stddev 0) from turning any blip into "infinitely many sigmas".
    - "3 sigma" means a 0.13% one-sided false-alarm rate only for normal, independent samples. The
      samples are 1-minute windows taken every step, so consecutive ones overlap and are correlated:
      the baseline holds fewer independent minutes than points. At low ratios the counts are skewed,
      not normal; the guards (enough decisions, enough baseline history) and the floor keep the test
      away from the worst of that.
    - The baseline's mean is its last hour; the canary's value is its last minute. A change that
      hits both tracks at once (a market event changing the mix of actions) reaches the canary first
      and can fail it until the baseline's hour catches up. Look at the baseline's current ratio.
    - One-sided: a canary that suddenly denies *less* (HRM skipped?) passes this check.
    """
    sigma = math.sqrt(stddev * stddev + max(mean, 0.0) / decisions) if decisions > 0 else math.inf
    return mean + sigmas * max(sigma, floor)


@dataclass(frozen=True, slots=True)
class Breach:
    """How long a series has been above a threshold, up to the end of a range."""

    latest: float | None
    above_seconds: float
    sustained: bool


def sustained_breach(
    samples: Sequence[tuple[float, float]], *, start: float, end: float, step: float, threshold: float
) -> Breach:
    """Whether ``samples`` (a range query's points) stay above ``threshold`` at every step of the range.

    This is a Prometheus alert's ``for``: the condition must hold at every evaluation, and a step
    with no sample (no decision in the window) resets it. ``above_seconds`` counts back from ``end``
    over the consecutive steps above the threshold.
    """
    n_steps = math.floor((end - start) / step + 1e-9) + 1
    by_step: dict[int, float] = {}
    for t, v in samples:
        index = round((t - start) / step)
        if 0 <= index < n_steps and abs(start + index * step - t) < step / 2:
            by_step[index] = v
    latest = by_step.get(n_steps - 1)
    run = 0
    for index in range(n_steps - 1, -1, -1):
        value = by_step.get(index)
        if value is None or not math.isfinite(value) or value <= threshold:
            break
        run += 1
    above = max(run - 1, 0) * step
    return Breach(latest=latest, above_seconds=above, sustained=run == n_steps)
