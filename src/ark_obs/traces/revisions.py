"""State history continuity: each state key's revisions must follow one another without a hole.

>>> track_state_operation("write", "Kenny", 3.2, key="position:AAPL", revision=7)  # doctest: +SKIP

The Mutable Core's state manager numbers every write of a key (1, 2, 3, ...). ``RevisionChecker``
remembers the highest revision seen per key and classifies each new one:

- the next one (``last + 1``): fine;
- a *gap* (5 after 3): writes were lost or skipped;
- a *regression* (4 after 5): an older state was written over a newer one;
- a *duplicate* (5 after 5): one revision was written twice.

Anomalies are counted in ``ark_state_revision_anomalies_total{agent,kind}``; the key is never a label
(keys are unbounded) but the most recent anomalies, keys included, are kept for ``GET /state/anomalies``,
where the map is: in Redis next to a Redis map (every process' anomalies in one list), in the
multiprocess directory in multiprocess mode (each process appends to a file of its own, the service
reads them all), else in this process.
The first revision seen of a key is taken as it is (a checker that starts late has no history).

The last revision per key lives in a ``RevisionBackend``: ``MemoryRevisions`` (this process, a bounded
LRU map) or ``RedisRevisions`` (the shared trace store's Redis, so writers in several processes and
hosts are checked together: one atomic Lua call per write, a hash of revisions and a sorted set of keys
by last write, trimmed to ``max_keys``). A key pushed out is forgotten and counted in
``ark_obs_dropped_total``. The checker depends on the registry's metrics only, not on the collector
that composes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from pydantic import BaseModel, ConfigDict, Field

from ark_obs import catalog
from ark_obs.registry import ArkRegistry, multiprocess_dir

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_RECENT_MAX",
    "MAX_KEY_LENGTH",
    "AnomalyKind",
    "AnomalyList",
    "AnomalyLog",
    "FileAnomalies",
    "LocalAnomalies",
    "MemoryRevisions",
    "RedisAnomalies",
    "RedisRevisions",
    "RevisionAnomaly",
    "RevisionBackend",
    "RevisionChecker",
    "backend_for",
]

log = logging.getLogger("ark_obs.traces.revisions")

DEFAULT_MAX_KEYS: Final = 100_000
DEFAULT_RECENT_MAX: Final = 100
MAX_KEY_LENGTH: Final = 256  # longer keys are dropped and counted (a key is data, not a label, but is kept)
# ``metric`` label of revisions dropped in ark_obs_dropped_total
REVISION_METRIC: Final = "state_revision"
# multiprocess mode: each process' recent anomalies, next to prometheus_client's *.db files
ANOMALY_FILE_PREFIX: Final = "ark_obs_revision_anomalies_"


class AnomalyKind(StrEnum):
    """How a revision broke its key's history."""

    GAP = "gap"
    REGRESSION = "regression"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class RevisionAnomaly:
    """One revision that did not follow its key's last one."""

    at: float
    agent: str
    key: str
    kind: AnomalyKind
    previous: int
    revision: int

    def to_json(self) -> str:
        """One line of JSON (the shared lists' form)."""
        return json.dumps(
            {
                "at": self.at,
                "agent": self.agent,
                "key": self.key,
                "kind": self.kind.value,
                "previous": self.previous,
                "revision": self.revision,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RevisionAnomaly | None:
        """The anomaly a ``to_json`` line holds; None for anything else (a torn or foreign line)."""
        try:
            d = json.loads(text)
            return cls(
                float(d["at"]),
                str(d["agent"]),
                str(d["key"]),
                AnomalyKind(d["kind"]),
                int(d["previous"]),
                int(d["revision"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class AnomalyLog(Protocol):
    """Where the most recent anomalies are listed from."""

    @property
    def where(self) -> str:
        """Whose anomalies ``recent`` lists: ``redis``, ``multiprocess_dir`` or ``process``."""
        ...

    def append(self, anomaly: RevisionAnomaly) -> None:
        """Keep ``anomaly`` (never raises)."""
        ...

    def recent(self, limit: int) -> list[RevisionAnomaly]:
        """At most ``limit`` anomalies, newest first."""
        ...


class LocalAnomalies:
    """The anomalies this process detected (a bounded deque)."""

    where: Final = "process"

    def __init__(self, recent_max: int) -> None:
        self._recent: deque[RevisionAnomaly] = deque(maxlen=recent_max)

    def append(self, anomaly: RevisionAnomaly) -> None:
        self._recent.append(anomaly)

    def recent(self, limit: int) -> list[RevisionAnomaly]:
        return list(reversed(self._recent))[:limit]


class FileAnomalies:
    """Multiprocess mode: every process appends its anomalies to a file of its own in the directory;
    ``recent`` reads every process' file (agents detect, the service lists).

    A file holds at most ``2 x recent_max`` lines: past that it is rewritten with the newest ``recent_max``.
    """

    where: Final = "multiprocess_dir"

    def __init__(self, path: str, recent_max: int) -> None:
        self.path = path
        self.recent_max = recent_max
        self._own = LocalAnomalies(recent_max)
        self._lines = 0
        self._pid = 0
        self._lock = threading.Lock()

    def _file(self) -> str:
        return os.path.join(self.path, f"{ANOMALY_FILE_PREFIX}{os.getpid()}.jsonl")

    def append(self, anomaly: RevisionAnomaly) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child starts a file of its own
                self._pid, self._lines, self._own = os.getpid(), 0, LocalAnomalies(self.recent_max)
            self._own.append(anomaly)
            try:
                if self._lines >= 2 * self.recent_max:
                    tmp = self._file() + ".tmp"
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.writelines(a.to_json() + "\n" for a in reversed(self._own.recent(self.recent_max)))
                    os.replace(tmp, self._file())
                    self._lines = min(self.recent_max, self._lines)
                else:
                    with open(self._file(), "a", encoding="utf-8") as f:
                        f.write(anomaly.to_json() + "\n")
                    self._lines += 1
            except OSError as exc:
                log.debug("ark-obs: revision anomaly not written to %s: %s", self.path, exc)

    def recent(self, limit: int) -> list[RevisionAnomaly]:
        found: list[RevisionAnomaly] = []
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                if not (name.startswith(ANOMALY_FILE_PREFIX) and name.endswith(".jsonl")):
                    continue
                with contextlib.suppress(OSError), open(os.path.join(self.path, name), encoding="utf-8") as f:
                    found += [a for a in map(RevisionAnomaly.from_json, f) if a is not None]
        found.sort(key=lambda a: a.at, reverse=True)
        return found[: min(limit, self.recent_max)]


class RedisAnomalies:
    """The most recent anomalies of every process in a Redis list next to the shared map.

    A write is one Lua call (push, trim), made only when an anomaly is found. While Redis does not
    answer, this process' own anomalies are listed.
    """

    where: Final = "redis"

    def __init__(self, client: Any, key: str, recent_max: int) -> None:
        self.client = client
        self.key = key
        self.recent_max = recent_max
        self._own = LocalAnomalies(recent_max)
        self._push = client.register_script(_LOG_LUA)

    def append(self, anomaly: RevisionAnomaly) -> None:
        from redis.exceptions import RedisError

        self._own.append(anomaly)
        try:
            self._push(keys=[self.key], args=[anomaly.to_json(), self.recent_max])
        except (RedisError, OSError) as exc:
            log.debug("ark-obs: revision anomaly not listed in Redis: %s", exc)

    def recent(self, limit: int) -> list[RevisionAnomaly]:
        from redis.exceptions import RedisError

        try:
            lines = self.client.lrange(self.key, 0, min(limit, self.recent_max) - 1)
        except (RedisError, OSError) as exc:
            log.debug("ark-obs: revision anomalies not read from Redis: %s", exc)
            return self._own.recent(limit)
        return [a for a in map(RevisionAnomaly.from_json, lines) if a is not None]


class AnomalyOut(BaseModel):
    """One anomaly, as ``GET /state/anomalies`` lists it."""

    model_config = ConfigDict(frozen=True)

    at: float
    agent: str
    key: str
    kind: AnomalyKind
    previous: int
    revision: int


class AnomalyList(BaseModel):
    """The most recent revision anomalies (newest first) and the checker's bounds."""

    model_config = ConfigDict(frozen=True)

    anomalies: list[AnomalyOut]
    recent_max: int
    tracked_keys: int
    max_keys: int
    backend: str
    listed_from: str = Field(
        description="Whose anomalies are listed: redis (every process on the shared map), multiprocess_dir "
        "(every process of this host's multiprocess directory) or process (this process only)."
    )


class RevisionBackend(Protocol):
    """Where the highest revision per key is kept."""

    # called with the number of keys pushed out of the bounded map (the checker counts them)
    on_evicted: Callable[[int], None] | None

    @property
    def backend(self) -> str: ...

    def advance(self, key: str, revision: int) -> int | None:
        """Keep ``max(last, revision)`` for ``key``; return the last revision before, None if unknown."""
        ...

    def __len__(self) -> int: ...

    def anomaly_log(self, recent_max: int) -> AnomalyLog | None:
        """Where anomalies found on this map are listed, when the map is shared; None: the process decides."""
        ...


class MemoryRevisions:
    """The last revision per key in this process: an LRU map of at most ``max_keys`` keys."""

    backend: Final = "memory"

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, on_evicted: Callable[[int], None] | None = None) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self._last: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.on_evicted = on_evicted

    def advance(self, key: str, revision: int) -> int | None:
        """Keep ``max(last, revision)`` for ``key``; return the last revision before, None if unknown."""
        evicted = 0
        with self._lock:
            last = self._last.get(key)
            if last is None:
                self._last[key] = revision
                while len(self._last) > self.max_keys:
                    self._last.popitem(last=False)
                    evicted += 1
            else:
                self._last.move_to_end(key)
                if revision > last:
                    self._last[key] = revision
        if evicted and self.on_evicted is not None:
            self.on_evicted(evicted)
        return last

    def __len__(self) -> int:
        return len(self._last)

    def anomaly_log(self, recent_max: int) -> AnomalyLog | None:
        """None: a process-local map lists where its process does."""
        return None


class RevisionStoreUnavailable(Exception):
    """The shared revision map could not be read or written."""


# KEYS: the revisions hash, the keys-by-last-write sorted set. ARGV: key, revision, now, max_keys.
# Returns {previous revision or -1, keys evicted}. Keeps max(previous, revision), as MemoryRevisions.
_ADVANCE_LUA: Final = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
local rev = tonumber(ARGV[2])
if (not prev) or rev > tonumber(prev) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
else
  over = 0
end
return {prev or '-1', over}
"""

# KEYS: the anomaly list. ARGV: one anomaly as JSON, the most to keep.
_LOG_LUA: Final = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"""


class RedisRevisions:
    """The last revision per key in Redis (under the trace store's prefix), shared by every process.

    Each write costs one round trip within the client's socket timeout (the trace store's 250 ms read
    timeout); a Redis failure raises ``RevisionStoreUnavailable``, which the checker counts and drops.
    On a Redis Cluster the prefix carries a hash tag (the store's first shard), so the map's keys and
    the anomaly list share one slot, as one Lua call needs.
    """

    backend: Final = "redis"

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "ark:obs:",
        max_keys: int = DEFAULT_MAX_KEYS,
        on_evicted: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.client = client
        self.max_keys = max_keys
        self._keys = [prefix + "rev", prefix + "revkeys"]
        self._log_key = prefix + "revlog"
        self._script = client.register_script(_ADVANCE_LUA)
        self.on_evicted = on_evicted
        self._clock = clock

    def advance(self, key: str, revision: int) -> int | None:
        """Keep ``max(last, revision)`` for ``key``; return the last revision before, None if unknown."""
        from redis.exceptions import RedisError

        try:
            previous, evicted = self._script(keys=self._keys, args=[key, revision, self._clock(), self.max_keys])
        except (RedisError, OSError) as exc:
            raise RevisionStoreUnavailable(repr(exc)) from exc
        if int(evicted) and self.on_evicted is not None:
            self.on_evicted(int(evicted))
        last = int(previous)
        return None if last < 0 else last

    def __len__(self) -> int:
        from redis.exceptions import RedisError

        try:
            return int(self.client.hlen(self._keys[0]))
        except (RedisError, OSError):
            return -1

    def anomaly_log(self, recent_max: int) -> AnomalyLog | None:
        """Every process' anomalies, in a list next to the map."""
        return RedisAnomalies(self.client, self._log_key, recent_max)


def backend_for(store: object, max_keys: int = DEFAULT_MAX_KEYS) -> RevisionBackend:
    """The revision map matching a trace store: Redis for a shared (Redis) store, else this process' memory."""
    client = getattr(store, "client", None)
    if getattr(store, "shared", False) and client is not None:
        # a cluster store's first shard prefix ({s0}): one slot for every key of the map
        prefixes = getattr(store, "shard_prefixes", None) or (getattr(store, "prefix", "ark:obs:"),)
        return RedisRevisions(client, prefix=prefixes[0], max_keys=max_keys)
    return MemoryRevisions(max_keys)


def anomaly_log_for(backend: RevisionBackend, recent_max: int) -> AnomalyLog:
    """Where anomalies are listed: next to a shared map, else the multiprocess directory, else this process."""
    shared = backend.anomaly_log(recent_max) if hasattr(backend, "anomaly_log") else None
    if shared is not None:
        return shared
    path = multiprocess_dir()
    return FileAnomalies(path, recent_max) if path else LocalAnomalies(recent_max)


def classify(previous: int, revision: int) -> AnomalyKind | None:
    """None when ``revision`` is the one after ``previous``, else the kind of break."""
    if revision == previous + 1:
        return None
    if revision > previous:
        return AnomalyKind.GAP
    return AnomalyKind.DUPLICATE if revision == previous else AnomalyKind.REGRESSION


class RevisionChecker:
    """Checks every key's revisions for continuity; counts and keeps the anomalies.

    >>> checker = RevisionChecker(ArkRegistry(catalog.CATALOG))
    >>> checker.observe("Kenny", "position:AAPL", 3), checker.observe("Kenny", "position:AAPL", 5)
    (None, <AnomalyKind.GAP: 'gap'>)
    """

    def __init__(
        self,
        registry: ArkRegistry,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        recent_max: int = DEFAULT_RECENT_MAX,
        backend: RevisionBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if recent_max < 1:
            raise ValueError(f"recent_max must be at least 1, got {recent_max}")
        self._anomalies: Any = registry.get(catalog.ARK_STATE_REVISION_ANOMALIES_TOTAL.name)
        dropped = registry.get(catalog.ARK_OBS_DROPPED_TOTAL.name)
        self._dropped = {
            reason: dropped.labels(REVISION_METRIC, reason)
            for reason in ("key_evicted", "invalid_revision", "store_unavailable")
        }
        self.backend: RevisionBackend = backend if backend is not None else MemoryRevisions(max_keys)
        self.backend.on_evicted = self._dropped["key_evicted"].inc
        self.max_keys = getattr(self.backend, "max_keys", max_keys)
        self.recent_max = recent_max
        self.log: AnomalyLog = anomaly_log_for(self.backend, recent_max)
        self._clock = clock

    def observe(self, agent: str, key: str, revision: int) -> AnomalyKind | None:
        """Check ``revision`` of ``key`` written by ``agent``; the anomaly found, or None.

        A negative revision, an empty or over-long key, or an unreachable shared map: dropped, counted,
        logged at debug level (never raised into the agent).
        A revision that is not an int is a programming error and raises ``TypeError``.
        """
        if type(revision) is not int:
            raise TypeError(f"a state revision is an int, got {type(revision).__name__} {revision!r}")
        if not isinstance(key, str):
            raise TypeError(f"a state key is a str, got {type(key).__name__} {key!r}")
        if revision < 0 or not key or len(key) > MAX_KEY_LENGTH:
            self._dropped["invalid_revision"].inc()
            log.debug("ark-obs: dropped state revision %r of key %.64r (negative, empty or long key)", revision, key)
            return None
        try:
            previous = self.backend.advance(key, revision)
        except RevisionStoreUnavailable as exc:
            self._dropped["store_unavailable"].inc()
            log.debug("ark-obs: state revision of %.64r not checked: %s", key, exc)
            return None
        if previous is None:
            return None
        kind = classify(previous, revision)
        if kind is not None:
            self._anomalies.labels(agent, kind.value).inc()
            self.log.append(RevisionAnomaly(self._clock(), agent, key, kind, previous, revision))
        return kind

    def recent(self, limit: int | None = None) -> list[RevisionAnomaly]:
        """The most recent anomalies, newest first (of every process sharing the list: see ``log``)."""
        return self.log.recent(self.recent_max if limit is None else limit)

    def listing(self, limit: int | None = None) -> AnomalyList:
        """The response of ``GET /state/anomalies``."""
        return AnomalyList(
            anomalies=[
                AnomalyOut(at=a.at, agent=a.agent, key=a.key, kind=a.kind, previous=a.previous, revision=a.revision)
                for a in self.recent(limit)
            ],
            recent_max=self.recent_max,
            tracked_keys=len(self.backend),
            max_keys=self.max_keys,
            backend=self.backend.backend,
            listed_from=self.log.where,
        )
