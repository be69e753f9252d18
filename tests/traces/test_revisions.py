"""State history continuity: gaps, regressions and duplicates counted, recent ones listed, bounded map."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ark_obs import catalog
from ark_obs.instrumentation import track_state_operation
from ark_obs.metrics import MetricsCollector
from ark_obs.service import create_app
from ark_obs.settings import Settings
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.redis_store import make_client
from ark_obs.traces.revisions import (
    MAX_KEY_LENGTH,
    AnomalyKind,
    FileAnomalies,
    MemoryRevisions,
    RedisRevisions,
    RevisionAnomaly,
    RevisionChecker,
    backend_for,
)
from plugins.clock import FakeClock
from plugins.multiprocess import Monitor, run_agent


@pytest.fixture
def c() -> MetricsCollector:
    return MetricsCollector(ticker=False, clock=FakeClock())


def anomalies(c: MetricsCollector, agent: str, kind: str) -> float:
    value: float = c.metric(catalog.ARK_STATE_REVISION_ANOMALIES_TOTAL.name).labels(agent, kind).get()
    return value


def dropped(c: MetricsCollector, reason: str) -> float:
    value: float = c.metric(catalog.ARK_OBS_DROPPED_TOTAL.name).labels("state_revision", reason).get()
    return value


def test_contiguous_revisions_count_nothing(c: MetricsCollector) -> None:
    """1, 2, 3 of one key and 7, 8 of another (a late start) are no anomaly; latency is still observed."""
    for key, revisions in (("position:AAPL", (1, 2, 3)), ("position:MSFT", (7, 8))):
        for r in revisions:
            track_state_operation("write", "Kenny", 2.0, key=key, revision=r, collector=c)
    assert all(anomalies(c, "Kenny", k.value) == 0 for k in AnomalyKind)
    assert c.revisions.recent() == []
    assert c.get_histogram_stats("state_write_latency_ms", {"operation": "write", "agent": "Kenny"}).count == 5


@pytest.mark.parametrize(
    ("revisions", "kind", "previous", "revision"),
    [((3, 5), AnomalyKind.GAP, 3, 5), ((5, 4), AnomalyKind.REGRESSION, 5, 4), ((5, 5), AnomalyKind.DUPLICATE, 5, 5)],
)
def test_each_anomaly_is_counted_and_listed_with_its_key(
    c: MetricsCollector, revisions: tuple[int, int], kind: AnomalyKind, previous: int, revision: int
) -> None:
    """5 after 3 is a gap, 4 after 5 a regression, 5 after 5 a duplicate: counted by agent and kind, key listed."""
    for r in revisions:
        track_state_operation("write", "Kenny", 1.0, key="position:AAPL", revision=r, collector=c)
    assert anomalies(c, "Kenny", kind.value) == 1
    assert sum(anomalies(c, "Kenny", k.value) for k in AnomalyKind) == 1
    (a,) = c.revisions.recent()
    assert (a.agent, a.key, a.kind, a.previous, a.revision) == ("Kenny", "position:AAPL", kind, previous, revision)


def test_the_key_is_never_a_label(c: MetricsCollector) -> None:
    """Anomalies on 50 keys make one series per (agent, kind), not one per key."""
    for i in range(50):
        c.revisions.observe("Kenny", f"k{i}", 1)
        c.revisions.observe("Kenny", f"k{i}", 3)
    text = c.export_prometheus()
    lines = [line for line in text.splitlines() if line.startswith("ark_state_revision_anomalies_total{")]
    assert lines == ['ark_state_revision_anomalies_total{agent="Kenny",kind="gap"} 50.0']


def test_a_regression_keeps_the_highest_revision(c: MetricsCollector) -> None:
    """After 5, 4 (regression) the next good revision is 6: the map keeps the highest seen."""
    for r in (5, 4, 6):
        c.revisions.observe("Kenny", "k", r)
    assert [a.kind for a in c.revisions.recent()] == [AnomalyKind.REGRESSION]


def test_bounded_map_forgets_the_least_recently_written_key_and_counts_it() -> None:
    """With max_keys=2, a third key evicts the least recently written one (counted); it then restarts clean."""
    c = MetricsCollector(ticker=False)
    c.revisions = RevisionChecker(c.registry, max_keys=2)
    c.revisions.observe("Kenny", "a", 1)
    c.revisions.observe("Kenny", "b", 1)
    c.revisions.observe("Kenny", "a", 2)  # a is now the most recent
    c.revisions.observe("Kenny", "c", 1)  # evicts b
    assert len(c.revisions.backend) == 2
    assert dropped(c, "key_evicted") == 1
    assert c.revisions.observe("Kenny", "a", 4) is AnomalyKind.GAP  # a was kept
    assert c.revisions.observe("Kenny", "b", 9) is None  # b was forgotten: a first sighting


def test_recent_anomalies_are_bounded_newest_first() -> None:
    """recent_max=3 keeps the three newest anomalies, newest first."""
    c = MetricsCollector(ticker=False)
    c.revisions = RevisionChecker(c.registry, recent_max=3)
    for i in range(5):
        c.revisions.observe("Kenny", f"k{i}", 1)
        c.revisions.observe("Kenny", f"k{i}", 1)
    assert [a.key for a in c.revisions.recent()] == ["k4", "k3", "k2"]
    assert anomalies(c, "Kenny", "duplicate") == 5


def test_bad_runtime_data_is_dropped_and_counted(c: MetricsCollector) -> None:
    """A negative revision, an empty or over-long key: dropped and counted, never raised into the agent."""
    c.revisions.observe("Kenny", "k", -1)
    c.revisions.observe("Kenny", "", 1)
    c.revisions.observe("Kenny", "x" * (MAX_KEY_LENGTH + 1), 1)
    assert dropped(c, "invalid_revision") == 3
    assert len(c.revisions.backend) == 0


def test_programming_errors_raise(c: MetricsCollector) -> None:
    """A non-int revision, or a key without a revision, is a programming error and raises at once."""
    with pytest.raises(TypeError, match="int"):
        track_state_operation("write", "Kenny", 1.0, key="k", revision="3", collector=c)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        track_state_operation("write", "Kenny", 1.0, key="k", revision=True, collector=c)
    with pytest.raises(TypeError, match="together"):
        track_state_operation("write", "Kenny", 1.0, key="k", collector=c)


def test_memory_backend_rejects_a_zero_bound() -> None:
    """max_keys below 1 is a configuration error."""
    with pytest.raises(ValueError, match="max_keys"):
        MemoryRevisions(0)


async def test_get_state_anomalies_lists_recent_ones_with_keys() -> None:
    """GET /state/anomalies lists the newest anomalies with key, kind and revisions; limit applies; bounds shown."""
    settings = Settings(state_revision_max_keys=10, state_revision_recent_max=5)
    app = create_app(settings)
    collector = app.state.service.collector
    try:
        for key, revisions in (("position:AAPL", (1, 3)), ("position:MSFT", (4, 4))):
            for r in revisions:
                track_state_operation("write", "Kenny", 1.0, key=key, revision=r, collector=collector)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ark-obs") as client:
            body = (await client.get("/state/anomalies")).json()
            assert [(a["key"], a["kind"], a["previous"], a["revision"]) for a in body["anomalies"]] == [
                ("position:MSFT", "duplicate", 4, 4),
                ("position:AAPL", "gap", 1, 3),
            ]
            assert (body["recent_max"], body["max_keys"], body["tracked_keys"], body["backend"]) == (5, 10, 2, "memory")
            limited = (await client.get("/state/anomalies", params={"limit": 1})).json()
            assert len(limited["anomalies"]) == 1
            assert (await client.get("/state/anomalies", params={"limit": 0})).status_code == 422
            metrics = (await client.get("/metrics")).text
            assert 'ark_state_revision_anomalies_total{agent="Kenny",kind="gap"} 1.0' in metrics
    finally:
        for monitor in app.state.service.owned:
            monitor.close()


def redis_checker(url: str, **kw: Any) -> tuple[MetricsCollector, RevisionChecker]:
    """A collector (one 'process') whose revision map is the shared Redis one."""
    c = MetricsCollector(ticker=False)
    c.revisions = RevisionChecker(c.registry, backend=RedisRevisions(make_client(url), **kw))
    return c, c.revisions


def test_redis_map_checks_writers_in_several_processes_together(redis_url: str) -> None:
    """Two collectors on one Redis: revision 1 written by one and 3 by the other is a gap, counted where seen."""
    a, checker_a = redis_checker(redis_url)
    b, checker_b = redis_checker(redis_url)
    assert checker_a.backend.backend == "redis"
    assert checker_a.observe("Kenny", "position:AAPL", 1) is None
    assert checker_b.observe("Kenny", "position:AAPL", 2) is None  # contiguous across processes
    assert checker_a.observe("Kenny", "position:AAPL", 4) is AnomalyKind.GAP
    assert checker_b.observe("Kenny", "position:AAPL", 3) is AnomalyKind.REGRESSION  # 4 is the highest
    assert checker_b.observe("Kenny", "position:AAPL", 5) is None
    assert anomalies(a, "Kenny", "gap") == 1 and anomalies(b, "Kenny", "regression") == 1


def test_redis_map_is_bounded_and_counts_evictions(redis_url: str) -> None:
    """max_keys=2 in Redis: the least recently written key is forgotten and counted."""
    clock = FakeClock()
    c = MetricsCollector(ticker=False)
    backend = RedisRevisions(make_client(redis_url), max_keys=2, clock=clock)
    checker = c.revisions = RevisionChecker(c.registry, backend=backend)
    for key, revision in (("a", 1), ("b", 1), ("a", 2), ("c", 1)):  # c pushes b out: a was written later
        clock.advance(1)
        checker.observe("Kenny", key, revision)
    assert len(checker.backend) == 2
    assert dropped(c, "key_evicted") == 1
    assert checker.observe("Kenny", "a", 4) is AnomalyKind.GAP  # a was kept
    assert checker.observe("Kenny", "b", 7) is None  # b was forgotten: a first sighting again


def test_redis_outage_drops_and_counts_never_raises(redis_server: Any, redis_url: str) -> None:
    """With Redis down, a revision is dropped and counted as store_unavailable; the agent's call returns."""
    c, checker = redis_checker(redis_url)
    checker.observe("Kenny", "k", 1)
    redis_server.stop()
    try:
        track_state_operation("write", "Kenny", 1.0, key="k", revision=5, collector=c)
        assert dropped(c, "store_unavailable") == 1
        assert anomalies(c, "Kenny", "gap") == 0
    finally:
        redis_server.start()


async def test_service_on_redis_uses_the_shared_map(redis_url: str) -> None:
    """ARK_OBS_TRACE_STORE=redis://...: the service checks revisions in Redis, as GET /state/anomalies says."""
    app = create_app(Settings(trace_store=redis_url))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ark-obs") as client:
            body = (await client.get("/state/anomalies")).json()
        assert body["backend"] == "redis"
        assert backend_for(app.state.service.collector.traces.store).backend == "redis"
        assert backend_for(MemoryStore()).backend == "memory"
    finally:
        for monitor in app.state.service.owned:
            monitor.close()


# --- several writer processes: the map and the list follow the configured store whatever the first call ---
WRITER = """
import sys
from ark_obs import metrics
from ark_obs.instrumentation import track_state_operation
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "span":  # a first ark-obs call that builds the trace monitor
        metrics.record_trace("4bf92f3577b34da6a3ce929d0e0e4736", "Kyle")
        print("ok", flush=True)
    else:
        track_state_operation("write", args[0], 1.0, key=args[1], revision=int(args[2]))
        print(metrics.get_collector().revisions.backend.backend, flush=True)
"""


class Writer:
    """An agent process on ``ARK_OBS_TRACE_STORE=url`` that runs one command at a time."""

    def __init__(self, url: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER],
            env={**env, "ARK_OBS_TRACE_STORE": url},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.mark.parametrize("fixture", ["redis_url", "redis_cluster_url"])
async def test_writer_processes_share_the_map_and_the_list_whatever_their_first_call(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    """Two agent processes write one key in turn; one's first ark-obs call is ``track_state_operation``, the
    other's a span. Both check against the store's map (Redis, Redis Cluster): exactly the true anomalies
    are found, and the service lists both processes' anomalies."""
    url = request.getfixturevalue(fixture)
    state_first, span_first = Writer(url), Writer(url)
    try:
        assert state_first("state Kenny position:AAPL 1") == "redis"
        assert span_first("span") == "ok"
        assert span_first("state Joey position:AAPL 2") == "redis"
        state_first("state Kenny position:AAPL 3")
        span_first("state Joey position:AAPL 5")  # a gap: 4 was never written
        state_first("state Kenny position:AAPL 5")  # a duplicate
        state_first("state Kenny position:AAPL 6")
    finally:
        state_first.close()
        span_first.close()
    app = create_app(Settings(trace_store=url))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ark-obs") as client:
            body = (await client.get("/state/anomalies")).json()
    finally:
        for monitor in app.state.service.owned:
            monitor.close()
    assert body["listed_from"] == "redis"
    assert [(a["agent"], a["kind"], a["previous"], a["revision"]) for a in body["anomalies"]] == [
        ("Kenny", "duplicate", 5, 5),
        ("Joey", "gap", 3, 5),
    ]
    assert body["tracked_keys"] == 1


def test_multiprocess_service_lists_what_agent_processes_detected(tmp_path: Path) -> None:
    """Multiprocess mode, memory store: anomalies an agent process detects are listed by the monitor process."""
    monitor = Monitor(tmp_path, "c.revisions.listing().model_dump(mode='json')")
    run_agent(
        "from ark_obs.instrumentation import track_state_operation\n"
        "for r in (1, 2, 4, 4):\n"
        "    track_state_operation('write', 'Kenny', 1.0, key='position:AAPL', revision=r)\n",
        tmp_path,
    )
    body = monitor.result()
    assert body["listed_from"] == "multiprocess_dir"
    assert [(a["agent"], a["key"], a["kind"], a["revision"]) for a in body["anomalies"]] == [
        ("Kenny", "position:AAPL", "duplicate", 4),
        ("Kenny", "position:AAPL", "gap", 4),
    ]


def test_a_process_anomaly_file_stays_bounded(tmp_path: Path) -> None:
    """FileAnomalies: past 2 x recent_max lines the process' file is rewritten with the newest recent_max."""
    log = FileAnomalies(str(tmp_path), recent_max=3)
    for i in range(10):
        log.append(RevisionAnomaly(float(i), "Kenny", f"k{i}", AnomalyKind.GAP, i, i + 2))
    (path,) = tmp_path.glob("ark_obs_revision_anomalies_*.jsonl")
    assert len(path.read_text().splitlines()) <= 6
    assert [a.key for a in log.recent(10)] == ["k9", "k8", "k7"]
