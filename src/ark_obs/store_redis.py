"""The shared trace store: Redis, for agents in many processes and hosts and for several ark-obs replicas.

>>> store = open_store("redis://127.0.0.1:6379/0")  # or "memory"   # doctest: +SKIP

Writes never block the caller: ``add`` and ``beat`` append to a bounded in-process buffer that a
daemon thread sends every ``flush_interval`` (50 ms) as one Lua call per batch of up to ``batch_size``
spans, so spans are visible to readers well within a second. Reads (``get``, the sweep, scrape-time
counts) use short socket timeouts (``timeout``, 250 ms) and no retries; the background writer allows
``write_timeout`` (1 s) for a batch. When Redis fails the store
marks itself unhealthy, drops new spans at once (the monitor counts them in
``ark_obs_dropped_total{reason="store_unavailable"}``) and probes Redis every ``retry_seconds``.

Keys, all under ``prefix`` (default ``ark:obs:``) and all with TTLs, so nothing grows without bound:

- ``t:<trace id>``  hash: ``@<agent>`` = "start end arrival ok", ``n`` spans, ``state`` once finalized,
  ``x`` when its expiry was last renewed; TTL 2 x ttl while in flight (renewed every ttl / 2, so the
  sweeper can still read it when it expires), ttl once finalized.
- ``inflight``  sorted set of in-flight trace ids by last span time, capped at ``max_in_flight``
  (the least recently touched are evicted and deleted); a sweeper expires those idle for its ttl.
- ``done``  list of traces completed but not yet accounted for by a sweeping monitor (capped).
- ``late``, ``evicted``  counters not yet accounted for; ``recent``  recently expired ids (capped).
- ``hb``  hash agent -> last heartbeat (unix s); ``hbdown`` agent -> the beat an outage was counted for.

The Lua scripts build key names from the prefix, so this store needs a standalone Redis (or a
replicated primary), not Redis Cluster.
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
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ark_obs._periodic import Periodic
from ark_obs._redact import redact_url, scrub
from ark_obs.store_memory import MemoryStore
from ark_obs.traces import (
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

log = logging.getLogger("ark_obs")

DEFAULT_PREFIX: Final = "ark:obs:"
DEFAULT_TIMEOUT_SECONDS: Final = 0.25
DEFAULT_WRITE_TIMEOUT_SECONDS: Final = 1.0
DEFAULT_FLUSH_SECONDS: Final = 0.05
DEFAULT_BATCH_SIZE: Final = 500  # spans per Lua call: a few ms of Redis time at most
DEFAULT_MAX_PENDING: Final = 100_000
DEFAULT_RETRY_SECONDS: Final = 1.0
HEARTBEAT_KEY_TTL_MS: Final = 86_400_000
_SWEEP_LIMIT: Final = 1000
_REDIS_ERRORS: Final = (RedisError, OSError)

# One call per batch. ARGV = prefix, ttl_ms, cap, pipeline (JSON list), max agents per trace, spans (JSON list of
# [trace id, agent, start, end, ok, seen], or [trace id, agent, t] for the common ok span with
# start = end = seen). Spans are grouped by trace so each trace costs one HMGET and one HSET whatever
# its number of spans. A span for a finalized trace is late, also within a batch. A span of a new agent
# for a trace that holds max agents already (field ``a`` counts them) is refused. Times are stored
# with %.17g, which round-trips a double exactly. Returns {traces completed, spans refused}.
_ADD_LUA: Final = """
local prefix = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local pipeline = cjson.decode(ARGV[4])
local max_agents = tonumber(ARGV[5])
local spans = cjson.decode(ARGV[6])
local idx, done = prefix .. 'inflight', prefix .. 'done'
local head = {'state', 'n', 'x', 'a'}
local in_pipeline = {}
for j = 1, #pipeline do
  local f = '@' .. pipeline[j]
  head[#head + 1] = f
  in_pipeline[f] = true
end
local order, groups = {}, {}
for _, sp in ipairs(spans) do
  local g = groups[sp[1]]
  if not g then
    g = {}
    groups[sp[1]] = g
    order[#order + 1] = sp[1]
  end
  g[#g + 1] = sp
end
local late, refused = 0, 0
local finished, unindex, touched = {}, {}, {}
for _, id in ipairs(order) do
  local g = groups[id]
  local key = prefix .. 't:' .. id
  local fields = {unpack(head)}
  for _, sp in ipairs(g) do fields[#fields + 1] = '@' .. sp[2] end
  local vals = redis.call('HMGET', key, unpack(fields))
  if vals[1] then
    late = late + #g
  else
    local existed = vals[2]
    local n = tonumber(vals[2]) or 0
    local expiry_set_at = tonumber(vals[3])
    local agents = tonumber(vals[4]) or 0
    local cur, missing = {}, #pipeline
    for k = 5, #fields do
      if vals[k] and not cur[fields[k]] then
        cur[fields[k]] = vals[k]
        if in_pipeline[fields[k]] then missing = missing - 1 end
      end
    end
    local changed, set, seen = {}, {}, 0
    for _, sp in ipairs(g) do
      if missing == 0 then
        late = late + 1
      elseif not cur['@' .. sp[2]] and agents >= max_agents then
        refused = refused + 1
      else
        n = n + 1
        local f = '@' .. sp[2]
        local short = #sp == 3
        local s, e, ok, t = sp[3], sp[3], true, sp[3]
        if not short then e, ok, t = sp[4], sp[5], sp[6] end
        local prev = cur[f]
        local v
        if prev then
          local ps, pe, pq, pok = string.match(prev, '^(%S+) (%S+) (%S+) (%S+)$')
          if s < tonumber(ps) then ps = string.format('%.17g', s) end
          if e > tonumber(pe) then pe = string.format('%.17g', e) end
          if not ok then pok = '0' end
          v = ps .. ' ' .. pe .. ' ' .. pq .. ' ' .. pok
        elseif short then
          local ts = string.format('%.17g', s)
          v = ts .. ' ' .. ts .. ' ' .. n .. ' 1'
          if in_pipeline[f] then missing = missing - 1 end
          agents = agents + 1
        else
          v = string.format('%.17g %.17g %d %s', s, e, n, ok and '1' or '0')
          if in_pipeline[f] then missing = missing - 1 end
          agents = agents + 1
        end
        if not changed[f] then
          changed[f] = true
          set[#set + 1] = f
        end
        cur[f] = v
        if t > seen then seen = t end
      end
    end
    local args = {'n', n, 'a', agents}
    for _, f in ipairs(set) do
      args[#args + 1] = f
      args[#args + 1] = cur[f]
    end
    -- an in-flight key's expiry (2 x ttl) is renewed only every ttl / 2 of span time, not per span:
    -- it still outlives the last span by 1.5 x ttl, so the sweeper reads it at expiry
    local renew = missing ~= 0 and (not expiry_set_at or seen - expiry_set_at > ttl_ms / 2000)
    if missing == 0 then
      args[#args + 1] = 'state'
      args[#args + 1] = 'complete'
    elseif renew then
      args[#args + 1] = 'x'
      args[#args + 1] = string.format('%.17g', seen)
    end
    redis.call('HSET', key, unpack(args))
    if missing == 0 then
      if existed then unindex[#unindex + 1] = id end
      redis.call('PEXPIRE', key, ttl_ms)
      finished[#finished + 1] = id
    else
      touched[#touched + 1] = string.format('%.17g', seen)
      touched[#touched + 1] = id
      if renew then redis.call('PEXPIRE', key, 2 * ttl_ms) end
    end
  end
end
-- index and list updates batched: one call each per batch rather than per trace
if #unindex > 0 then redis.call('ZREM', idx, unpack(unindex)) end
if #touched > 0 then redis.call('ZADD', idx, unpack(touched)) end
local completed = #finished
if completed > 0 then
  redis.call('LPUSH', done, unpack(finished))
  redis.call('LTRIM', done, 0, cap - 1)
  redis.call('PEXPIRE', done, 2 * ttl_ms)
end
if late > 0 then
  redis.call('INCRBY', prefix .. 'late', late)
  redis.call('PEXPIRE', prefix .. 'late', 2 * ttl_ms)
end
local over = redis.call('ZCARD', idx) - cap
if over > 0 then
  local popped = redis.call('ZPOPMIN', idx, over)
  for k = 1, #popped, 2 do redis.call('DEL', prefix .. 't:' .. popped[k]) end
  redis.call('INCRBY', prefix .. 'evicted', over)
  redis.call('PEXPIRE', prefix .. 'evicted', 2 * ttl_ms)
end
redis.call('PEXPIRE', idx, 2 * ttl_ms)
return {completed, refused}
"""

# ARGV = prefix, idle_before (now - ttl; '' = only claim outcomes), ttl_ms, limit, recent_max. The
# sweeper's own TTL decides expiry: the index holds last-span times, not deadlines.
# Claims (so each outcome is counted by one sweeper): expired traces, completed ones, late and evicted counts.
_SWEEP_LUA: Final = """
local prefix = ARGV[1]
local idle_before = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local recent_max = tonumber(ARGV[5])
local idx = prefix .. 'inflight'
local recent = prefix .. 'recent'
local expired = {}
local lost = 0
if idle_before ~= '' then
  local ids = redis.call('ZRANGEBYSCORE', idx, '-inf', idle_before, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', idx, id)
    local key = prefix .. 't:' .. id
    local h = redis.call('HGETALL', key)
    if #h > 0 then
      redis.call('HSET', key, 'state', 'incomplete')
      redis.call('PEXPIRE', key, ttl_ms)
      redis.call('LPUSH', recent, id)
      expired[#expired + 1] = id
      expired[#expired + 1] = h
    else
      lost = lost + 1
    end
  end
  if #expired > 0 then
    redis.call('LTRIM', recent, 0, recent_max - 1)
    redis.call('PEXPIRE', recent, ttl_ms)
  end
end
local completed = {}
local ids = redis.call('RPOP', prefix .. 'done', limit)
if ids then
  for _, id in ipairs(ids) do
    completed[#completed + 1] = id
    completed[#completed + 1] = redis.call('HGETALL', prefix .. 't:' .. id)
  end
end
local late = redis.call('GETDEL', prefix .. 'late') or '0'
local evicted = redis.call('GETDEL', prefix .. 'evicted') or '0'
return {expired, completed, late, evicted, lost}
"""

# KEYS[1] = hbdown; ARGV = agent, last beat, ttl_ms. 1 if this caller is the one to count the outage.
_CLAIM_OUTAGE_LUA: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


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


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def parse_trace(trace_id: str, fields: Mapping[str, str], state: TraceState | None = None) -> TraceRecord | None:
    """A ``TraceRecord`` from a trace hash (None if it holds no span)."""
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
    return TraceRecord(trace_id, tuple(s for _, _, s in spans), state, int(fields.get("n", len(spans))))


class RedisStore:
    """Traces and heartbeats in Redis (see ``ark_obs.traces.TraceStore`` and the module docstring)."""

    backend: Final = "redis"
    shared: Final = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        writer: redis.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
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
        self._batch = batch_size
        self._max_pending = max_pending
        self._retry_seconds = retry_seconds
        self._pending: deque[tuple[str, str, float, float, bool, float]] = deque()
        self._beats: dict[str, float] = {}
        self._beats_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._healthy = True
        self._detail = ""
        self._next_probe = 0.0  # monotonic time of the next liveness probe when idle or down
        self._add_script = client.register_script(_ADD_LUA)
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

    def bind(self, settings: TraceSettings, sink: TraceSink) -> None:
        """Attach the monitor's settings and outcome sink."""
        self.settings = settings
        self._sink = sink
        self._ttl_ms = max(1, math.ceil(settings.ttl_seconds * 1000))
        self._head: list[Any] = [
            self.prefix,
            self._ttl_ms,
            settings.max_in_flight,
            json.dumps(settings.pipeline),
            settings.max_agents,
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
                    self._write(spans, beats)
                except _REDIS_ERRORS as exc:
                    self._failed(exc)
                    self._sink.on_dropped(len(spans), self._detail)
                    self._drop_pending()
                    return

    def _write(self, spans: list[tuple[str, str, float, float, bool, float]], beats: dict[str, float]) -> None:
        pipe = self.writer.pipeline(transaction=False)
        if spans:
            # one JSON argument: the C encoder beats packing six Redis arguments per span; the common
            # span (ok, start = end = seen) travels as [trace id, agent, time]
            compact = [
                (trace_id, agent, start) if ok and start == end == seen else (trace_id, agent, start, end, ok, seen)
                for trace_id, agent, start, end, ok, seen in spans
            ]
            self._add_script(args=[*self._head, json.dumps(compact)], client=pipe)
        if beats:
            key = self.prefix + "hb"
            mapping: dict[Any, Any] = beats
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, HEARTBEAT_KEY_TTL_MS)
        results = pipe.execute()
        if spans and int(results[0][1]):
            self._sink.on_refused(
                int(results[0][1]), f"a trace holds {self.settings.max_agents} agents already (batch of {len(spans)})"
            )

    def _drop_pending(self) -> None:
        n = len(self._pending)
        self._pending.clear()
        with self._beats_lock:
            self._beats.clear()  # heartbeats lost with a failed write are not counted: the next one retries
        self._sink.on_dropped(n, self._detail)

    # health ------------------------------------------------------------------------------------------
    def _probe(self) -> None:
        try:
            self.client.ping()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return
        if not self._healthy:
            log.warning("ark-obs trace store %s is reachable again", redact_url(self.url or "redis"))
        self._healthy, self._detail = True, ""
        self._next_probe = time.monotonic() + self._retry_seconds

    def _failed(self, exc: BaseException) -> None:
        # the detail reaches logs, /readyz and the dropped counter's log line: no credential in it
        why = scrub(repr(exc), self.url, secrets=_client_secrets(self.client))
        if self._healthy:
            log.warning("ark-obs trace store %s is unavailable: %s", redact_url(self.url or "redis"), why)
        self._healthy = False
        self._detail = f"redis unavailable: {why}"
        self._next_probe = time.monotonic() + self._retry_seconds

    def _check(self) -> None:
        if not self._healthy:
            raise StoreUnavailable(self._detail)

    def health(self) -> StoreHealth:
        """Healthy unless the last write or probe failed (probed every ``retry_seconds`` when idle)."""
        return StoreHealth(self.backend, self._healthy, self._detail)

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
        fields = self._call(self.client.hgetall, self.prefix + "t:" + trace_id)
        return parse_trace(trace_id, fields)

    def in_flight(self) -> int:
        """Traces not finalized yet, over every process writing to this Redis."""
        return int(self._call(self.client.zcard, self.prefix + "inflight"))

    def recent_incomplete(self, limit: int) -> list[TraceRecord]:
        """Recently expired incomplete traces still held, newest first."""
        if limit <= 0:
            return []

        def read() -> list[TraceRecord]:
            ids = [str(i) for i in self.client.lrange(self.prefix + "recent", 0, limit - 1)]
            pipe = self.client.pipeline(transaction=False)
            for trace_id in ids:
                pipe.hgetall(self.prefix + "t:" + trace_id)
            out = []
            for trace_id, fields in zip(ids, pipe.execute(), strict=True):
                record = parse_trace(trace_id, fields)
                if record is not None and record.state is TraceState.INCOMPLETE:
                    out.append(record)
            return out

        return list(self._call(read))

    def sweep(self, now: float | None) -> None:
        """Claim and report outcomes; with ``now``, first expire traces idle for ``ttl_seconds``."""
        sink = self._sink
        for _ in range(100):  # bounded: a backlog is worked off over the next sweeps
            result = self._call(
                self._sweep_script,
                args=[self.prefix, "" if now is None else repr(now - self.settings.ttl_seconds), self._ttl_ms,
                      _SWEEP_LIMIT, self.settings.recent_max],
            )  # fmt: skip
            expired, completed, late, evicted, lost = result
            for i in range(0, len(expired), 2):
                record = parse_trace(expired[i], _pairs(expired[i + 1]), TraceState.INCOMPLETE)
                if record is not None:
                    sink.on_expired(record)
            for i in range(0, len(completed), 2):
                record = parse_trace(completed[i], _pairs(completed[i + 1]))
                sink.on_complete(completed[i], None if record is None else record.latency_ms)
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

    # heartbeats (ark_obs.heartbeat.HeartbeatStore) ---------------------------------------------------
    def last_beats(self) -> dict[str, float]:
        """Every agent's last heartbeat time, as written by any process."""
        raw = self._call(self.client.hgetall, self.prefix + "hb")
        return {agent: float(ts) for agent, ts in raw.items()}

    def claim_outage(self, agent: str, since: float) -> bool:
        """True for exactly one caller per outage (identified by the agent's last beat)."""
        claimed = self._call(
            self._claim_script, keys=[self.prefix + "hbdown"], args=[agent, repr(since), HEARTBEAT_KEY_TTL_MS]
        )
        return bool(claimed)

    def forget_agent(self, agent: str) -> None:
        """Stop tracking ``agent`` everywhere."""

        def forget() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.prefix + "hb", agent)
            pipe.hdel(self.prefix + "hbdown", agent)
            pipe.execute()

        self._call(forget)


def _client_secrets(client: redis.Redis) -> list[str | None]:
    """The password a client authenticates with (for ``scrub``)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    return [kwargs.get("password")]


def _flush_at_exit(ref: weakref.ref[RedisStore]) -> None:
    store = ref()
    if store is not None and store._worker is not None:
        with contextlib.suppress(Exception):
            store.flush()


class StreamDepths:
    """Reads the length (XLEN) of Redis streams at scrape time, with a bounded timeout.

    After a failure it answers None at once for ``retry_seconds``, so a down Redis costs a scrape
    at most one timeout per retry period.
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: tuple[str, ...],
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.streams = streams
        self.timeout = timeout
        self._retry_seconds = retry_seconds
        self._retry_at = 0.0
        self._owns = owns_client
        self._logged = False

    @classmethod
    def from_url(cls, url: str, streams: tuple[str, ...], *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> StreamDepths:
        """A reader with a client of its own."""
        return cls(make_client(url, timeout), streams, timeout=timeout, owns_client=True)

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
    """The store an ``ARK_OBS_TRACE_STORE`` value names: ``memory`` or ``redis://host:port/db``.

    Keyword arguments go to ``RedisStore.from_url`` (timeout, prefix, flush_interval, ...).
    """
    spec = url.strip()
    if spec in ("", "memory", "memory://"):
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(spec, **kw)
    raise ValueError(f"unknown trace store {redact_url(url)!r}: use 'memory' or 'redis://host:port/db'")
