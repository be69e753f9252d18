"""The shared trace store: Redis, for agents in many processes and hosts and for several ark-obs replicas.

>>> store = open_store("redis://127.0.0.1:6379/0")  # or "memory"   # doctest: +SKIP

Writes never block the caller: ``add`` and ``beat`` append to a bounded in-process buffer that a
daemon thread sends every ``flush_interval`` (50 ms) as one Lua call per batch of up to ``batch_size``
spans, so spans are visible to readers well within a second. Reads (``get``, the sweep, scrape-time
counts) use short socket timeouts (``timeout``, 250 ms) and no retries; the background writer allows
``write_timeout`` (1 s) for a batch. When Redis fails the store
marks itself unhealthy, drops new spans at once (the monitor counts them in
``ark_obs_dropped_total{reason="store_unavailable"}``) and probes Redis every ``DOWN_PROBE_SECONDS``
until it answers (every ``retry_seconds`` when idle and healthy).

Keys, all under ``prefix`` (default ``ark:obs:``) and all with TTLs, so nothing grows without bound:

- ``t:<trace id>``  hash: ``@<agent>`` = "start end arrival ok", ``n`` spans, ``state`` once finalized,
  ``x`` when its expiry was last renewed; TTL 2 x ttl while in flight (renewed every ttl / 2, so the
  sweeper can still read it when it expires), ttl once finalized.
- ``inflight``  sorted set of in-flight trace ids by last span time, capped at ``max_in_flight``
  (the least recently touched are evicted and deleted); a sweeper expires those idle for its ttl.
- ``w:<agent>``  per pipeline agent, the in-flight traces whose first missing agent it is, by last span
  time: the stalled traces waiting on it are one ZCOUNT (``stalled``), never a scan.
- ``failed``  recently completed traces with a failed span (capped), pushed by the sweeper that claims them.
- ``hist``  finalized traces by finalization time: their hashes are kept ``history_seconds`` (at least
  ``ttl``) so ``/traces/{id}`` answers as long as dashboards link to them, at most ``max_in_flight`` per
  shard (the sweeper deletes the oldest beyond).
- ``done``  list of traces completed but not yet accounted for by a sweeping monitor (capped).
- ``late``, ``evicted``  counters not yet accounted for; ``recent``  recently expired ids (capped).
- ``hb``  hash agent -> last heartbeat (unix s); ``hbdown`` agent -> the beat an outage was counted for.

On Redis Cluster (``redis+cluster://host:port[,host:port...]/``) the same scripts run per shard: the
global structures above exist once per shard under ``<prefix>{sN}:`` (``N`` hash tags chosen so their
slots spread evenly over the 16384), and a trace's hash lives in the shard its id hashes to, so every
Lua call touches the keys of one slot. A batch sends one call per shard it touches, in one cluster
pipeline (grouped per node); the sweep and scrape-time counts visit every shard; heartbeats live in
the shard of their agent. Per shard, in-flight traces are capped at ``ceil(max_in_flight / shards)``
(least recently touched evicted within the shard), so the total stays bounded by ``max_in_flight``
(rounded up to a multiple of the shard count).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from ark_obs._periodic import Periodic
from ark_obs._redact import redact_url, scrub
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.model import (
    NullSink,
    Span,
    StoreHealth,
    StoreUnavailable,
    TraceRecord,
    TraceSettings,
    TraceSink,
    TraceState,
    TraceStore,
)
from ark_obs.traces.redis_cluster import (
    CLUSTER_SCHEMES,
    LazyCluster,
    cluster_prefixes,
    make_cluster_client,
    parse_cluster_url,
)
from ark_obs.traces.redis_scripts import (
    _ADD_LUA,
    _CLAIM_OUTAGE_LUA,
    _SWEEP_LUA,
)

log = logging.getLogger("ark_obs")

DEFAULT_PREFIX: Final = "ark:obs:"
DEFAULT_TIMEOUT_SECONDS: Final = 0.25
DEFAULT_WRITE_TIMEOUT_SECONDS: Final = 1.0
DEFAULT_FLUSH_SECONDS: Final = 0.05
DEFAULT_BATCH_SIZE: Final = 500  # spans per Lua call: a few ms of Redis time at most
DEFAULT_MAX_PENDING: Final = 100_000
DEFAULT_RETRY_SECONDS: Final = 1.0
# while down, Redis is probed this often (at most every retry_seconds): writes resume within this long of
# Redis (or the cluster's slots) being served again; the probe runs on the writer thread, never a request's
DOWN_PROBE_SECONDS: Final = 0.1
HEARTBEAT_KEY_TTL_MS: Final = 86_400_000
CLUSTER_SPANS_PER_CALL: Final = 250  # batch size on a cluster: this many spans per shard (measured in bench_cluster)
MAX_CLUSTER_BATCH: Final = 8000
_SWEEP_LIMIT: Final = 1000
_REDIS_ERRORS: Final = (RedisError, RedisClusterException, OSError)


def make_client(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> redis.Redis:
    """A Redis client with short socket timeouts and no retries (a down Redis must fail fast)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=True,
    )


def _drop_idle_connections(client: Any) -> None:
    """Close the idle pooled connections of a Redis or (built) Redis Cluster client; never raises."""
    try:
        if isinstance(client, redis.Redis):
            client.connection_pool.disconnect(inuse_connections=False)
            return
        built = getattr(client, "built", None)
        cluster = built() if callable(built) else None
        for node in cluster.get_nodes() if cluster is not None else ():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect(inuse_connections=False)
    except Exception:  # closing sockets is best effort: a failure leaves them to fail on their own
        log.debug("could not close idle Redis connections", exc_info=True)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def parse_trace(
    trace_id: str, fields: Mapping[str, str], state: TraceState | None = None, last_seen: float | None = None
) -> TraceRecord | None:
    """A ``TraceRecord`` from a trace hash (None if it holds no span); ``last_seen``: its in-flight index score."""
    spans: list[tuple[float, int, Span]] = []
    for name, value in fields.items():
        if name.startswith("@"):
            start, end, seq, ok = value.split(" ")
            spans.append((float(start), int(seq), Span(name[1:], float(start), float(end), ok == "1")))
    if not spans:
        return None
    spans.sort(key=lambda x: (x[0], x[1]))
    if state is None:
        state = TraceState(fields["state"]) if "state" in fields else TraceState.IN_FLIGHT
    return TraceRecord(
        trace_id,
        tuple(s for _, _, s in spans),
        state,
        int(fields.get("n", len(spans))),
        last_seen if state is TraceState.IN_FLIGHT else None,
    )


class RedisStore:
    """Traces and heartbeats in Redis (see ``ark_obs.traces.TraceStore`` and the module docstring)."""

    backend: Final = "redis"
    shared: Final = True

    def __init__(
        self,
        client: redis.Redis | Any,
        *,
        writer: redis.Redis | Any | None = None,
        prefix: str = DEFAULT_PREFIX,
        shards: int | None = None,
        flush_interval: float = DEFAULT_FLUSH_SECONDS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_pending: int = DEFAULT_MAX_PENDING,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        url: str = "",
    ) -> None:
        self.client = client
        # the background writer may wait longer than readers: no agent waits on it, and a loaded Redis
        # that takes a few hundred ms for a batch is slow, not down
        self.writer = writer or client
        self.prefix = prefix
        self.url = url
        # None: one Redis, keys straight under the prefix; N: N hash-tagged shards on a cluster
        self._prefixes = (prefix,) if shards is None else cluster_prefixes(prefix, shards)
        self._batch = batch_size
        self._max_pending = max_pending
        self._retry_seconds = retry_seconds
        self._pending: deque[tuple[str, str, float, float, bool, float]] = deque()
        self._beats: dict[str, float] = {}
        self._beats_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._healthy = True
        self._detail = ""
        self._down_since: float | None = None  # Unix time of the failure that made it unhealthy
        self._next_probe = 0.0  # monotonic time of the next liveness probe when idle or down
        self._add_script = client.register_script(_ADD_LUA)
        self._primaries: Any = None if shards is None else RedisCluster.PRIMARIES
        self._sweep_script = client.register_script(_SWEEP_LUA)
        self._claim_script = client.register_script(_CLAIM_OUTAGE_LUA)
        self._logged = False
        self.bind(TraceSettings(), NullSink())
        self._worker: Periodic | None = Periodic(self, "_flush_pending", flush_interval, "ark-obs-redis")
        # an agent that exits right after its last span still delivers it (bounded by write_timeout)
        atexit.register(_flush_at_exit, weakref.ref(self))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
        **kw: Any,
    ) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://host:port/db``); reads time out after ``timeout``."""
        writer = make_client(url, max(timeout, write_timeout))
        return cls(make_client(url, timeout), writer=writer, url=url, **kw)

    @classmethod
    def from_cluster_url(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
        **kw: Any,
    ) -> RedisStore:
        """A store on the Redis Cluster reached through the seed nodes of ``redis+cluster://host:port,.../``.

                The writer retries a failed call once (after refreshing the slot map), the readers never. A batch
        holds ``250 x shards`` spans (at most 8000), so each shard's Lua call carries about 250.
        """
        kw.setdefault("shards", parse_cluster_url(url)[2])
        # a batch is split into one Lua call per shard: a bigger batch keeps calls as full as standalone ones
        kw.setdefault("batch_size", min(CLUSTER_SPANS_PER_CALL * kw["shards"], MAX_CLUSTER_BATCH))
        writer = make_cluster_client(url, max(timeout, write_timeout), attempts=1)
        return cls(make_cluster_client(url, timeout), writer=writer, url=url, **kw)

    @property
    def shard_prefixes(self) -> tuple[str, ...]:
        """Every shard's key prefix (one on a standalone Redis)."""
        return self._prefixes

    def _shard(self, name: str) -> str:
        prefixes = self._prefixes
        if len(prefixes) == 1:
            return prefixes[0]
        return prefixes[zlib.crc32(name.encode()) % len(prefixes)]

    def bind(self, settings: TraceSettings, sink: TraceSink) -> None:
        """Attach the monitor's settings and outcome sink."""
        self.settings = settings
        self._sink = sink
        self._ttl_ms = max(1, math.ceil(settings.ttl_seconds * 1000))
        shards = len(self._prefixes)
        self._recent_per_shard = max(1, math.ceil(settings.recent_max / shards))
        self._pipeline_json = json.dumps(settings.pipeline)
        self._history_ms = max(self._ttl_ms, math.ceil(settings.history_seconds * 1000))
        self._cap_per_shard = max(1, math.ceil(settings.max_in_flight / shards))
        self._head: list[Any] = [
            self._ttl_ms,
            self._cap_per_shard,
            json.dumps(settings.pipeline),
            settings.max_agents,
            self._history_ms,
        ]

    # writes: buffered, never blocking ---------------------------------------------------------------
    def add(self, trace_id: str, agent: str, start: float, end: float, ok: bool, now: float) -> None:
        """Buffer a span; dropped (and counted) at once while Redis is down or the buffer is full."""
        pending = self._pending
        if not self._healthy or len(pending) >= self._max_pending:
            self._sink.on_dropped(1, self._detail or f"write buffer full ({self._max_pending} spans)")
            return
        pending.append((trace_id, agent, start, end, ok, now))
        if len(pending) == self._batch and self._worker is not None:
            self._worker.wake()

    def beat(self, agent: str, at: float) -> bool:
        """Buffer a heartbeat (the newest per agent wins); False while Redis is down."""
        if not self._healthy:
            return False
        with self._beats_lock:
            self._beats[agent] = at
        return True

    def flush(self) -> None:
        """Send buffered spans and heartbeats now (from the caller's thread)."""
        self._flush_pending()

    def _flush_pending(self) -> None:
        with self._flush_lock:
            if not self._healthy or (not self._pending and not self._beats):
                if time.monotonic() < self._next_probe:
                    if not self._healthy:
                        self._drop_pending()
                    return
                self._probe()
                if not self._healthy:
                    self._drop_pending()
                    return
            while self._pending or self._beats:
                spans: list[tuple[str, str, float, float, bool, float]] = []
                pending = self._pending
                while pending and len(spans) < self._batch:
                    spans.append(pending.popleft())
                with self._beats_lock:
                    beats, self._beats = self._beats, {}
                try:
                    lost, error = self._write(spans, beats)
                except _REDIS_ERRORS as exc:
                    lost, error = len(spans), exc
                if error is not None:
                    # spans of a failed call are counted here, never acknowledged; on a cluster the
                    # shards that answered keep theirs
                    self._failed(error)
                    self._sink.on_dropped(lost, self._detail)
                    self._drop_pending()
                    return

    def _write(
        self, spans: list[tuple[str, str, float, float, bool, float]], beats: dict[str, float]
    ) -> tuple[int, BaseException | None]:
        """Send one batch; the number of spans not written and the first error (None: all written)."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for trace_id, agent, start, end, ok, seen in spans:
            # one JSON argument: the C encoder beats packing six Redis arguments per span; the common
            # span (ok, start = end = seen) travels as [trace id, agent, time]
            span = (trace_id, agent, start) if ok and start == end == seen else (trace_id, agent, start, end, ok, seen)
            groups.setdefault(self._shard(trace_id), []).append(span)
        calls: list[tuple[str, list[tuple[Any, ...]]]] = list(groups.items())
        sha = self._add_script.sha
        hb: dict[str, dict[Any, Any]] = {}
        for agent, at in beats.items():
            hb.setdefault(self._shard(agent) + "hb", {})[agent] = at
        pipe = self.writer.pipeline(transaction=False)
        for prefix, group in calls:
            # execute_command: redis-py's cluster pipeline refuses evalsha() but routes EVALSHA by its key
            pipe.execute_command("EVALSHA", sha, 1, prefix + "inflight", prefix, *self._head, json.dumps(group))
        for key, mapping in hb.items():
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, HEARTBEAT_KEY_TTL_MS)
        results = list(pipe.execute(raise_on_error=False))
        retry = [i for i, r in enumerate(results[: len(calls)]) if isinstance(r, NoScriptError)]
        if retry:
            # a fresh server (or a promoted replica) has no script cache: load it everywhere, send again
            self.writer.script_load(_ADD_LUA)  # on a cluster redis-py loads it on every primary
            pipe = self.writer.pipeline(transaction=False)
            for i in retry:
                prefix, group = calls[i]
                pipe.execute_command("EVALSHA", sha, 1, prefix + "inflight", prefix, *self._head, json.dumps(group))
            for i, r in zip(retry, pipe.execute(raise_on_error=False), strict=True):
                results[i] = r
        lost, refused, error = 0, 0, None
        for (_, group), result in zip(calls, results, strict=False):
            if isinstance(result, BaseException):
                lost += len(group)
                error = error or result
            else:
                refused += int(result[1])
        if refused:
            self._sink.on_refused(
                refused, f"a trace holds {self.settings.max_agents} agents already (batch of {len(spans)})"
            )
        if error is None:
            error = next((r for r in results[len(calls) :] if isinstance(r, BaseException)), None)
        return lost, error

    def _drop_pending(self) -> None:
        n = len(self._pending)
        self._pending.clear()
        with self._beats_lock:
            self._beats.clear()  # heartbeats lost with a failed write are not counted: the next one retries
        self._sink.on_dropped(n, self._detail)

    # health ------------------------------------------------------------------------------------------
    def _probe(self) -> None:
        try:
            if self._primaries is None:
                self.client.ping()
            else:
                # a fresh slot map for both clients (a promoted replica, moved slots), then every
                # primary must answer: a shard whose primary is down loses its writes
                for client in (self.client, self.writer):
                    client.nodes_manager.initialize()  # type: ignore[union-attr]
                    client.ping(target_nodes=self._primaries)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return
        if not self._healthy:
            log.warning("ark-obs trace store %s is reachable again", redact_url(self.url or "redis"))
        self._healthy, self._detail, self._down_since = True, "", None
        self._next_probe = time.monotonic() + self._retry_seconds

    def _failed(self, exc: BaseException) -> None:
        # the detail reaches logs, /readyz and the dropped counter's log line: no credential in it
        why = scrub(repr(exc), self.url, secrets=_client_secrets(self.client))
        if self._healthy:
            log.warning("ark-obs trace store %s is unavailable: %s", redact_url(self.url or "redis"), why)
            self._down_since = time.time()
            # idle pooled connections to a node that failed are stale once it is back (restarted, or its
            # port reused): each would fail one more call, one probe interval apart
            for client in (self.client, self.writer):
                _drop_idle_connections(client)
        self._healthy = False
        self._detail = f"redis unavailable: {why}"
        self._next_probe = time.monotonic() + min(self._retry_seconds, DOWN_PROBE_SECONDS)

    def _check(self) -> None:
        if not self._healthy:
            raise StoreUnavailable(self._detail)

    def health(self) -> StoreHealth:
        """Healthy unless the last write or probe failed (probed every ``retry_seconds`` when idle)."""
        return StoreHealth(self.backend, self._healthy, self._detail, None if self._healthy else self._down_since)

    # reads: short timeouts, raise StoreUnavailable -----------------------------------------------------
    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        self._check()
        try:
            return fn(*args, **kw)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            raise StoreUnavailable(self._detail) from exc

    def get(self, trace_id: str) -> TraceRecord | None:
        """The trace, in flight or finalized, or None."""

        def read() -> tuple[dict[str, str], Any]:
            prefix = self._shard(trace_id)
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(prefix + "t:" + trace_id)
            pipe.zscore(prefix + "inflight", trace_id)
            fields, score = pipe.execute()
            return fields, score

        fields, score = self._call(read)
        return parse_trace(trace_id, fields, last_seen=None if score is None else float(score))

    def in_flight(self) -> int:
        """Traces not finalized yet, over every process writing to this Redis."""
        if len(self._prefixes) == 1:
            return int(self._call(self.client.zcard, self._prefixes[0] + "inflight"))

        def count() -> int:
            pipe = self.client.pipeline(transaction=False)
            for prefix in self._prefixes:
                pipe.zcard(prefix + "inflight")
            return sum(int(n) for n in pipe.execute())

        return int(self._call(count))

    def history_reach(self, now: float) -> float | None:
        """How long ago the oldest finalized trace still held was finalized (None: none is held)."""

        def read() -> float | None:
            pipe = self.client.pipeline(transaction=False)
            for prefix in self._prefixes:
                pipe.zrange(prefix + "hist", 0, 0, withscores=True)
            oldest = [float(got[0][1]) for got in pipe.execute() if got]
            return now - min(oldest) if oldest else None

        reach: float | None = self._call(read)
        return reach

    def stalled(self, now: float) -> dict[str, int]:
        """Stalled traces by the pipeline agent they wait on: one ZCOUNT per shard and agent."""
        pipeline = self.settings.pipeline
        deadline = repr(now - self.settings.stall_seconds)

        def count() -> dict[str, int]:
            pipe = self.client.pipeline(transaction=False)
            for prefix in self._prefixes:
                for agent in pipeline:
                    pipe.zcount(prefix + "w:" + agent, "-inf", deadline)
            counts = dict.fromkeys(pipeline, 0)
            for i, n in enumerate(pipe.execute()):
                counts[pipeline[i % len(pipeline)]] += int(n)
            return counts

        return dict(self._call(count))

    def recent_stalled(self, now: float, limit: int) -> list[TraceRecord]:
        """Stalled traces, the most recently active first (at most ``limit`` read per shard and agent)."""
        if limit <= 0:
            return []
        deadline = repr(now - self.settings.stall_seconds)

        def read() -> list[TraceRecord]:
            pipe = self.client.pipeline(transaction=False)
            prefixes = [prefix for prefix in self._prefixes for _ in self.settings.pipeline]
            for prefix in self._prefixes:
                for agent in self.settings.pipeline:
                    pipe.zrevrangebyscore(prefix + "w:" + agent, deadline, "-inf", start=0, num=limit, withscores=True)
            found = [
                (float(score), prefix, str(member))
                for prefix, got in zip(prefixes, pipe.execute(), strict=True)
                for member, score in got
            ]
            found.sort(key=lambda x: x[0], reverse=True)
            found = found[:limit]
            pipe = self.client.pipeline(transaction=False)
            for _, prefix, trace_id in found:
                pipe.hgetall(prefix + "t:" + trace_id)
            out = []
            for (score, _, trace_id), fields in zip(found, pipe.execute(), strict=True):
                record = parse_trace(trace_id, fields, last_seen=score)
                if record is not None and record.state is TraceState.IN_FLIGHT:
                    out.append(record)
            return out

        return list(self._call(read))

    def recent_failed(self, limit: int) -> list[TraceRecord]:
        """Recently completed traces with a failed span still held, newest first."""
        return self._recent_list("failed", TraceState.COMPLETE, limit)

    def recent_incomplete(self, limit: int) -> list[TraceRecord]:
        """Recently expired incomplete traces still held, newest first."""
        return self._recent_list("recent", TraceState.INCOMPLETE, limit)

    def _recent_list(self, name: str, state: TraceState, limit: int) -> list[TraceRecord]:
        if limit <= 0:
            return []

        def read() -> list[TraceRecord]:
            pipe = self.client.pipeline(transaction=False)
            for prefix in self._prefixes:
                pipe.lrange(prefix + name, 0, limit - 1)
            ids = [(prefix, str(i)) for prefix, got in zip(self._prefixes, pipe.execute(), strict=True) for i in got]
            pipe = self.client.pipeline(transaction=False)
            for prefix, trace_id in ids:
                pipe.hgetall(prefix + "t:" + trace_id)
            out = []
            for (_, trace_id), fields in zip(ids, pipe.execute(), strict=True):
                record = parse_trace(trace_id, fields)
                if record is not None and record.state is state:
                    out.append(record)
            if len(self._prefixes) > 1:
                # each shard's list is newest first; across shards the last span orders them
                out.sort(key=lambda r: max(s.end for s in r.spans), reverse=True)
            return out[:limit]

        return list(self._call(read))

    def sweep(self, now: float | None) -> None:
        """Claim and report outcomes; with ``now``, first expire traces idle for ``ttl_seconds``."""
        for prefix in self._prefixes:
            self._sweep_shard(prefix, now)

    def _sweep_shard(self, prefix: str, now: float | None) -> None:
        sink = self._sink
        for _ in range(100):  # bounded: a backlog is worked off over the next sweeps
            result = self._call(
                self._sweep_script,
                keys=[prefix + "inflight"],
                args=[prefix, "" if now is None else repr(now - self.settings.ttl_seconds), self._ttl_ms,
                      _SWEEP_LIMIT, self._recent_per_shard, self._pipeline_json, self._history_ms,
                      "" if now is None else repr(now - self._history_ms / 1000), self._cap_per_shard],
            )  # fmt: skip
            expired, completed, late, evicted, lost = result
            for i in range(0, len(expired), 2):
                record = parse_trace(expired[i], _pairs(expired[i + 1]), TraceState.INCOMPLETE)
                if record is not None:
                    sink.on_expired(record)
            for i in range(0, len(completed), 2):
                record = parse_trace(completed[i], _pairs(completed[i + 1]))
                sink.on_complete(completed[i], None if record is None else record.latency_ms, record)
            if int(late):
                sink.on_late(int(late))
            if int(evicted):
                sink.on_evicted("capacity", int(evicted))
            if int(lost):
                sink.on_evicted("lost", int(lost))
            if len(expired) < 2 * _SWEEP_LIMIT and len(completed) < 2 * _SWEEP_LIMIT:
                return

    def close(self) -> None:
        """Flush, stop the writer thread and close the connections (idempotent)."""
        if self._worker is None:
            return
        self._worker.stop()
        self._worker = None
        self.flush()
        self.client.close()
        if self.writer is not self.client:
            self.writer.close()

    # heartbeats (ark_obs.traces.heartbeats.HeartbeatStore) ---------------------------------------------------
    def last_beats(self) -> dict[str, float]:
        """Every agent's last heartbeat time, as written by any process."""

        def read() -> dict[str, float]:
            pipe = self.client.pipeline(transaction=False)
            for prefix in self._prefixes:
                pipe.hgetall(prefix + "hb")
            return {agent: float(ts) for raw in pipe.execute() for agent, ts in raw.items()}

        return dict(self._call(read))

    def claim_outage(self, agent: str, since: float) -> bool:
        """True for exactly one caller per outage (identified by the agent's last beat)."""
        claimed = self._call(
            self._claim_script, keys=[self._shard(agent) + "hbdown"], args=[agent, repr(since), HEARTBEAT_KEY_TTL_MS]
        )
        return bool(claimed)

    def forget_agent(self, agent: str) -> None:
        """Stop tracking ``agent`` everywhere."""

        def forget() -> None:
            pipe = self.client.pipeline(transaction=False)
            prefix = self._shard(agent)
            pipe.hdel(prefix + "hb", agent)
            pipe.hdel(prefix + "hbdown", agent)
            pipe.execute()

        self._call(forget)


def _client_secrets(client: redis.Redis | Any) -> list[str | None]:
    """The password a client authenticates with (for ``scrub``)."""
    if isinstance(client, LazyCluster):
        return [client.password]
    holder = getattr(client, "connection_pool", None) or getattr(client, "nodes_manager", None)
    kwargs = getattr(holder, "connection_kwargs", {})
    return [kwargs.get("password")]


def _flush_at_exit(ref: weakref.ref[RedisStore]) -> None:
    store = ref()
    if store is not None and store._worker is not None:
        with contextlib.suppress(Exception):
            store.flush()


class StreamDepths:
    """Reads the length (XLEN) of Redis streams at scrape time, with a bounded timeout.

    After a failure it answers None at once for ``retry_seconds``, so a down Redis costs a scrape
    at most one timeout per retry period. The timeout is the client's socket timeout: the trace store's
    client (``ARK_OBS_STORE_TIMEOUT_SECONDS``) or the one ``from_url`` builds.
    """

    def __init__(
        self,
        client: redis.Redis | Any,
        streams: tuple[str, ...],
        *,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.streams = streams
        self._retry_seconds = retry_seconds
        self._retry_at = 0.0
        self._owns = owns_client
        self._logged = False

    @classmethod
    def from_url(cls, url: str, streams: tuple[str, ...], *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> StreamDepths:
        """A reader with a client of its own."""
        if url.strip().startswith(CLUSTER_SCHEMES):
            return cls(make_cluster_client(url, timeout), streams, owns_client=True)
        return cls(make_client(url, timeout), streams, owns_client=True)

    def read(self) -> dict[str, int] | None:
        """Each stream's length (a missing stream is 0; one that is not a stream is left out), or None."""
        if time.monotonic() < self._retry_at:
            return None
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xlen(stream)
        try:
            lengths = pipe.execute(raise_on_error=False)
        except _REDIS_ERRORS as exc:
            self._retry_at = time.monotonic() + self._retry_seconds
            if not self._logged:
                self._logged = True
                log.warning(
                    "ark-obs could not read Redis stream lengths: %s (logged once)",
                    scrub(repr(exc), secrets=_client_secrets(self.client)),
                )
            return None
        return {s: int(n) for s, n in zip(self.streams, lengths, strict=True) if isinstance(n, int)}

    def close(self) -> None:
        """Close the client if this reader opened it."""
        if self._owns:
            self.client.close()


def open_store(url: str, **kw: Any) -> TraceStore:
    """The store an ``ARK_OBS_TRACE_STORE`` value names: ``memory``, ``redis://host:port/db`` or
    ``redis+cluster://host:port[,host:port...]/``.

    Keyword arguments go to ``RedisStore.from_url`` (timeout, prefix, flush_interval, ...).
    """
    spec = url.strip()
    if spec in ("", "memory", "memory://"):
        return MemoryStore()
    if spec.startswith(CLUSTER_SCHEMES):
        return RedisStore.from_cluster_url(spec, **kw)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(spec, **kw)
    raise ValueError(
        f"unknown trace store {redact_url(url)!r}: use 'memory', 'redis://host:port/db' or 'redis+cluster://host:port,...'"
    )
