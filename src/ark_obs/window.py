"""Windowed statistics: a ring of periodic snapshots of cumulative values, as Prometheus' increase() sees them.

Every ``slice_seconds`` the window snapshots each series' cumulative values (histogram bucket counts
and sum, or a counter's value), adjusted for counter resets, plus the min and max observed during the
slice. The increase over any window up to the retention is the current value minus the snapshot
interpolated at the window's start, so memory and query cost depend on the number of slices and
buckets, never on the number of observations, and an observation counts the moment it is made.
The same mechanism serves ``get_histogram_stats`` and the SLO engine, and it works in multiprocess
mode because it only needs cumulative values, which the multiprocess collector aggregates.
"""

from __future__ import annotations

import math
import operator
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

INF: Final = math.inf

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Reading:
    """The cumulative values of one series now, and the min/max seen in the current slice."""

    key: Hashable
    values: Sequence[float]
    vmin: float = INF
    vmax: float = -INF


@dataclass(frozen=True, slots=True)
class Delta:
    """The increase of one series' values over a window, with the min/max seen in it (inf if unknown)."""

    values: tuple[float, ...]
    vmin: float = INF
    vmax: float = -INF


class _Series:
    """Snapshots of one series, one slot per slice, reset-adjusted so they never decrease."""

    __slots__ = ("first", "history_known", "last_raw", "maxs", "mins", "offset", "slot_k", "snaps")

    def __init__(self, width: int, slots: int, first: int, history_known: bool = True) -> None:
        self.snaps: list[array[float] | None] = [None] * slots
        self.slot_k = array("q", [-1]) * slots
        self.mins = array("d", [INF]) * slots
        self.maxs = array("d", [-INF]) * slots
        self.offset = array("d", [0.0]) * width
        self.last_raw = array("d", [0.0]) * width
        self.first = first
        # False for series already there when the window started (a restart over persistent multiprocess
        # files): what they hold happened at an unknown time, so it never counts as recent
        self.history_known = history_known

    def adjust(self, raw: Sequence[float], commit: bool) -> list[float]:
        """Return reset-adjusted values; a value that went down restarted from zero (a counter reset)."""
        offset, last = self.offset, self.last_raw
        if commit:
            for i, v in enumerate(raw):
                if v < last[i]:
                    offset[i] += last[i]
                last[i] = v
            return [v + o for v, o in zip(raw, offset, strict=True)]
        return [v + (o + lr if v < lr else o) for v, o, lr in zip(raw, offset, last, strict=True)]


class Window:
    """Sliding-window increases over series of cumulative values.

    ``slice_seconds`` sets the resolution, ``retention_seconds`` the longest window. The clock is
    injectable; ``tick()`` takes the snapshots that are due (the background ticker calls it, and so
    does every query).
    """

    def __init__(self, retention_seconds: float = 3600.0, slice_seconds: float = 10.0, clock: Clock = time.time):
        if slice_seconds <= 0:
            raise ValueError(f"slice_seconds must be positive, got {slice_seconds}")
        if retention_seconds < 2 * slice_seconds:
            raise ValueError(
                f"retention_seconds ({retention_seconds}) must be at least two slices ({2 * slice_seconds})"
            )
        self.slice = float(slice_seconds)
        self.retention = float(retention_seconds)
        self.clock = clock
        # one more slot than the retention needs: the window's start interpolates between two snapshots
        self._slots = int(math.ceil(retention_seconds / slice_seconds)) + 2  # noqa: RUF046
        self._series: dict[Hashable, _Series] = {}
        self._k = int(clock() // self.slice)  # the newest slice boundary snapshotted
        self._lock = threading.Lock()

    @property
    def slot_count(self) -> int:
        """Snapshots kept per series."""
        return self._slots

    def due(self, now: float | None = None) -> bool:
        """True when a slice boundary has passed since the last snapshot."""
        return int((self.clock() if now is None else now) // self.slice) > self._k

    def prime(self, readings: Iterable[Reading]) -> None:
        """Snapshot the series that exist before the window starts; their values become the baseline.

        Prometheus does the same with its first scrape: what a counter held before is not an increase.
        """
        with self._lock:
            for reading in readings:
                if reading.key not in self._series:
                    series = _Series(len(reading.values), self._slots, self._k, history_known=False)
                    series.snaps[self._k % self._slots] = array("d", series.adjust(reading.values, commit=True))
                    series.slot_k[self._k % self._slots] = self._k
                    self._series[reading.key] = series

    def tick(self, readings: Callable[[], Iterable[Reading]], now: float | None = None) -> bool:
        """Snapshot every series if a slice boundary has passed; return whether it did.

        Missed boundaries (a stalled ticker) are filled with the last snapshot, so what happened
        during the gap counts as recent rather than being lost.
        """
        k_now = int((self.clock() if now is None else now) // self.slice)
        with self._lock:
            if k_now <= self._k:
                return False
            k_prev, self._k = self._k, k_now
            slots = self._slots
            for reading in readings():
                series = self._series.get(reading.key)
                if series is None:
                    series = self._series[reading.key] = _Series(len(reading.values), slots, k_now)
                adjusted = series.adjust(reading.values, commit=True)
                slot = k_now % slots
                prev_slot = k_prev % slots
                # a gap: carry the previous snapshot forward over the missed boundaries
                if k_now - k_prev > 1 and series.slot_k[prev_slot] == k_prev:
                    carried = series.snaps[prev_slot]
                    for k in range(max(k_prev + 1, k_now - slots + 1), k_now):
                        series.snaps[k % slots] = carried
                        series.slot_k[k % slots] = k
                        series.mins[k % slots], series.maxs[k % slots] = INF, -INF
                series.snaps[slot] = array("d", adjusted)
                series.slot_k[slot] = k_now
                # min/max of the slice that just closed, stored with the snapshot that closes it
                series.mins[slot] = reading.vmin
                series.maxs[slot] = reading.vmax
            return True

    def delta(self, reading: Reading, window_seconds: float, now: float | None = None, minmax: bool = True) -> Delta:
        """Increase of ``reading``'s series over the last ``window_seconds``, ending now.

        ``minmax=False`` skips the min/max of the window (infinite in the result) when only counts matter.
        """
        if not 0 < window_seconds <= self.retention:
            raise ValueError(f"window must be in (0, {self.retention:g}] seconds, got {window_seconds:g}")
        now = self.clock() if now is None else now
        series = self._series.get(reading.key)
        if series is None:
            # born since the last snapshot: everything it holds happened inside any window
            return Delta(tuple(reading.values), reading.vmin, reading.vmax)
        with self._lock:
            current = series.adjust(reading.values, commit=False)
            start = now - window_seconds
            baseline = self._value_at(series, start, current, now)
            vmin, vmax = reading.vmin, reading.vmax
            if minmax:
                # slices that overlap the window: the one containing its start up to the newest snapshot.
                # Unwritten slots hold +-inf, so a C-level min/max over the ring segment is exact.
                k_lo = max(int(start // self.slice) + 1, self._k - self._slots + 1)
                if k_lo <= self._k:
                    a, b = k_lo % self._slots, self._k % self._slots
                    if a <= b:
                        mins, maxs = series.mins[a : b + 1], series.maxs[a : b + 1]
                    else:
                        mins, maxs = series.mins[a:] + series.mins[: b + 1], series.maxs[a:] + series.maxs[: b + 1]
                    vmin, vmax = min(vmin, min(mins)), max(vmax, max(maxs))
        values = tuple(map(operator.sub, current, baseline))
        if values and min(values) < 0.0:  # interpolation rounding only: adjusted values never decrease
            values = tuple(max(0.0, v) for v in values)
        return Delta(values, vmin, vmax)

    def _value_at(self, series: _Series, t: float, current: Sequence[float], now: float) -> Sequence[float]:
        """The series' adjusted values at time ``t``, interpolated between snapshots."""
        k = int(t // self.slice)
        slots = self._slots

        def snap(j: int) -> Sequence[float] | None:
            if j > self._k:
                return None
            if j < series.first:
                if not series.history_known:  # it existed before the window started: no increase before
                    first = series.first % slots
                    return series.snaps[first] if series.slot_k[first] == series.first else None
                # before its first snapshot the series did not exist yet (the ticker snapshots every
                # series at every boundary): zero, as Prometheus assumes for a counter that appears
                return _zeros(len(current))
            slot = j % slots
            return series.snaps[slot] if series.slot_k[slot] == j else None

        lo = snap(k)
        if lo is None:
            lo = _zeros(len(current))
        hi = snap(k + 1)
        t_lo = k * self.slice
        if hi is None:
            t_hi, hi = now, current
        else:
            t_hi = (k + 1) * self.slice
        if t_hi <= t_lo:
            return lo
        frac = min(1.0, max(0.0, (t - t_lo) / (t_hi - t_lo)))
        return [a + (b - a) * frac for a, b in zip(lo, hi, strict=True)]

    def forget(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the series for which ``keep`` is false (removed label sets)."""
        with self._lock:
            for key in [k for k in self._series if not keep(k)]:
                del self._series[key]


def _zeros(n: int) -> array[float]:
    return array("d", [0.0]) * n


def histogram_quantile(
    q: float, counts: Sequence[float], bounds: Sequence[float], vmin: float = INF, vmax: float = -INF
) -> float | None:
    """Estimate quantile ``q`` from per-bucket counts, interpolating linearly inside the bucket.

    Like PromQL's ``histogram_quantile``, but the known min and max narrow the first, last and
    +Inf buckets, so the estimate always lies inside the bucket that holds the true quantile.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for i, c in enumerate(counts):
        if c > 0 and cumulative + c >= rank:
            lo = bounds[i - 1] if i > 0 else min(0.0, vmin)
            hi = bounds[i]
            if vmin != INF:
                lo = max(lo, vmin)
            if vmax != -INF:
                hi = min(hi, vmax)
            elif hi == INF:
                return lo  # no max known: PromQL answers the highest finite bound too
            if hi < lo:
                hi = lo
            return lo + (hi - lo) * max(0.0, rank - cumulative) / c
        cumulative += c
    return None


def quantile_is_lower_bound(q: float, counts: Sequence[float], bounds: Sequence[float], vmax: float = -INF) -> bool:
    """Whether ``histogram_quantile(q, ...)`` is only a lower bound of the true quantile.

    That is when the quantile falls in the +Inf bucket and no max is known (multiprocess mode): the
    estimate is the highest finite bound, and the true value is anywhere above it.
    """
    if vmax != -INF or not counts or bounds[len(counts) - 1] != INF or counts[-1] <= 0:
        return False
    total = sum(counts)
    return total > 0 and total - counts[-1] < q * total


class _Tickable(Protocol):
    def tick(self) -> bool: ...


class Ticker:
    """One daemon thread that ticks every registered window owner, so snapshots are taken on time."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._owners: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, owner: _Tickable) -> None:
        """Tick ``owner`` from now on (held weakly: a collector that is dropped stops being ticked)."""
        with self._lock:
            self._owners.add(owner)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ark-obs-ticker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                owners = list(self._owners)
            for owner in owners:
                try:
                    owner.tick()
                except Exception:  # pragma: no cover - a broken owner must not stop the others
                    import logging

                    logging.getLogger("ark_obs").exception("window tick failed")


TICKER: Final = Ticker()
