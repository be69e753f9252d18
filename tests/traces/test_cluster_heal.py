"""After a Redis Cluster primary is lost, writes succeed again as soon as the cluster serves every slot."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ark_obs.metrics import MetricsCollector
from ark_obs.traces import SPAN_METRIC, TraceMonitor
from ark_obs.traces.redis_store import RedisStore
from plugins.redis_cluster import RedisClusterServers, wait_until

PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")


def _served_since(cluster: RedisClusterServers, prefixes: tuple[str, ...], timeout: float = 60) -> float:
    """When the first look that found every shard served began (an upper bound of when the slots came back)."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        if _serves_every_shard(cluster, prefixes):
            return began
        assert began < deadline, "the slots were never served again"
        time.sleep(0.02)


def _serves_every_shard(cluster: RedisClusterServers, prefixes: tuple[str, ...]) -> bool:
    """A fresh client (no retries: a look is short) writes a key in every shard's slot: the cluster serves them all."""
    ports = [p for p, n in cluster.nodes.items() if n.running]
    try:
        client = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],  # type: ignore[no-untyped-call]
            socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
    except redis.RedisError:
        return False
    try:
        for prefix in prefixes:
            client.set(prefix + "heal-probe", "1", px=1000)
        return True
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.mark.slow
def test_writes_resume_as_soon_as_the_cluster_serves_the_slots(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """A primary killed: from the moment a fresh client can write to every shard again, the store
    acknowledges writes within half a second (it probes every 0.1 s while down; with the 1 s probe
    interval alone the gap was up to a second, with stale pooled connections more)."""
    store = RedisStore.from_cluster_url(redis_cluster_url)
    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, store, sweep=False, background=False)
    victim = redis_cluster.primaries()[0]
    acked: list[float] = []
    stop = threading.Event()

    def dropped() -> float:
        value = collector.registry.prometheus.get_sample_value(
            "ark_obs_dropped_total", {"metric": SPAN_METRIC, "reason": "store_unavailable"}
        )
        return value or 0.0

    def ingest() -> None:
        i = 0
        while not stop.is_set():
            before = dropped()
            if monitor.check().healthy:
                for agent in PIPELINE:
                    monitor.record_span(f"{i:032x}", agent)
                store.flush()
                if monitor.check().healthy and dropped() == before:
                    acked.append(time.monotonic())
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=ingest, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 20, 30, "no ingest before the kill")
        redis_cluster.nodes[victim].kill()
        killed = time.monotonic()
        wait_until(lambda: not monitor.check().healthy, 30, "the store never noticed the lost primary")
        noticed = time.monotonic()
        served = _served_since(redis_cluster, store.shard_prefixes)
        wait_until(lambda: acked[-1] > served, 30, "writes did not resume")
        resumed = next(t for t in acked if t > noticed)
    finally:
        stop.set()
        thread.join(10)
        monitor.close()
        redis_cluster.nodes[victim].start()
        redis_cluster.wait_whole()
    gap = resumed - served
    print(f"slots served {served - killed:.2f} s after the kill; writes acknowledged {gap:.2f} s after that")
    assert gap < 0.5


@pytest.mark.slow
def test_serve_answers_200_as_soon_as_the_cluster_serves_the_slots(
    start: object, redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """The same through ``ark-obs serve``: POST /spans answers 503 while the slots are not served, and 200
    again within half a second of a fresh client being able to write every shard."""
    import httpx

    from ark_obs.traces.redis_cluster import cluster_prefixes

    server = start({"ARK_OBS_TRACE_STORE": redis_cluster_url})  # type: ignore[operator]
    prefixes = cluster_prefixes("ark:obs:", 16)
    victim = redis_cluster.primaries()[0]
    served_at: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        served_at.append(_served_since(redis_cluster, prefixes))

    try:
        with httpx.Client(timeout=10) as http:

            def post(i: int) -> int:
                body = {"spans": [{"trace_id": f"{0xBEA10000 + i:032x}", "agent": a} for a in PIPELINE]}
                return http.post(server.url + "/spans", json=body).status_code

            assert post(0) == 200
            redis_cluster.nodes[victim].kill()
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            i, refused, resumed = 1, False, 0.0
            deadline = time.monotonic() + 60
            while not (refused and resumed):
                assert time.monotonic() < deadline, "no 503 during the failover, or no 200 after it"
                status = post(i)
                refused = refused or status == 503
                if refused and status == 200:
                    resumed = time.monotonic()
                i += 1
                time.sleep(0.02)
            wait_until(lambda: bool(served_at), 30, "the slots were never served again")
    finally:
        stop.set()
        redis_cluster.nodes[victim].start()
        redis_cluster.wait_whole()
    gap = resumed - served_at[0]
    print(f"serve: 200 again {gap:.2f} s after a fresh client could write every shard")
    assert gap < 0.5
