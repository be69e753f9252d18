"""One trace/heartbeat store factory for the behaviour suites: memory, a standalone Redis, a Redis Cluster.

The Redis servers are the session's (tests/plugins/redis_server.py, redis_cluster.py), emptied per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ark_obs.traces import MemoryStore, RedisStore

BACKENDS = ("memory", "redis", "cluster")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend a parametrized test runs on."""
    return str(request.param)


@pytest.fixture
def store_factory(backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Makes stores of the parametrized backend; keyword arguments go to the cluster store (``shards=1``)."""
    made: list[Any] = []
    fixture = {"redis": "redis_url", "cluster": "redis_cluster_url"}.get(backend)
    url = request.getfixturevalue(fixture) if fixture else None

    def make(**kw: Any) -> Any:
        store: Any
        if url is None:
            store = MemoryStore()
        elif backend == "cluster":
            store = RedisStore.from_cluster_url(url, **kw)
        else:
            store = RedisStore.from_url(url)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
