"""The embedded trace store: bounded, in this process, nothing to start.

In-flight traces live in an ``OrderedDict`` kept in last-span order, so expiry and capacity eviction
pop from its front in O(1); finalized traces move to a second one (same bound) for ``ttl_seconds``.
A trace costs one small object, a list of agent names (shared strings) and one ``array('d')`` of
times: about 0.6 KiB for five spans (bench/bench_traces.py measures it).
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict, deque
from typing import Final

from ark_obs.traces import (
    NullSink,
    Span,
    StoreHealth,
    TraceRecord,
    TraceSettings,
    TraceSink,
    TraceState,
)

_IN_FLIGHT: Final = TraceState.IN_FLIGHT
_COMPLETE: Final = TraceState.COMPLETE
_INCOMPLETE: Final = TraceState.INCOMPLETE


class _Trace:
    """One trace: ``times`` is [last touch, start0, end0, start1, end1, ...] in agent arrival order."""

    __slots__ = ("agents", "failed", "n", "need", "state", "times")

    def __init__(self, now: float, need: int) -> None:
        self.agents: list[str] = []
        self.times = array("d", (now,))
        self.failed: set[str] | None = None
        self.n = 0
        self.need = need  # pipeline agents without a span yet
        self.state = _IN_FLIGHT

    def record(self, trace_id: str) -> TraceRecord:
        times, failed = self.times, self.failed or ()
        spans = [
            Span(agent, times[2 * i + 1], times[2 * i + 2], agent not in failed) for i, agent in enumerate(self.agents)
        ]
        spans.sort(key=lambda s: s.start)  # stable: equal starts keep arrival order
        return TraceRecord(trace_id, tuple(spans), self.state, self.n)


class MemoryStore:
    """Traces and heartbeats in this process (see ``ark_obs.traces.TraceStore``)."""

    backend: Final = "memory"
    shared: Final = False

    def __init__(self) -> None:
        self._live: OrderedDict[str, _Trace] = OrderedDict()
        self._done: OrderedDict[str, _Trace] = OrderedDict()
        self._recent: deque[str] = deque()
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self.bind(TraceSettings(), NullSink())

    def bind(self, settings: TraceSettings, sink: TraceSink) -> None:
        """Attach the monitor's settings and outcome sink."""
        self.settings = settings
        self._sink = sink
        self._pipeline = frozenset(settings.pipeline)
        self._need = len(settings.pipeline)
        self._cap = settings.max_in_flight
        self._recent = deque(self._recent, maxlen=settings.recent_max)

    # the hot path ------------------------------------------------------------------------------------
    def add(self, trace_id: str, agent: str, start: float, end: float, ok: bool, now: float) -> None:
        """Record a span; finalizes the trace when it completes the pipeline."""
        latency = -1.0
        evicted = False
        with self._lock:
            live = self._live
            t = live.get(trace_id)
            if t is None:
                if trace_id in self._done:
                    late = True
                else:
                    late = False
                    t = live[trace_id] = _Trace(now, self._need)
                    if len(live) > self._cap:
                        live.popitem(last=False)
                        evicted = True
            else:
                late = False
                live.move_to_end(trace_id)
            if t is not None:
                times = t.times
                times[0] = now
                agents = t.agents
                if agent in agents:  # a repeat (retry): widen that agent's span
                    i = 2 * agents.index(agent) + 1
                    if start < times[i]:
                        times[i] = start
                    if end > times[i + 1]:
                        times[i + 1] = end
                else:
                    agents.append(agent)
                    times.append(start)
                    times.append(end)
                    if agent in self._pipeline:
                        t.need -= 1
                        if t.need == 0:
                            del live[trace_id]
                            latency = self._finalize(trace_id, t, _COMPLETE, now)
                if not ok:
                    if t.failed is None:
                        t.failed = set()
                    t.failed.add(agent)
                t.n += 1
        if latency >= 0.0:
            self._sink.on_complete(trace_id, latency)
        elif late:
            self._sink.on_late(1)
        if evicted:
            self._sink.on_evicted("capacity", 1)

    def _finalize(self, trace_id: str, t: _Trace, state: TraceState, now: float) -> float:
        """Move ``t`` to the finalized traces (lock held); returns its latency in ms."""
        times = t.times
        t.state = state
        latency = (max(times[2::2]) - min(times[1::2])) * 1000.0
        times[0] = now
        done = self._done
        done[trace_id] = t
        if len(done) > self._cap:
            done.popitem(last=False)
        return latency

    # queries -----------------------------------------------------------------------------------------
    def get(self, trace_id: str) -> TraceRecord | None:
        """The trace, in flight or finalized, or None."""
        with self._lock:
            t = self._live.get(trace_id) or self._done.get(trace_id)
            return None if t is None else t.record(trace_id)

    def sweep(self, now: float | None) -> None:
        """Finalize traces idle since ``now - ttl`` as incomplete; forget those finalized before it."""
        if now is None:
            return  # outcomes were reported as they happened
        expired: list[TraceRecord] = []
        deadline = now - self.settings.ttl_seconds
        with self._lock:
            live, done = self._live, self._done
            while live:
                trace_id, t = next(iter(live.items()))
                if t.times[0] > deadline:
                    break
                del live[trace_id]
                done.pop(trace_id, None)
                self._finalize(trace_id, t, _INCOMPLETE, now)
                self._recent.appendleft(trace_id)
                expired.append(t.record(trace_id))
            while done:
                trace_id, t = next(iter(done.items()))
                if t.times[0] > deadline:
                    break
                del done[trace_id]
        for record in expired:
            self._sink.on_expired(record)

    def recent_incomplete(self, limit: int) -> list[TraceRecord]:
        """Recently expired incomplete traces still held, newest first."""
        out: list[TraceRecord] = []
        with self._lock:
            for trace_id in self._recent:
                if len(out) >= limit:
                    break
                t = self._done.get(trace_id)
                if t is not None and t.state is _INCOMPLETE:
                    out.append(t.record(trace_id))
        return out

    def in_flight(self) -> int:
        """Traces not finalized yet."""
        return len(self._live)

    def flush(self) -> None:
        """Nothing is buffered."""

    def health(self) -> StoreHealth:
        """Always healthy."""
        return StoreHealth(self.backend, True)

    def close(self) -> None:
        """Nothing to release."""

    # heartbeats (ark_obs.heartbeat.HeartbeatStore) ---------------------------------------------------
    def beat(self, agent: str, at: float) -> bool:
        """Record a heartbeat from ``agent`` at ``at``."""
        self._beats[agent] = at
        return True

    def last_beats(self) -> dict[str, float]:
        """Every agent's last heartbeat time."""
        return dict(self._beats)

    def claim_outage(self, agent: str, since: float) -> bool:
        """In one process every outage is this process' to count."""
        return True

    def forget_agent(self, agent: str) -> None:
        """Stop tracking ``agent``."""
        self._beats.pop(agent, None)
