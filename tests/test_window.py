"""The sliding window: increases, resets, gaps, quantile interpolation and the bucket layout's accuracy."""

from __future__ import annotations

import math
import random
from bisect import bisect_left

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ark_obs.catalog import LATENCY_BUCKETS_MS
from ark_obs.window import Reading, Window, histogram_quantile, quantile_is_lower_bound
from plugins.clock import FakeClock as Clock

BOUNDS = (*LATENCY_BUCKETS_MS, math.inf)


def test_increase_over_window_excludes_older_events() -> None:
    """Events older than the window do not count; newer ones do, including the current partial slice."""
    clock = Clock()
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    value = [0.0]
    src = lambda: [Reading("c", tuple(value))]  # noqa: E731
    value[0] = 5  # five events at t=1000..1009
    for _ in range(40):  # 400 s pass, ticking every slice
        clock.t += 10
        w.tick(src)
    value[0] += 2  # two events now, in the newest (partial) slice
    d = w.delta(Reading("c", tuple(value)), window_seconds=300)
    assert d.values == (2.0,)
    d_all = w.delta(Reading("c", tuple(value)), window_seconds=600)
    assert d_all.values == (7.0,)


def test_counter_reset_counts_like_prometheus_increase() -> None:
    """A value that goes down restarted from zero: the increase adds the new value, never goes negative."""
    clock = Clock()
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    value = [0.0]
    src = lambda: [Reading("c", tuple(value))]  # noqa: E731
    w.tick(src)
    for v in (10.0, 20.0, 3.0, 8.0):  # reset between 20 and 3
        value[0] = v
        clock.t += 10
        w.tick(src)
    d = w.delta(Reading("c", tuple(value)), window_seconds=300)
    assert d.values == (28.0,)  # 10 + 10 + 3 + 5


def test_window_start_is_interpolated_between_snapshots() -> None:
    """A window starting mid-slice takes the proportional share of that slice's increase."""
    clock = Clock(0.0)
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    value = [0.0]
    src = lambda: [Reading("c", tuple(value))]  # noqa: E731
    w.tick(src)
    for _ in range(30):
        value[0] += 10  # steady 1 event per second
        clock.t += 10
        w.tick(src)
    clock.t += 5
    value[0] += 5
    d = w.delta(Reading("c", tuple(value)), window_seconds=100)
    assert d.values[0] == pytest.approx(100.0)


def test_new_series_counts_everything_it_holds() -> None:
    """A series born since the last snapshot contributes all of its values, at once."""
    clock = Clock()
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    d = w.delta(Reading("fresh", (3.0, 1.5), 1.0, 2.0), window_seconds=60)
    assert d.values == (3.0, 1.5)
    assert (d.vmin, d.vmax) == (1.0, 2.0)


def test_min_max_cover_only_slices_in_the_window() -> None:
    """Min and max come from the slices that overlap the window."""
    clock = Clock(0.0)
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    w.tick(lambda: [Reading("h", (0.0,))])
    clock.t = 10
    w.tick(lambda: [Reading("h", (1.0,), 1.0, 900.0)])  # slice (0, 10]: an outlier of 900
    for i in range(2, 40):
        clock.t = 10 * i
        w.tick(lambda i=i: [Reading("h", (float(i),), 5.0, 7.0)])  # type: ignore[misc]
    d = w.delta(Reading("h", (40.0,), 6.0, 6.0), window_seconds=60)
    assert (d.vmin, d.vmax) == (5.0, 7.0)
    d_long = w.delta(Reading("h", (40.0,), 6.0, 6.0), window_seconds=395)
    assert (d_long.vmin, d_long.vmax) == (1.0, 900.0)


def test_stalled_ticker_counts_the_gap_as_recent() -> None:
    """Missed boundaries carry the last snapshot forward: nothing that happened in a gap is lost."""
    clock = Clock(0.0)
    w = Window(retention_seconds=600, slice_seconds=10, clock=clock)
    value = [0.0]
    w.tick(lambda: [Reading("c", tuple(value))])
    clock.t = 10
    w.tick(lambda: [Reading("c", tuple(value))])
    value[0] = 4.0
    clock.t = 200  # 19 boundaries missed
    w.tick(lambda: [Reading("c", tuple(value))])
    assert w.delta(Reading("c", tuple(value)), window_seconds=30).values == (4.0,)


def test_invalid_window_and_config_raise() -> None:
    """A window beyond the retention, or a retention under two slices, is a programming error."""
    w = Window(retention_seconds=60, slice_seconds=10, clock=Clock())
    with pytest.raises(ValueError, match="window must be"):
        w.delta(Reading("c", (1.0,)), window_seconds=61)
    with pytest.raises(ValueError, match="two slices"):
        Window(retention_seconds=10, slice_seconds=10)
    with pytest.raises(ValueError, match="positive"):
        Window(retention_seconds=10, slice_seconds=0)


def _counts(xs: list[float]) -> list[int]:
    counts = [0] * len(BOUNDS)
    for x in xs:
        counts[bisect_left(BOUNDS, x)] += 1
    return counts


@pytest.mark.parametrize("seed", range(3))
def test_bucket_layout_keeps_p95_p99_within_5_percent(seed: int) -> None:
    """On a log-normal latency sample with median 150 ms, interpolated p50/p95/p99 are within 5% of exact."""
    rng = random.Random(seed)
    xs = sorted(rng.lognormvariate(math.log(150), 0.6) for _ in range(20_000))
    counts = _counts(xs)
    for q in (0.5, 0.95, 0.99):
        exact = xs[math.ceil(q * len(xs)) - 1]
        estimate = histogram_quantile(q, counts, BOUNDS, xs[0], xs[-1])
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.05, (q, estimate, exact)


def test_slo_thresholds_are_exact_bucket_boundaries() -> None:
    """120 ms and 400 ms are boundaries, so compliance is counted exactly."""
    assert 120.0 in LATENCY_BUCKETS_MS and 400.0 in LATENCY_BUCKETS_MS
    assert list(LATENCY_BUCKETS_MS) == sorted(set(LATENCY_BUCKETS_MS))


@given(
    st.lists(st.floats(min_value=0.0, max_value=20_000.0), min_size=1, max_size=300),
    st.sampled_from([0.5, 0.95, 0.99]),
)
def test_quantile_estimate_lies_in_the_true_quantiles_bucket(xs: list[float], q: float) -> None:
    """The interpolated quantile always lies in the bucket holding the true (nearest-rank) quantile."""
    xs = sorted(xs)
    exact = xs[max(0, math.ceil(q * len(xs)) - 1)]
    estimate = histogram_quantile(q, _counts(xs), BOUNDS, xs[0], xs[-1])
    assert estimate is not None
    i = bisect_left(BOUNDS, exact)
    lower = BOUNDS[i - 1] if i > 0 else 0.0
    assert lower <= estimate <= BOUNDS[i]
    assert xs[0] <= estimate <= xs[-1]


def test_quantile_of_empty_histogram_is_none() -> None:
    """No observations: no quantile, never a fake zero."""
    assert histogram_quantile(0.95, [0] * len(BOUNDS), BOUNDS) is None


def test_a_quantile_past_the_last_finite_bucket_without_a_max_is_a_lower_bound() -> None:
    """With events in +Inf and no max known (multiprocess), a quantile that falls there is only a lower bound."""
    bounds = (100.0, 10_000.0, math.inf)
    counts = (90.0, 4.0, 6.0)  # 6% above 10 s
    assert histogram_quantile(0.95, counts, bounds) == 10_000.0
    assert quantile_is_lower_bound(0.95, counts, bounds) and quantile_is_lower_bound(0.99, counts, bounds)
    assert not quantile_is_lower_bound(0.50, counts, bounds)  # inside a finite bucket: an estimate, bounded
    assert not quantile_is_lower_bound(0.95, counts, bounds, vmax=20_000.0)  # the max is known: interpolated
    assert not quantile_is_lower_bound(0.95, (90.0, 10.0, 0.0), bounds)
