"""The trace store on a real Redis Cluster: sharding, outcomes across replicas, failover, resharding and
three ``ark-obs serve`` replicas on one cluster. The behaviour suite (test_traces, test_heartbeat) also
runs over the cluster store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ark_obs.metrics import MetricsCollector
from ark_obs.traces import DEFAULT_PIPELINE, SPAN_METRIC, TraceMonitor, TraceState
from ark_obs.traces.redis_cluster import DEFAULT_CLUSTER_SHARDS, cluster_prefixes, parse_cluster_url
from ark_obs.traces.redis_store import RedisStore, open_store
from plugins.clock import FakeClock
from plugins.redis_cluster import RedisClusterServers, wait_until

PIPELINE = list(DEFAULT_PIPELINE)


def sample(collector: MetricsCollector, name: str, **labels: str) -> float:
    value = collector.registry.prometheus.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster_store(redis_cluster_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_cluster_url(redis_cluster_url, retry_seconds=0.2)
    yield store
    store.close()


def keys_per_primary(cluster: RedisClusterServers) -> dict[int, list[str]]:
    out = {}
    for port in cluster.primaries():
        client = cluster.nodes[port].client()
        try:
            out[port] = [str(k) for k in client.keys("*")]
        finally:
            client.close()
    return out


def test_cluster_urls_open_the_cluster_store_and_bad_forms_raise(redis_cluster_url: str) -> None:
    """``redis+cluster://h:p,h:p/`` opens a sharded store (16 shards, ``?shards=N``); bad nodes or options raise."""
    nodes, options, shards = parse_cluster_url("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2/?shards=4")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379)]
    assert (options, shards) == ({"username": "u", "password": "pw"}, 4)
    store = open_store(redis_cluster_url, timeout=0.5)
    try:
        assert isinstance(store, RedisStore) and len(store.shard_prefixes) == DEFAULT_CLUSTER_SHARDS
        assert store.health().healthy
    finally:
        store.close()
    for bad in ("redis+cluster://h:x/", "redis+cluster://h:1/?shards=0", "redis+cluster://h:1/?db=2"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    with pytest.raises(ValueError, match="hash tag"):
        cluster_prefixes("a{b}:", 2)


def test_keys_spread_over_every_primary_and_all_expire(
    cluster_store: RedisStore, redis_cluster: RedisClusterServers, clock: FakeClock
) -> None:
    """Trace keys and per-shard structures land on every primary, none holding more than half; all have a TTL."""
    # finished traces kept for an hour: every trace key is still there after the sweep
    monitor = TraceMonitor(MetricsCollector(clock=clock, ticker=False), cluster_store, ttl_seconds=60, sweep=True,
                           background=False, history_seconds=3600)  # fmt: skip
    for i in range(300):
        for agent in PIPELINE[: 1 + i % 5]:
            monitor.record_span(f"spread-{i}", agent)
    for agent in PIPELINE:
        cluster_store.beat(agent, clock())
    cluster_store.flush()
    clock.advance(61)
    monitor.sweep()
    cluster_store.claim_outage("Kyle", clock())
    per_node = keys_per_primary(redis_cluster)
    trace_keys = {p: [k for k in keys if ":t:" in k] for p, keys in per_node.items()}
    total = sum(len(k) for k in trace_keys.values())
    assert total == 300
    assert len(trace_keys) == 3 and all(0 < len(k) <= total / 2 for k in trace_keys.values()), {
        p: len(k) for p, k in trace_keys.items()
    }
    assert all(any(k.endswith(":recent") for k in keys) for keys in per_node.values())
    for port, keys in per_node.items():
        client = redis_cluster.nodes[port].client()
        try:
            assert {k: client.pttl(k) for k in keys if client.pttl(k) < 0} == {}
        finally:
            client.close()
    monitor.close()


def test_cluster_replicas_count_every_outcome_once(redis_cluster_url: str, clock: FakeClock) -> None:
    """Two sweeping monitors on one cluster: each completion, expiry and late span is counted by exactly one."""
    collectors = [MetricsCollector(clock=clock, ticker=False) for _ in range(2)]
    stores = [RedisStore.from_cluster_url(redis_cluster_url) for _ in range(2)]
    monitors = [
        TraceMonitor(c, s, ttl_seconds=60, sweep=True, background=False)
        for c, s in zip(collectors, stores, strict=True)
    ]
    try:
        for i in range(200):
            for k, agent in enumerate(PIPELINE if i % 4 else PIPELINE[:2]):
                monitors[(i + k) % 2].record_span(f"r{i}", agent)  # each trace's spans from both replicas
        for m in monitors:
            m.store.flush()
        monitors[0].record_span("r1", "Kyle")  # late
        monitors[0].store.flush()
        clock.advance(61)
        for m in monitors:
            m.sweep()
        complete = sum(sample(c, "ark_traces_complete_total") for c in collectors)
        incomplete = sum(sample(c, "ark_traces_incomplete_total", missing_agent="HRM") for c in collectors)
        late = sum(sample(c, "ark_trace_late_spans_total") for c in collectors)
        assert (complete, incomplete, late) == (150, 50, 1)
    finally:
        for m in monitors:
            m.close()


def test_sharded_capacity_bounds_the_total_in_flight(redis_cluster_url: str, clock: FakeClock) -> None:
    """With 16 shards and max_in_flight 32, at most 2 traces per shard stay in flight; the rest are evicted, counted."""
    store = RedisStore.from_cluster_url(redis_cluster_url)
    monitor = TraceMonitor(MetricsCollector(clock=clock, ticker=False), store, max_in_flight=32, sweep=True,
                           background=False)  # fmt: skip
    try:
        for i in range(200):
            monitor.record_span(f"cap-{i}", "Kyle")
            clock.advance(0.01)
        monitor.flush()
        in_flight = monitor.in_flight()
        assert 16 <= in_flight <= 32
        assert sample(monitor.collector, "ark_traces_evicted_total", reason="capacity") == 200 - in_flight
    finally:
        monitor.close()


class Ingest:
    """Writes complete traces the way POST /spans does: a trace is acknowledged only if its flush dropped
    nothing and the store stayed healthy; otherwise it counts as refused (a 503 to the client)."""

    def __init__(self, store: RedisStore) -> None:
        self.collector = MetricsCollector(ticker=False)
        self.monitor = TraceMonitor(self.collector, store, ttl_seconds=300, sweep=False, background=False)
        self.store = store
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def dropped(self) -> float:
        return sample(self.collector, "ark_obs_dropped_total", metric=SPAN_METRIC, reason="store_unavailable")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            trace_id = f"{i:032x}"
            i += 1
            before = self.dropped()
            if not self.monitor.check().healthy:
                self.refused.append(trace_id)
                time.sleep(0.01)
                continue
            for agent in PIPELINE:
                self.monitor.record_span(trace_id, agent)
            self.store.flush()
            ok = self.monitor.check().healthy and self.dropped() == before
            (self.acked if ok else self.refused).append(trace_id)

    def __enter__(self) -> Ingest:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)

    def acked_since(self, n: int) -> int:
        return len(self.acked) - n

    def lost(self) -> list[str]:
        """Acknowledged traces the cluster does not hold as complete."""
        out = []
        for trace_id in self.acked:
            record = self.store.get(trace_id)
            if record is None or record.state is not TraceState.COMPLETE:
                out.append(trace_id)
        return out


@pytest.mark.slow
def test_primary_killed_under_load_loses_no_acknowledged_trace(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """A primary killed during ingest: writes are refused and counted while its replica is promoted, never
    acknowledged and lost; ingest resumes after promotion in the same process."""
    store = RedisStore.from_cluster_url(redis_cluster_url, retry_seconds=0.2)
    victim = redis_cluster.primaries()[0]
    try:
        with Ingest(store) as ingest:
            wait_until(lambda: len(ingest.acked) >= 200, 30, "no ingest before the kill")
            redis_cluster.nodes[victim].kill()
            wait_until(lambda: len(ingest.refused) > 0, 30, "the lost primary refused nothing")
            wait_until(lambda: victim not in redis_cluster.primaries(), 60, "no replica was promoted")
            resumed_from = len(ingest.acked)
            wait_until(lambda: ingest.acked_since(resumed_from) >= 200, 60, "ingest did not resume after promotion")
        assert ingest.dropped() > 0
        assert ingest.lost() == []
    finally:
        store.close()
        redis_cluster.nodes[victim].start()  # it rejoins as a replica of the promoted one
        redis_cluster.wait_whole()


@pytest.mark.slow
def test_resharding_during_ingest_loses_nothing(redis_cluster: RedisClusterServers, redis_cluster_url: str) -> None:
    """Slots moved with ``redis-cli --cluster reshard`` while spans flow: MOVED/ASK followed, no acknowledged
    trace lost, and writes go on (to the slots' new owner)."""
    store = RedisStore.from_cluster_url(redis_cluster_url, retry_seconds=0.2)
    source, target = redis_cluster.primaries()[:2]
    ids = {}
    for port in (source, target):
        client = redis_cluster.nodes[port].client()
        ids[port] = str(client.execute_command("CLUSTER MYID"))
        client.close()
    try:
        with Ingest(store) as ingest:
            wait_until(lambda: len(ingest.acked) >= 100, 30, "no ingest before resharding")
            for src, dst in ((source, target), (target, source)):
                redis_cluster.cli_run(
                    "--cluster", "reshard", f"127.0.0.1:{src}", "--cluster-from", ids[src], "--cluster-to",
                    ids[dst], "--cluster-slots", "1500", "--cluster-yes",
                )  # fmt: skip
                # the next move needs every node to agree about this one (spans still flow: no offset match)
                redis_cluster.wait_whole(synced=False)
            resumed_from = len(ingest.acked)
            wait_until(lambda: ingest.acked_since(resumed_from) >= 100, 30, "ingest stopped after resharding")
        assert ingest.lost() == []
        assert len(ingest.refused) <= len(ingest.acked) / 10, (len(ingest.refused), len(ingest.acked))
    finally:
        store.close()


def metric_sum(servers: list[Any], name: str) -> float:
    total = 0.0
    for server in servers:
        for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_three_serve_replicas_on_one_cluster_count_each_trace_once(
    start: Any,
    redis_cluster_url: str,
) -> None:
    """Three ``ark-obs serve`` replicas on one cluster, each trace's spans sent to different replicas: every
    trace complete, and ark_traces_complete_total summed over the replicas equals the number of traces;
    failed ones counted once in ark_traces_failed_total. Traces that stop before Kenny or Joey are stalled
    there: every replica's ark_traces_stalled is the exact count (so max over replicas is), and each
    lists them all."""
    servers = [start({"ARK_OBS_TRACE_STORE": redis_cluster_url, "ARK_OBS_STALL_SECONDS": "1"}) for _ in range(3)]
    traces = [f"{0xC0FFEE00 + i:032x}" for i in range(90)]
    at_kenny = [f"{0xBADCAFE00 + i:032x}" for i in range(37)]
    at_joey = [f"{0xDEADBEE00 + i:032x}" for i in range(23)]
    kenny_failed = set(traces[::9])  # 10 traces
    with httpx.Client(timeout=10) as http:
        for k, agent in enumerate(PIPELINE):
            for r, server in enumerate(servers):
                batch = [t for i, t in enumerate(traces) if (i + k) % 3 == r]
                ok = {t: agent != "Kenny" or t not in kenny_failed for t in batch}
                body: dict[str, Any] = {"spans": [{"trace_id": t, "agent": agent, "ok": ok[t]} for t in batch]}
                # the open traces: Kyle, Joey, HRM (waiting on Kenny) or Kyle alone (on Joey), over all replicas
                for open_traces, agents in ((at_kenny, 3), (at_joey, 1)):
                    mine = [t for i, t in enumerate(open_traces) if i % 3 == r and k < agents]
                    body["spans"] += [{"trace_id": t, "agent": agent} for t in mine]
                response = http.post(server.url + "/spans", json=body)
                assert response.status_code == 200, response.text
        for i, trace_id in enumerate(traces):
            report = http.get(servers[i % 3].url + f"/traces/{trace_id}").json()
            assert report["status"] in ("complete", "failed") and report["complete"], report
    wait_until(lambda: metric_sum(servers, "ark_traces_complete_total") >= len(traces), 30, "outcomes not counted")
    wait_until(lambda: metric_sum(servers, "ark_traces_failed_total") >= len(kenny_failed), 30, "failed not counted")
    time.sleep(1.5)  # several sweeps of every replica: nothing counted twice; the open traces stall
    assert metric_sum(servers, "ark_traces_complete_total") == len(traces)
    assert metric_sum(servers, "ark_traces_failed_total") == len(kenny_failed)
    for server in servers:
        text = httpx.get(server.url + "/metrics", timeout=5).text
        assert 'ark_traces_stalled{waiting_on="Kenny"} 37.0' in text
        assert 'ark_traces_stalled{waiting_on="Joey"} 23.0' in text
        listed = httpx.get(server.url + "/traces?status=stalled&limit=1000", timeout=5).json()["traces"]
        assert sorted((t["trace_id"], t["waiting_on"]) for t in listed) == sorted(
            [(t, "Kenny") for t in at_kenny] + [(t, "Joey") for t in at_joey]
        )


@pytest.mark.slow
def test_serve_answers_503_while_a_primary_is_lost_and_200_after_promotion(
    start: Any,
    redis_cluster: RedisClusterServers,
    redis_cluster_url: str,
) -> None:
    """``ark-obs serve`` on the cluster: while a killed primary's replica is promoted, POST /spans answers 503
    (never 200 for spans it could not write); after promotion it answers 200 again without a restart, and
    every trace it answered 200 for is complete."""
    server = start({"ARK_OBS_TRACE_STORE": redis_cluster_url})
    victim = redis_cluster.primaries()[0]
    acked: list[str] = []
    statuses: list[int] = []

    def post(i: int) -> None:
        trace_id = f"{0xFA110000 + i:032x}"
        body = {"spans": [{"trace_id": trace_id, "agent": agent} for agent in PIPELINE]}
        status = http.post(server.url + "/spans", json=body).status_code
        assert status in (200, 503), status
        statuses.append(status)
        if status == 200:
            acked.append(trace_id)

    try:
        with httpx.Client(timeout=10) as http:
            i = 0
            for i in range(50):
                post(i)
            assert statuses == [200] * 50
            redis_cluster.nodes[victim].kill()
            deadline = time.monotonic() + 60
            while 503 not in statuses or statuses[-1] != 200 or victim in redis_cluster.primaries():
                assert time.monotonic() < deadline, "no 503 during the failover, or no 200 after it"
                i += 1
                post(i)
            resumed = len(acked)
            for j in range(50):
                post(i + 1 + j)
            assert len(acked) - resumed >= 45
            for trace_id in acked:
                assert http.get(server.url + f"/traces/{trace_id}").json()["status"] == "complete", trace_id
    finally:
        redis_cluster.nodes[victim].start()
        redis_cluster.wait_whole()


def test_fixture_restores_a_primary_that_lost_a_slot_from_its_own_view(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    """The state a reshard plus kill/restart once left behind (one primary without one of its slots in its own
    view, cluster_state:fail on it alone, the others still routing the slot to it) is detected and repaired by
    the fixture's wait_whole, so later tests start on a whole cluster."""
    port = redis_cluster.primaries()[0]
    client = redis_cluster.nodes[port].client()
    try:
        slot = next(int(r[0]) for r in client.execute_command("CLUSTER SLOTS") if int(r[2][1]) == port)
        client.execute_command("CLUSTER DELSLOTS", slot)  # changes this node's own view only
        wait_until(lambda: dict(client.execute_command("CLUSTER INFO"))["cluster_state"] == "fail", 30, "no fail")
        assert not redis_cluster.agree()
        redis_cluster.wait_whole()
        assert int(client.execute_command("CLUSTER COUNTKEYSINSLOT", slot)) == 0
        assert any(int(r[0]) <= slot <= int(r[1]) and int(r[2][1]) == port
                   for r in client.execute_command("CLUSTER SLOTS"))  # fmt: skip
    finally:
        client.close()


def test_an_unreachable_cluster_never_raises_into_the_agent() -> None:
    """A store opened while no cluster node answers: recording never raises, spans are dropped and counted,
    reads raise StoreUnavailable, and health says why (redis-py's cluster client connects in its constructor)."""
    from ark_obs.traces import StoreUnavailable
    from plugins.redis_server import free_port

    collector = MetricsCollector(ticker=False)
    monitor = TraceMonitor(collector, f"redis+cluster://127.0.0.1:{free_port()}/", store_timeout=0.1, background=False)
    try:
        for agent in PIPELINE:
            monitor.record_span("nowhere", agent)
        monitor.store.flush()
        assert not monitor.store.health().healthy
        assert sample(collector, "ark_obs_dropped_total", metric=SPAN_METRIC, reason="store_unavailable") == 5
        with pytest.raises(StoreUnavailable):
            monitor.store.get("nowhere")
    finally:
        monitor.close()
