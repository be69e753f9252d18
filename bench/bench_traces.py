"""Trace store: recording cost next to a bare dict, memory per in-flight trace, bounded memory, Redis throughput."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ark_obs.catalog import LATENCY_BUCKETS_MS
from ark_obs.metrics import MetricsCollector
from ark_obs.traces import DEFAULT_PIPELINE, SPAN_METRIC, TraceMonitor
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.redis_store import RedisStore
from bench._timing import row, sized

AGENTS = DEFAULT_PIPELINE
# a sixth pipeline agent that never reports keeps 5-span traces in flight (for memory and capacity)
OPEN_PIPELINE = (*DEFAULT_PIPELINE, "Watchdog")


def _ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


def _monitor(**kw: Any) -> TraceMonitor:
    kw.setdefault("background", False)
    return TraceMonitor(MetricsCollector(ticker=False), kw.pop("store", None) or MemoryStore(), **kw)


# --- memory: recording throughput -------------------------------------------------------------------
def _throughput(traces: int = 50_000, rounds: int = 5) -> list[dict[str, Any]]:
    """Spans/s for complete 5-span traces: record_span vs a bare dict of lists, alternating rounds, CPU time."""

    def bare() -> None:
        spans: dict[str, list[tuple[str, float]]] = {}
        clock = time.time
        for trace_id in ids:
            for agent in AGENTS:
                spans.setdefault(trace_id, []).append((agent, clock()))

    def monitor() -> None:
        m = _monitor()
        record = m.record_span
        for trace_id in ids:
            for agent in AGENTS:
                record(trace_id, agent)
        assert m.collector.registry.prometheus.get_sample_value("ark_traces_complete_total") == traces

    def monitor_timed() -> None:
        m = _monitor()
        record = m.record_span
        for trace_id in ids:
            for agent in AGENTS:
                record(trace_id, agent, duration_ms=5.0)

    def raw_slis() -> None:
        # what the span SLIs alone cost on the raw client, children cached: ark_spans_total and
        # ark_span_latency_ms, without exemplars (ark refreshes each bucket's at most once a second)
        reg = CollectorRegistry()
        counter = Counter("spans", "raw", ["agent", "outcome"], registry=reg)
        histogram = Histogram("span_latency_ms", "raw", ["agent"], buckets=LATENCY_BUCKETS_MS, registry=reg)
        children = {agent: (counter.labels(agent, "ok").inc, histogram.labels(agent).observe) for agent in AGENTS}
        for _ in ids:
            for agent in AGENTS:
                inc, observe = children[agent]
                inc()
                observe(5.0)

    def collector_api() -> None:
        m = _monitor()
        m.collector.traces = m
        record = m.collector.record_trace_span
        for trace_id in ids:
            for agent in AGENTS:
                record(trace_id, agent)

    def monitor_uuid() -> None:
        m = _monitor()
        record = m.record_span
        for trace_id in uuid_ids:
            for agent in AGENTS:
                record(trace_id, agent)

    fns: dict[str, Callable[[], None]] = {
        "bare": bare,
        "monitor": monitor,
        "monitor_timed": monitor_timed,
        "raw_slis": raw_slis,
        "collector": collector_api,
        "monitor_uuid": monitor_uuid,
    }
    best = dict.fromkeys(fns, float("inf"))
    ids = _ids(traces)
    uuid_ids = [str(uuid.uuid4()) for _ in range(traces)]  # the seed's form, stored under its 32-hex form
    spans = traces * len(AGENTS)
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            started = time.process_time()
            fn()
            best[name] = min(best[name], (time.process_time() - started) / spans * 1e9)
    note = f"{traces:,} traces x 5 spans, best of {rounds} alternating rounds (CPU time)"
    return [
        row("bare dict of lists: setdefault().append((agent, time()))", best["bare"], "ns/span", note=note),
        row(
            "memory store: TraceMonitor.record_span",
            best["monitor"],
            "ns/span",
            best["bare"],
            3.0,
            f"{1e9 / best['monitor']:,.0f} spans/s vs {1e9 / best['bare']:,.0f}; includes finalizing and "
            "counting each trace (counter, latency histogram with exemplar)",
        ),
        row(
            "memory store: TraceMonitor.record_span(..., duration_ms=5)",
            best["monitor_timed"],
            "ns/span",
            best["bare"],
            None,
            "a timed span also feeds ark_span_latency_ms{agent} (with the trace id as exemplar)",
        ),
        row(
            "raw prometheus_client: the span SLIs alone, cached children (counter inc + histogram observe)",
            best["raw_slis"],
            "ns/span",
            note="no store: what recording ark_spans_total and ark_span_latency_ms per span costs on the raw client",
        ),
        row(
            "memory store: record_span with duration_ms (store + SLIs) vs the raw client's SLIs alone",
            best["monitor_timed"],
            "ns/span",
            best["raw_slis"],
            None,
            "the whole path (store, trace accounting, SLIs) next to what the raw client spends on the SLIs alone",
        ),
        row(
            "memory store: collector.record_trace_span (seed API)",
            best["collector"],
            "ns/span",
            best["bare"],
            None,
            f"{1e9 / best['collector']:,.0f} spans/s",
        ),
        row(
            "memory store: TraceMonitor.record_span, UUID-form ids",
            best["monitor_uuid"],
            "ns/span",
            best["monitor"],
            None,
            "ratio to 32-hex ids: the cost of mapping the seed's UUID form to the canonical id",
        ),
    ]


# --- memory: bytes per in-flight trace ----------------------------------------------------------------
def _bytes_per_trace(traces: int = 20_000) -> list[dict[str, Any]]:
    """tracemalloc growth per in-flight 5-span trace (trace id string included), next to the bare dict."""

    def measure(fill: Callable[[], Any]) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return (after - before) / traces

    def fill_monitor(duration: bool) -> Callable[[], Any]:
        def fill() -> Any:
            m = _monitor(pipeline=OPEN_PIPELINE)
            record = m.record_span
            for _ in range(traces):
                trace_id = uuid.uuid4().hex
                for agent in AGENTS:
                    if duration:
                        record(trace_id, agent, duration_ms=12.5)
                    else:
                        record(trace_id, agent)
            assert m.in_flight() == traces
            return m

        return fill

    def fill_bare() -> Any:
        spans: dict[str, list[tuple[str, float]]] = {}
        for _ in range(traces):
            trace_id = uuid.uuid4().hex
            for agent in AGENTS:
                spans.setdefault(trace_id, []).append((agent, time.time()))
        return spans

    bare = measure(fill_bare)
    plain = measure(fill_monitor(duration=False))
    timed = measure(fill_monitor(duration=True))
    note = f"tracemalloc over {traces:,} in-flight traces; 32-char trace ids included"
    return [
        row("bare dict of lists, per 5-span trace", bare, "B", note=note),
        row("memory store, per in-flight 5-span trace", plain, "B", 1024, 1.0, "ratio = bytes / 1 KiB"),
        row(
            "memory store, per in-flight 5-span trace with duration_ms",
            timed,
            "B",
            1024,
            1.0,
            "start and end differ: two floats per span",
        ),
    ]


# --- memory: bounded under 1,000,000 traces -------------------------------------------------------------
def _rss() -> int:
    """Resident set size after a full collection, with freed heap returned to the OS where glibc allows.

    Without malloc_trim, RSS keeps pages glibc holds on to after the store's dict tables are resized,
    which says nothing about what the store keeps alive.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _bounded(total: int = 1_000_000, cap: int = 100_000, spans_per_trace: int = 5) -> list[dict[str, Any]]:
    """Push ``total`` never-completing traces through a store capped at ``cap``: memory stays flat."""
    m = _monitor(pipeline=OPEN_PIPELINE, max_in_flight=cap)
    record = m.record_span
    agents = AGENTS[:spans_per_trace]
    checkpoints: dict[int, tuple[int, int, int]] = {}
    started = time.perf_counter()
    for i in range(1, total + 1):
        trace_id = uuid.uuid4().hex
        for agent in agents:
            record(trace_id, agent)
        if i in (cap, 2 * cap, total // 2, total):
            checkpoints[i] = (_rss(), sys.getallocatedblocks(), m.store.in_flight())
    seconds = time.perf_counter() - started
    evicted = m.collector.registry.prometheus.get_sample_value("ark_traces_evicted_total", {"reason": "capacity"})
    (rss_cap, blocks_cap, _), (rss_end, blocks_end, in_flight) = checkpoints[cap], checkpoints[total]
    mib = 2**20
    return [
        row(f"RSS with {cap:,} traces in flight (store full)", rss_cap / mib, "MiB"),
        row(
            f"RSS after {total:,} traces through the store",
            rss_end / mib,
            "MiB",
            rss_cap / mib,
            1.1,
            f"in flight: {in_flight:,}; evicted (capacity): {evicted:,.0f}; RSS at {2 * cap:,}: "
            f"{checkpoints[2 * cap][0] / mib:,.1f} MiB, at {total // 2:,}: {checkpoints[total // 2][0] / mib:,.1f} "
            f"MiB; {spans_per_trace} spans/trace, {seconds:.0f} s",
        ),
        row(
            f"live Python blocks after {total:,} traces",
            blocks_end,
            "blocks",
            blocks_cap,
            1.01,
            f"sys.getallocatedblocks(); {blocks_cap:,} with the store just full",
        ),
    ]


# --- Redis ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


def _redis_benchmark(port: int) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    out = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-t", "set", "-n", str(sized(100_000, 1_000)), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    found = re.findall(r"SET: ([\d.]+) requests per second", out)
    return float(found[-1]) if found else None


def _redis(traces: int = 40_000) -> list[dict[str, Any]]:
    """Spans/s from one process into Redis (batched Lua writes), next to redis-benchmark SET on the same server."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc, port = _start_redis(Path(tmp))
        except FileNotFoundError as exc:
            return [{**row("Redis store", 0, "spans/s"), "ok": False, "note": f"skipped: {exc}"}]
        try:
            url = f"redis://127.0.0.1:{port}/0"
            spans = traces * len(AGENTS)
            store = RedisStore.from_url(url, max_pending=spans)
            m = _monitor(store=store, sweep=False)
            ids = _ids(traces)
            record = m.record_span
            started = time.perf_counter()
            for trace_id in ids:
                for agent in AGENTS:
                    record(trace_id, agent)
            recorded = time.perf_counter() - started
            store.flush()  # every span is in Redis when this returns
            elapsed = time.perf_counter() - started
            completed = store.client.llen(store.prefix + "done")
            dropped = m.collector.registry.prometheus.get_sample_value(
                "ark_obs_dropped_total", {"metric": SPAN_METRIC, "reason": "store_unavailable"}
            )
            # agents in separate processes: a batch holds one span each of many traces
            store.client.flushdb()
            started = time.perf_counter()
            for agent in AGENTS:
                for trace_id in ids:
                    record(trace_id, agent)
            store.flush()
            spread = spans / (time.perf_counter() - started)
            spread_completed = store.client.llen(store.prefix + "done")
            store.close()
            set_rps = _redis_benchmark(port)
        finally:
            proc.terminate()
            proc.wait(10)
    rate = spans / elapsed
    result = row(
        "Redis store: spans/s from one process, written and visible",
        rate,
        "spans/s",
        set_rps,
        None,
        f"target >= 20,000; {traces:,} traces completed in Redis: {completed:,}; dropped: {dropped or 0:,.0f}; "
        f"record_span alone {recorded / spans * 1e9:,.0f} ns/span; ratio vs redis-benchmark SET"
        + ("" if set_rps else " (redis-benchmark not found)"),
    )
    result["ok"] = rate >= 20_000 and completed == traces
    spread_row = row(
        "Redis store: spans/s, agent by agent (each batch: one span of many traces)",
        spread,
        "spans/s",
        set_rps,
        None,
        f"target >= 20,000; the pattern of agents in separate processes; completed: {spread_completed:,}",
    )
    spread_row["ok"] = spread >= 20_000 and spread_completed == traces
    rows = [result, spread_row]
    if set_rps:
        rows.append(row("redis-benchmark -t set -n 100000 (50 clients, same server)", set_rps, "requests/s"))
    return rows


def run() -> dict[str, Any]:
    """Every trace store benchmark."""
    rows = _throughput(*sized((50_000, 5), (200, 1)))
    rows += _bytes_per_trace(sized(20_000, 200))
    rows += _bounded(*sized((1_000_000, 100_000), (2_000, 200)))
    rows += _redis(sized(40_000, 200))
    return {"title": "traces: trace store recording, memory and Redis throughput", "rows": rows}


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
