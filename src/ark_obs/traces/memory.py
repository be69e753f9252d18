"""The embedded trace store: bounded, in this process, nothing to start.

In-flight traces live in an ``OrderedDict`` kept in last-span order, so expiry and capacity eviction
pop from its front in O(1); finalized traces move to a second one (same bound) for ``ttl_seconds``, or
``history_seconds`` when longer, so ``/traces/{id}`` answers as long as dashboards link to them.
Stalled traces (no span for ``stall_seconds``) are the front of that order: ``_advance`` moves them,
oldest first, into a third ``OrderedDict`` and counts them per agent they wait on, so each trace moves
at most once per stall and ``stalled()`` is a count, whatever the number in flight; a span moves its
trace back to the fresh end.
A trace is one flat list (layout below) plus a list of agent names (shared strings): about 0.5 KiB
for five spans (bench/bench_traces.py measures it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any, Final, TypeAlias

from ark_obs.traces.model import (
    NullSink,
    Span,
    StoreHealth,
    TraceRecord,
    TraceSettings,
    TraceSink,
    TraceState,
    first_missing,
)

# A trace is a list, not an object: creating a class instance per trace costs several times more on the
# recording path. Layout (the hot path uses the literal indices):
#   [0] last span time (in flight) or finalization time   [1] pipeline agents still missing, or a state
#   [2] span count   [3] set of agents with a failed span, or None   [4] agent names in arrival order
#   [5 + 2i], [6 + 2i]  first start and last end of agent i (unix seconds)
_Trace: TypeAlias = list[Any]
_SEEN, _NEED, _COUNT, _FAILED, _AGENTS, _TIMES = 0, 1, 2, 3, 4, 5
_COMPLETE: Final = -1  # values of [1] once finalized
_INCOMPLETE: Final = -2


def _state(t: _Trace) -> TraceState:
    need = t[_NEED]
    if need == _COMPLETE:
        return TraceState.COMPLETE
    return TraceState.INCOMPLETE if need == _INCOMPLETE else TraceState.IN_FLIGHT


def _record(trace_id: str, t: _Trace) -> TraceRecord:
    failed = t[_FAILED] or ()
    spans = [
        Span(agent, t[_TIMES + 2 * i], t[_TIMES + 2 * i + 1], agent not in failed) for i, agent in enumerate(t[_AGENTS])
    ]
    spans.sort(key=lambda s: s.start)  # stable: equal starts keep arrival order
    state = _state(t)
    return TraceRecord(trace_id, tuple(spans), state, t[_COUNT], t[_SEEN] if state is TraceState.IN_FLIGHT else None)


class MemoryStore:
    """Traces and heartbeats in this process (see ``ark_obs.traces.TraceStore``)."""

    backend: Final = "memory"
    shared: Final = False

    def __init__(self) -> None:
        self._live: OrderedDict[str, _Trace] = OrderedDict()
        # in flight too, idle for stall_seconds at the last _advance; all older than any trace in _live
        self._stalled: OrderedDict[str, _Trace] = OrderedDict()
        self._waiting: dict[str, int] = {}  # stalled traces by the pipeline agent they wait on
        self._done: OrderedDict[str, _Trace] = OrderedDict()
        self._recent: deque[str] = deque()
        self._failed: deque[str] = deque()
        lock = threading.Lock()
        self._lock = lock
        # bound methods: ``with lock`` costs twice as much as calling them on the hot path
        self._acquire, self._release = lock.acquire, lock.release
        self._beats: dict[str, float] = {}
        self.bind(TraceSettings(), NullSink())

    def bind(self, settings: TraceSettings, sink: TraceSink) -> None:
        """Attach the monitor's settings and outcome sink."""
        self.settings = settings
        self._sink = sink
        self._pipeline = frozenset(settings.pipeline)
        self._need = len(settings.pipeline)
        self._cap = settings.max_in_flight
        self._max_agents = settings.max_agents
        self._recent = deque(self._recent, maxlen=settings.recent_max)
        self._failed = deque(self._failed, maxlen=settings.recent_max)

    # the hot path ------------------------------------------------------------------------------------
    def add(self, trace_id: str, agent: str, start: float, end: float, ok: bool, now: float) -> None:
        """Record a span; finalizes the trace when it completes the pipeline."""
        latency = -1.0
        late = evicted = full = False
        failed: TraceRecord | None = None
        self._acquire()
        try:
            live = self._live
            t = live.get(trace_id)
            if t is None:
                t = self._stalled.pop(trace_id, None) if self._stalled else None
                if t is not None:  # a span for a stalled trace: it is fresh again
                    self._unstall(t)
                    live[trace_id] = t
                    t[0] = now
                elif trace_id in self._done:
                    late = True
                    return
                else:
                    t = live[trace_id] = [now, self._need, 0, None, []]
                    if len(live) + len(self._stalled) > self._cap:
                        self._evict_oldest()
                        evicted = True
            else:
                live.move_to_end(trace_id)
                t[0] = now
            agents = t[4]
            if (
                len(agents) >= self._max_agents
                and agent not in self._pipeline
                and agent not in agents
                and len(agents) - len(self._pipeline.intersection(agents)) >= self._max_agents
            ):
                full = True  # one trace must not grow without bound (nor its report); pipeline agents always fit
                return
            t[2] += 1
            if agent in agents:  # a repeat (retry): widen that agent's span
                i = 5 + 2 * agents.index(agent)
                if start < t[i]:
                    t[i] = start
                if end > t[i + 1]:
                    t[i + 1] = end
            else:
                agents.append(agent)
                t.append(start)
                t.append(end)
                if agent in self._pipeline:
                    t[1] -= 1
            if not ok:
                if t[3] is None:
                    t[3] = set()
                t[3].add(agent)
            if t[1] == 0:
                del live[trace_id]
                latency = self._finalize(trace_id, t, _COMPLETE, now)
                if t[3] is not None:
                    self._failed.appendleft(trace_id)
                    failed = _record(trace_id, t)
        finally:
            self._release()
            # outcomes are reported after the lock is released: the sink records metrics
            if latency >= 0.0:
                self._sink.on_complete(trace_id, latency, failed)
            elif late:
                self._sink.on_late(1)
            if evicted:
                self._sink.on_evicted("capacity", 1)
            if full:
                self._sink.on_refused(1, f"trace {trace_id} holds {self._max_agents} agents already")

    def _evict_oldest(self) -> None:
        """Drop the least recently active in-flight trace (lock held): a stalled one if any."""
        if self._stalled:
            _, t = self._stalled.popitem(last=False)
            self._unstall(t)
        else:
            self._live.popitem(last=False)

    def _unstall(self, t: _Trace) -> None:
        """``t`` leaves the stalled traces (lock held; its agents are as they were when it stalled)."""
        self._waiting[first_missing(t[_AGENTS], self.settings.pipeline)] -= 1

    def _advance(self, now: float) -> None:
        """Move traces idle for ``stall_seconds`` at ``now`` to the stalled ones (lock held), oldest first."""
        deadline = now - self.settings.stall_seconds
        live, stalled, waiting, pipeline = self._live, self._stalled, self._waiting, self.settings.pipeline
        while live:
            trace_id, t = next(iter(live.items()))
            if t[_SEEN] > deadline:
                break
            del live[trace_id]
            stalled[trace_id] = t
            agent = first_missing(t[_AGENTS], pipeline)
            waiting[agent] = waiting.get(agent, 0) + 1

    def _finalize(self, trace_id: str, t: _Trace, state: int, now: float) -> float:
        """Move ``t`` to the finalized traces (lock held); returns its latency in ms."""
        t[_NEED] = state
        latency: float = (max(t[_TIMES + 1 :: 2]) - min(t[_TIMES::2])) * 1000.0
        t[_SEEN] = now
        done = self._done
        done[trace_id] = t
        if len(done) > self._cap:
            done.popitem(last=False)
        return latency

    # queries -----------------------------------------------------------------------------------------
    def get(self, trace_id: str) -> TraceRecord | None:
        """The trace, in flight or finalized, or None."""
        with self._lock:
            t = self._live.get(trace_id) or self._stalled.get(trace_id) or self._done.get(trace_id)
            return None if t is None else _record(trace_id, t)

    def sweep(self, now: float | None) -> None:
        """Finalize traces idle since ``now - ttl`` as incomplete; forget those finalized before it."""
        if now is None:
            return  # outcomes were reported as they happened
        expired: list[TraceRecord] = []
        deadline = now - self.settings.ttl_seconds
        with self._lock:
            self._advance(now)
            live, done, stalled = self._live, self._done, self._stalled
            while stalled:
                trace_id, t = next(iter(stalled.items()))
                if t[_SEEN] > deadline:
                    break
                del stalled[trace_id]
                self._unstall(t)
                self._finalize(trace_id, t, _INCOMPLETE, now)
                self._recent.appendleft(trace_id)
                expired.append(_record(trace_id, t))
            while live and not stalled:
                trace_id, t = next(iter(live.items()))
                if t[_SEEN] > deadline:
                    break
                del live[trace_id]
                self._finalize(trace_id, t, _INCOMPLETE, now)
                self._recent.appendleft(trace_id)
                expired.append(_record(trace_id, t))
            forget = now - max(self.settings.ttl_seconds, self.settings.history_seconds)
            while done:
                trace_id, t = next(iter(done.items()))
                if t[_SEEN] > forget:
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
                if t is not None and t[_NEED] == _INCOMPLETE:
                    out.append(_record(trace_id, t))
        return out

    def recent_failed(self, limit: int) -> list[TraceRecord]:
        """Recently completed traces with a failed span still held, newest first."""
        out: list[TraceRecord] = []
        with self._lock:
            for trace_id in self._failed:
                if len(out) >= limit:
                    break
                t = self._done.get(trace_id)
                if t is not None and t[_NEED] == _COMPLETE:
                    out.append(_record(trace_id, t))
        return out

    def in_flight(self) -> int:
        """Traces not finalized yet."""
        return len(self._live) + len(self._stalled)

    def history_reach(self, now: float) -> float | None:
        """How long ago the oldest finalized trace still held was finalized."""
        with self._lock:
            if not self._done:
                return None
            return now - float(next(iter(self._done.values()))[_SEEN])

    def stalled(self, now: float) -> dict[str, int]:
        """Stalled traces by the pipeline agent they wait on: moves the newly stalled, then counts."""
        with self._lock:
            self._advance(now)
            waiting = self._waiting
            return {agent: waiting.get(agent, 0) for agent in self.settings.pipeline}

    def recent_stalled(self, now: float, limit: int) -> list[TraceRecord]:
        """Stalled traces, the most recently active first."""
        out: list[TraceRecord] = []
        with self._lock:
            self._advance(now)
            for trace_id, t in reversed(self._stalled.items()):
                if len(out) >= limit:
                    break
                out.append(_record(trace_id, t))
        return out

    def flush(self) -> None:
        """Nothing is buffered."""

    def health(self) -> StoreHealth:
        """Always healthy."""
        return StoreHealth(self.backend, True)

    def close(self) -> None:
        """Nothing to release."""

    # heartbeats (ark_obs.traces.heartbeats.HeartbeatStore) ---------------------------------------------------
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
