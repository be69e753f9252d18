"""Agent heartbeats: the monitor, not the agent, decides who is alive, within two heartbeat intervals.

>>> collector.record_heartbeat("Kenny")   # the agent, once per interval (the seed's 1 Hz)  # doctest: +SKIP

Beats go to a ``HeartbeatStore``: by default the trace monitor's store, so with
``ARK_OBS_TRACE_STORE=redis://...`` agents in other processes and hosts heartbeat into Redis and every
ark-obs replica sees them. A sweep (a daemon thread every quarter interval, and every scrape) marks an
agent down once it has been silent for ``down_after_intervals`` (1.5) intervals, so a dead agent is
reported within 1.75 intervals of its last beat; it counts ``agent_heartbeat_failures_total{agent}``
once per outage (claimed in Redis, so once across replicas) and marks the agent up again when beats
resume. Timestamps are the beating process' clock: hosts need synchronised clocks (NTP).

Agents that only send spans (OpenTelemetry, ``POST /spans``) count as alive while their spans arrive:
the trace monitor reports each agent's spans (at most every quarter second) as a *span beat*, kept next
to the heartbeats in the store (key ``~span:<agent>``), and an agent that never heartbeats is up while
a span of it arrived within ``spans_alive_seconds`` (the stall threshold, 6 s: it covers an OpenTelemetry
SDK's 5 s export delay). Past that it is unknown again (not exported), never down: spans stop when
traffic pauses too, and a dead agent under traffic shows as traces stalled at it. An agent that
heartbeats is judged on its heartbeats alone.
``spans_alive_seconds=None`` turns span beats off: span-only agents are then not tracked at all.

The configured pipeline agents, and the known agents outside it (``known``: the Watchdog and other named
services, ``ARK_OBS_KNOWN_AGENTS``), are always admitted and never forgotten (a dead Kenny stays reported
down). Other agents are admitted up to ``max_agents`` and forgotten once silent for
``forget_after_seconds``, so made-up names can neither lock the pipeline out nor stay forever;
``ark_agent_in_pipeline`` tells the alert rules which agents page and which are summarized.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from ark_obs import catalog
from ark_obs._periodic import Periodic
from ark_obs.registry import MAX_LABEL_VALUE_LENGTH
from ark_obs.source import MetricSource
from ark_obs.traces.model import StoreHealth, StoreUnavailable
from ark_obs.traces.monitor import TraceMonitor, default_pipeline, register, unregister

DEFAULT_INTERVAL_SECONDS: Final = 1.0
DEFAULT_DOWN_AFTER_INTERVALS: Final = 1.5
DEFAULT_MAX_AGENTS: Final = 1000
# An agent outside the pipeline silent this long is forgotten: long enough for its ticket alert to be
# seen, short enough that made-up names do not hold the agent cap for a day.
DEFAULT_FORGET_AFTER_SECONDS: Final = 3600.0
# ``metric`` label of heartbeats dropped in ark_obs_dropped_total
HEARTBEAT_METRIC: Final = "agent_heartbeat"
# span beats sit in the heartbeat store under this prefix (agent names start with a letter: no clash)
SPAN_BEAT_PREFIX: Final = "~span:"
DEFAULT_SPANS_ALIVE_SECONDS: Final = 6.0  # = traces.model.DEFAULT_STALL_SECONDS


class TracedSource(MetricSource, Protocol):
    """A metric source with a trace monitor: heartbeats share its store unless given one."""

    @property
    def traces(self) -> TraceMonitor:
        """The trace monitor whose store holds the heartbeats too."""


class HeartbeatStore(Protocol):
    """Where heartbeats are kept (``MemoryStore``, ``RedisStore``). Reads raise ``StoreUnavailable``."""

    @property
    def backend(self) -> str:
        """``memory`` or ``redis``."""

    @property
    def shared(self) -> bool:
        """Whether other processes see the same heartbeats."""

    def beat(self, agent: str, at: float) -> bool:
        """Record a beat without blocking; False if it could not be taken."""

    def last_beats(self) -> dict[str, float]:
        """Every agent's last beat (unix seconds)."""

    def claim_outage(self, agent: str, since: float) -> bool:
        """True for exactly one caller per outage (identified by the agent's last beat ``since``)."""

    def forget_agent(self, agent: str) -> None:
        """Stop tracking ``agent``."""

    def health(self) -> StoreHealth:
        """Whether the store answers."""


@dataclass(frozen=True, slots=True)
class AgentHeartbeat:
    """One agent's heartbeat state."""

    agent: str
    last_beat: float
    silent_seconds: float
    up: bool


class HeartbeatMonitor:
    """Receives heartbeats and detects silent agents (see the module docstring).

    ``sweep``: whether this monitor detects outages and exports the scrape-time families; None means
    yes for a store of its own (memory), no for a shared one (Redis), where the ark-obs service does.
    ``pipeline``: agents always admitted and never forgotten (default: ``$ARK_OBS_PIPELINE``, else
    Kyle..Aletheia); ``known``: more agents admitted and kept alike, outside the pipeline (they do not
    page); ``max_agents`` caps the others.
    """

    def __init__(
        self,
        collector: TracedSource,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        *,
        store: HeartbeatStore | None = None,
        down_after_intervals: float = DEFAULT_DOWN_AFTER_INTERVALS,
        max_agents: int = DEFAULT_MAX_AGENTS,
        forget_after_seconds: float = DEFAULT_FORGET_AFTER_SECONDS,
        sweep: bool | None = None,
        background: bool = True,
        pipeline: Sequence[str] | None = None,
        known: Sequence[str] = (),
        spans_alive_seconds: float | None = DEFAULT_SPANS_ALIVE_SECONDS,
    ) -> None:
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be positive, got {interval_seconds}")
        if not 1.0 <= down_after_intervals <= 2.0:
            # below one interval a punctual agent flaps; above two the outage is reported too late
            raise ValueError(f"down_after_intervals must be within [1, 2], got {down_after_intervals}")
        self.collector = collector
        self.interval = float(interval_seconds)
        self.down_after = self.interval * down_after_intervals
        self.forget_after = float(forget_after_seconds)
        self.max_agents = max_agents
        self.spans_alive = None if spans_alive_seconds is None else max(float(spans_alive_seconds), self.down_after)
        self.pipeline = frozenset(pipeline if pipeline is not None else default_pipeline())
        self.known = frozenset(known) - self.pipeline
        self._always = self.pipeline | self.known  # admitted past the cap, never forgotten
        self.store: HeartbeatStore = store if store is not None else collector.traces.store  # type: ignore[assignment]
        self.sweeping = (not self.store.shared) if sweep is None else sweep
        self._clock = collector.clock
        self._failures = collector.metric(catalog.AGENT_HEARTBEAT_FAILURES_TOTAL.name)
        self._agents: set[str] = set()  # agents outside the pipeline beating through this monitor (capped)
        self._beats: dict[str, float] = {}
        self._readable = False
        self._swept_at = 0.0
        self._down: dict[str, float] = {}  # agent -> the last beat before its current outage
        self._lock = threading.Lock()
        self._worker: Periodic | None = None
        self._scrape: _HeartbeatCollector | None = None
        if self.spans_alive is not None:
            traces = getattr(collector, "_traces", None) if store is not None else collector.traces
            if traces is not None:
                traces.agent_seen = self.span_beat
        if self.sweeping:
            self._scrape = _HeartbeatCollector(self)
            register(collector, self._scrape, "HeartbeatMonitor")
            if background:
                self._worker = Periodic(self, "sweep", self.interval / 4, "ark-obs-heartbeats")

    def beat(self, agent: str) -> None:
        """Record a heartbeat from ``agent`` now; never raises on bad data or a store failure."""
        self._beat(agent, agent)

    def span_beat(self, agent: str) -> None:
        """Record that a span of ``agent`` arrived now (the trace monitor calls this, throttled)."""
        self._beat(agent, SPAN_BEAT_PREFIX + agent)

    def _beat(self, agent: str, key: str) -> None:
        if agent not in self._agents and agent not in self._always:
            if not isinstance(agent, str) or not agent:
                raise TypeError(f"agent must be a non-empty string, got {agent!r}")
            registry = self.collector.registry
            if len(agent) > MAX_LABEL_VALUE_LENGTH:
                registry.drop(HEARTBEAT_METRIC, "label_too_long", f"agent name longer than {MAX_LABEL_VALUE_LENGTH}")
                return
            if len(self._agents) >= self.max_agents:
                registry.drop(HEARTBEAT_METRIC, "cardinality", f"more than {self.max_agents} agents")
                return
            self._agents.add(agent)
        try:
            taken = self.store.beat(key, self._clock())
        except Exception:  # a store bug must not reach the agent
            taken = False
        if not taken:
            self.collector.registry.drop(HEARTBEAT_METRIC, "store_unavailable", "heartbeat store unavailable")

    def sweep(self, now: float | None = None) -> bool:
        """Detect outages and recoveries now; False if the store could not be read."""
        if not self.sweeping:
            return False
        with self._lock:
            try:
                beats = self.store.last_beats()
            except StoreUnavailable:
                self._readable = False
                return False
            now = self._clock() if now is None else now
            spans = {k[len(SPAN_BEAT_PREFIX) :]: t for k, t in beats.items() if k.startswith(SPAN_BEAT_PREFIX)}
            beats = {k: t for k, t in beats.items() if not k.startswith(SPAN_BEAT_PREFIX)}
            span_only: set[str] = set()
            if self.spans_alive is not None:
                for agent, at in spans.items():  # judged on spans only if it never heartbeats
                    if agent not in beats and now - at <= self.spans_alive:
                        beats[agent] = at  # an idle span-only agent is unknown again, never down
                        span_only.add(agent)
            for agent, last in list(beats.items()):
                silent = now - last
                if silent > self.forget_after and agent not in self._always:
                    self._forget(agent)
                    del beats[agent]
                elif silent > self.down_after and agent not in span_only:
                    if self._down.get(agent) != last:  # a new outage
                        self._down[agent] = last
                        if self._claim(agent, last):
                            self._failures.labels(agent).inc()
                elif agent in self._down:
                    del self._down[agent]  # beats resumed
            self._beats = beats
            self._swept_at = now
            self._readable = True
            return True

    def _claim(self, agent: str, last: float) -> bool:
        try:
            return self.store.claim_outage(agent, last)
        except StoreUnavailable:
            return False  # counted by another replica, or missed while Redis is down

    def _forget(self, agent: str) -> None:
        try:
            self.store.forget_agent(agent)
            self.store.forget_agent(SPAN_BEAT_PREFIX + agent)
        except StoreUnavailable:
            return
        self._down.pop(agent, None)
        self._agents.discard(agent)

    def status(self) -> list[AgentHeartbeat] | None:
        """Every known agent's state as of the last sweep, or None when the store could not be read.

        Up and down change only in a sweep, together with the failure count, so they always agree.
        """
        with self._lock:
            if not self._readable:
                return None
            now, down = self._swept_at, self._down
            return [
                AgentHeartbeat(agent, last, now - last, agent not in down)
                for agent, last in sorted(self._beats.items())
            ]

    def is_up(self, agent: str) -> bool | None:
        """Whether ``agent`` beat within the allowed silence at the last sweep; None if unknown."""
        for state in self.status() or ():
            if state.agent == agent:
                return state.up
        return None

    def check(self) -> StoreHealth:
        """The heartbeat store's health, for readiness."""
        return self.store.health()

    def close(self) -> None:
        """Stop the background sweep and the scrape-time families."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._scrape is not None:
            unregister(self.collector, self._scrape)
            self._scrape = None


class _HeartbeatCollector:
    """Scrape-time families: last beat and up per agent (after a fresh sweep), and the interval."""

    def __init__(self, monitor: HeartbeatMonitor) -> None:
        self._monitor = monitor

    def describe(self) -> Iterator[Metric]:
        """The families this collector yields (names only)."""
        for spec in (
            catalog.ARK_AGENT_LAST_HEARTBEAT_TIMESTAMP_SECONDS,
            catalog.ARK_AGENT_UP,
            catalog.ARK_AGENT_HEARTBEAT_INTERVAL_SECONDS,
            catalog.ARK_AGENT_IN_PIPELINE,
        ):
            yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        """Sweep, then export; if the store cannot be read, per-agent families are left out."""
        monitor = self._monitor
        monitor.sweep()
        spec = catalog.ARK_AGENT_HEARTBEAT_INTERVAL_SECONDS
        yield GaugeMetricFamily(spec.name, spec.help, value=monitor.interval)
        spec = catalog.ARK_AGENT_IN_PIPELINE
        in_pipeline = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for agent in sorted(monitor.pipeline):
            in_pipeline.add_metric([agent], 1.0)
        yield in_pipeline
        states = monitor.status()
        if states is None:
            return
        last_spec, up_spec = catalog.ARK_AGENT_LAST_HEARTBEAT_TIMESTAMP_SECONDS, catalog.ARK_AGENT_UP
        last = GaugeMetricFamily(last_spec.name, last_spec.help, labels=last_spec.labels)
        up = GaugeMetricFamily(up_spec.name, up_spec.help, labels=up_spec.labels)
        for state in states:
            last.add_metric([state.agent], state.last_beat)
            up.add_metric([state.agent], 1.0 if state.up else 0.0)
        yield last
        yield up
