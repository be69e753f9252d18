"""Trace store on Redis Cluster vs standalone Redis: spans/s from one process, same machine, same run.

A standalone ``redis-server`` and a 3-primary cluster (one replica each, as deployed) run side by side;
rounds alternate between the two stores. Besides the client's spans/s, the Redis CPU time each primary
used is read from ``INFO cpu``, which gives spans per primary CPU-second: the per-shard figure that
projects a cluster's capacity when primaries have cores of their own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from ark_obs.metrics import MetricsCollector
from ark_obs.traces import DEFAULT_PIPELINE, SPAN_METRIC, TraceMonitor
from ark_obs.traces.redis_store import RedisStore
from bench._timing import row, sized

AGENTS = DEFAULT_PIPELINE
PRIMARIES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(binary: str, workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    node_dir = workdir / str(port)
    node_dir.mkdir()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(node_dir), "--repl-diskless-sync-delay", "0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                client.close()
                return proc, port
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        client = redis.Redis(port=port, decode_responses=True, socket_timeout=1)
        try:
            if dict(client.execute_command("CLUSTER INFO")).get("cluster_state") != "ok":
                return False
            info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        finally:
            client.close()
    return True


def _cpu(port: int) -> float:
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def _primaries(port: int) -> list[int]:
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        nodes = dict(client.execute_command("CLUSTER NODES"))
    finally:
        client.close()
    return [int(addr.rsplit(":", 1)[1]) for addr, n in nodes.items() if "master" in n["flags"] and n["slots"]]


def _round(store: RedisStore, traces: int) -> tuple[float, int, float]:
    """Spans/s for ``traces`` complete traces (recorded, flushed, written), completions and drops."""
    monitor = TraceMonitor(MetricsCollector(ticker=False), store, sweep=False, background=False)
    ids = [uuid.uuid4().hex for _ in range(traces)]
    record = monitor.record_span
    started = time.perf_counter()
    for trace_id in ids:
        for agent in AGENTS:
            record(trace_id, agent)
    store.flush()
    elapsed = time.perf_counter() - started
    done = sum(int(store.client.llen(prefix + "done")) for prefix in store.shard_prefixes)
    for prefix in store.shard_prefixes:
        store.client.delete(prefix + "done")  # the next round counts its own
    dropped = monitor.collector.registry.prometheus.get_sample_value(
        "ark_obs_dropped_total", {"metric": SPAN_METRIC, "reason": "store_unavailable"}
    )
    return traces * len(AGENTS) / elapsed, done, float(dropped or 0)


def run(traces: int = sized(20_000, 200), rounds: int = sized(5, 1)) -> dict[str, Any]:
    """Standalone vs cluster store throughput, alternating rounds."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        return {"title": "cluster", "rows": [{**row("Redis Cluster store", 0, "spans/s"), "ok": False,
                                                "note": "skipped: redis-server / redis-cli not found"}]}  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc, solo_port = _start(binary, Path(tmp))
            procs.append(proc)
            ports = []
            for _ in range(2 * PRIMARIES):
                proc, port = _start(binary, Path(tmp), "--cluster-enabled", "yes", "--cluster-port",
                                    str(_free_port()), "--cluster-config-file", "nodes.conf")  # fmt: skip
                procs.append(proc)
                ports.append(port)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "1",
                 "--cluster-yes"], check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while not _cluster_ok(ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not come up")
                time.sleep(0.1)
            primaries = _primaries(ports[0])
            solo = RedisStore.from_url(f"redis://127.0.0.1:{solo_port}/0", max_pending=traces * len(AGENTS))
            cluster = RedisStore.from_cluster_url(
                "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/",
                max_pending=traces * len(AGENTS),
            )
            rates: dict[str, list[float]] = {"solo": [], "cluster": []}
            cpu: dict[str, float] = {"solo": 0.0, "cluster": 0.0}
            complete = {"solo": 0, "cluster": 0}
            drops = 0.0
            for _ in range(rounds):
                for name, store, servers in (("solo", solo, [solo_port]), ("cluster", cluster, primaries)):
                    before = sum(_cpu(p) for p in servers)
                    rate, done, dropped = _round(store, traces)
                    cpu[name] += sum(_cpu(p) for p in servers) - before
                    rates[name].append(rate)
                    complete[name] += done
                    drops += dropped
            solo.close()
            cluster.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    spans = rounds * traces * len(AGENTS)
    best = {name: max(r) for name, r in rates.items()}
    ratio = best["cluster"] / best["solo"]
    per_cpu = {name: spans / cpu[name] if cpu[name] else 0.0 for name in cpu}
    solo_row = row(
        "standalone store: spans/s from one process (best of rounds)",
        best["solo"],
        "spans/s",
        None,
        None,
        f"rounds {', '.join(f'{r:,.0f}' for r in rates['solo'])}; Redis CPU: {per_cpu['solo']:,.0f} spans per CPU-s",
    )
    cluster_row = row(
        f"cluster store ({PRIMARIES} primaries + {PRIMARIES} replicas, 16 shards): spans/s from one process",
        best["cluster"],
        "spans/s",
        best["solo"],
        None,
        f"target >= 0.7x standalone; rounds {', '.join(f'{r:,.0f}' for r in rates['cluster'])}; completed "
        f"{complete['cluster']:,} of {rounds * traces:,}; dropped {drops:,.0f}; primaries' CPU: "
        f"{per_cpu['cluster']:,.0f} spans per CPU-s",
    )
    cluster_row["ratio"] = ratio
    cluster_row["ok"] = ratio >= 0.7 and complete["cluster"] == rounds * traces and drops == 0
    shard_row = row(
        "cluster: spans per primary CPU-second (per-shard capacity, client not counted)",
        per_cpu["cluster"],
        "spans/s",
        None,
        None,
        f"standalone server: {per_cpu['solo']:,.0f} spans per CPU-s; a primary on a core of its own takes about this",
    )
    return {"title": "cluster: trace store on Redis Cluster vs standalone", "rows": [solo_row, cluster_row, shard_row]}


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
