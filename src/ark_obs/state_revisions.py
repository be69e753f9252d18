"""State history continuity: each state key's revisions must follow one another without a hole.

>>> track_state_operation("write", "Kenny", 3.2, key="position:AAPL", revision=7)  # doctest: +SKIP

The Mutable Core's state manager numbers every write of a key (1, 2, 3, ...). ``RevisionChecker``
remembers the highest revision seen per key and classifies each new one:

- the next one (``last + 1``): fine;
- a *gap* (5 after 3): writes were lost or skipped;
- a *regression* (4 after 5): an older state was written over a newer one;
- a *duplicate* (5 after 5): one revision was written twice.

Anomalies are counted in ``ark_state_revision_anomalies_total{agent,kind}``; the key is never a label
(keys are unbounded) but the most recent anomalies, keys included, are kept for ``GET /state/anomalies``.
The first revision seen of a key is taken as it is (a checker that starts late has no history).

The last revision per key lives in a ``RevisionBackend``: ``MemoryRevisions`` (this process, a bounded
LRU map; a key pushed out is forgotten and counted in ``ark_obs_dropped_total``). The checker depends on
the registry's metrics only, not on the collector that composes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from pydantic import BaseModel, ConfigDict

from ark_obs import catalog
from ark_obs.registry import ArkRegistry

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_RECENT_MAX",
    "MAX_KEY_LENGTH",
    "AnomalyKind",
    "AnomalyList",
    "MemoryRevisions",
    "RevisionAnomaly",
    "RevisionBackend",
    "RevisionChecker",
]

log = logging.getLogger("ark_obs.state_revisions")

DEFAULT_MAX_KEYS: Final = 100_000
DEFAULT_RECENT_MAX: Final = 100
MAX_KEY_LENGTH: Final = 256  # longer keys are dropped and counted (a key is data, not a label, but is kept)
# ``metric`` label of revisions dropped in ark_obs_dropped_total
REVISION_METRIC: Final = "state_revision"


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


class RevisionBackend(Protocol):
    """Where the highest revision per key is kept."""

    @property
    def backend(self) -> str: ...

    def advance(self, key: str, revision: int) -> int | None:
        """Keep ``max(last, revision)`` for ``key``; return the last revision before, None if unknown."""
        ...

    def __len__(self) -> int: ...


class MemoryRevisions:
    """The last revision per key in this process: an LRU map of at most ``max_keys`` keys."""

    backend: Final = "memory"

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, on_evicted: Callable[[int], None] | None = None) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self._last: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evicted = on_evicted

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
        if evicted and self._on_evicted is not None:
            self._on_evicted(evicted)
        return last

    def __len__(self) -> int:
        return len(self._last)


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
            reason: dropped.labels(REVISION_METRIC, reason) for reason in ("key_evicted", "invalid_revision")
        }
        self.backend: RevisionBackend = backend or MemoryRevisions(max_keys, self._dropped["key_evicted"].inc)
        self.max_keys = getattr(self.backend, "max_keys", max_keys)
        self.recent_max = recent_max
        self._recent: deque[RevisionAnomaly] = deque(maxlen=recent_max)
        self._clock = clock

    def observe(self, agent: str, key: str, revision: int) -> AnomalyKind | None:
        """Check ``revision`` of ``key`` written by ``agent``; the anomaly found, or None.

        A negative revision or an over-long key is runtime data gone bad: dropped, counted, logged once.
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
        previous = self.backend.advance(key, revision)
        if previous is None:
            return None
        kind = classify(previous, revision)
        if kind is not None:
            self._anomalies.labels(agent, kind.value).inc()
            self._recent.append(RevisionAnomaly(self._clock(), agent, key, kind, previous, revision))
        return kind

    def recent(self, limit: int | None = None) -> list[RevisionAnomaly]:
        """The most recent anomalies, newest first."""
        items = list(reversed(self._recent))
        return items if limit is None else items[:limit]

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
        )
