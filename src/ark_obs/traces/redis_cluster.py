"""Redis Cluster for the trace store: the URL form, a lazily connected client, hash-tagged shard prefixes."""

from __future__ import annotations

import threading
from typing import Any, Final

from redis._parsers import Encoder
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from ark_obs._redact import redact_url

DEFAULT_CLUSTER_SHARDS: Final = 16
MAX_CLUSTER_SHARDS: Final = 1024
CLUSTER_SCHEMES: Final = ("redis+cluster://", "rediss+cluster://")


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any], int]:
    """Seed nodes, client options and shard count of ``redis+cluster://[user:password@]host:port[,host:port...]/[?shards=N]``."""
    scheme, _, rest = url.strip().partition("://")
    netloc, _, tail = rest.partition("/")
    query = tail.partition("?")[2]
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, "6379"
        if not host or not port.isdigit():
            raise ValueError(f"bad cluster node {part!r} in {redact_url(url)!r}: use host:port")
        nodes.append((host, int(port)))
    shards = DEFAULT_CLUSTER_SHARDS
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name != "shards" or not value.isdigit() or not 1 <= int(value) <= MAX_CLUSTER_SHARDS:
            raise ValueError(f"bad option {name!r} in {redact_url(url)!r}: only shards=1..{MAX_CLUSTER_SHARDS}")
        shards = int(value)
    options: dict[str, Any] = {"username": username or None, "password": password or None}
    if scheme == "rediss+cluster":
        options["ssl"] = True
    return nodes, options, shards


class LazyCluster:
    """A ``RedisCluster`` built on first use, and built again after a failed attempt.

    redis-py's cluster client connects in its constructor; a store (and so an agent importing
    ark-obs) must open while the cluster is down. Until the client exists every call raises
    ``RedisClusterException``, which the store counts as the store being unavailable.
    """

    def __init__(self, url: str, timeout: float, attempts: int) -> None:
        nodes, self._options, _ = parse_cluster_url(url)
        self._nodes = nodes
        self._timeout = timeout
        self._attempts = attempts
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        self.password: str | None = self._options.get("password")

    def get(self) -> RedisCluster:
        """The client, built now if it does not exist yet (raises while no seed node answers)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = RedisCluster(
                        startup_nodes=[ClusterNode(h, p) for h, p in self._nodes],  # type: ignore[no-untyped-call]
                        socket_timeout=self._timeout,
                        socket_connect_timeout=self._timeout,
                        retry=Retry(NoBackoff(), self._attempts),
                        decode_responses=True,
                        **self._options,
                    )
                client = self._client
        return client

    def built(self) -> RedisCluster | None:
        """The client if it was built (None before the cluster first answered); never connects."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name == "nodes_manager":
            return self.get().nodes_manager

        # methods are looked up when called, so ``store._call(client.hgetall, ...)`` counts the failure
        def call(*args: Any, **kw: Any) -> Any:
            return getattr(self.get(), name)(*args, **kw)

        return call

    def get_encoder(self) -> Encoder:
        """The encoder ``Script`` hashes its source with (no connection needed)."""
        return Encoder("utf-8", "strict", True)  # type: ignore[no-untyped-call]

    def register_script(self, script: str) -> Script:
        """A script bound to this client, usable before the cluster answers."""
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the client if it was built."""
        if self._client is not None:
            self._client.close()


def make_cluster_client(url: str, timeout: float, attempts: int = 0) -> Any:
    """A (lazily built) cluster client with short socket timeouts; MOVED/ASK are always followed,
    ``attempts`` retries after errors."""
    return LazyCluster(url, timeout, attempts)


def cluster_prefixes(prefix: str, shards: int) -> tuple[str, ...]:
    """``<prefix>{sJ}:`` for ``shards`` hash tags whose slots fall in evenly spaced slot ranges.

    Redis Cluster assigns slots in contiguous ranges, so evenly spaced slots spread the shards over
    every primary whatever their number.
    """
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"a cluster key prefix cannot hold a hash tag: {prefix!r}")
    out = []
    for i in range(shards):
        lo, hi = i * REDIS_CLUSTER_HASH_SLOTS // shards, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        j = 0
        while not lo <= key_slot(f"s{j}".encode()) < hi:
            j += 1
        out.append(f"{prefix}{{s{j}}}:")
    return tuple(out)
