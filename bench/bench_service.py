"""The service under load: span batches through POST /spans while /metrics is scraped, next to idle scrapes.

A real ``ark-obs serve`` runs in its own process. A load generator process posts span batches (5-span
traces, fresh ids; 200 spans per batch by default, an agent's flush) for ``duration`` seconds on a few
keep-alive connections while a scraper process
scrapes /metrics the way Prometheus does (OpenMetrics Accept, gzip) every ``scrape_interval``. The same
scraper first runs alone for ``idle`` seconds: the idle latencies are the baseline of the loaded ones.

Targets (this 2-core machine, server, load generator and scraper sharing it): at least 20,000 spans/s
accepted; /metrics p99 under load within 5x of idle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench._timing import sized

PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
MIN_SPANS_PER_SECOND = 20_000
MAX_P99_RATIO = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    log = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
    env["ARK_OBS_LOG_LEVEL"] = "warning"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ark-obs")), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ark-obs exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("ark-obs did not become healthy in 30 s")


def _batch_body(prefix: int, traces: int) -> bytes:
    """``traces`` complete 5-span traces with ids unique to ``prefix``, as JSON (hand-built: cheap)."""
    spans = []
    for t in range(traces):
        trace_id = f"{prefix:016x}{t + 1:016x}"
        for agent in PIPELINE:
            spans.append(f'{{"trace_id":"{trace_id}","agent":"{agent}","duration_ms":1.5}}')
    return ('{"spans":[' + ",".join(spans) + "]}").encode()


def _load(url: str, seconds: float, batch_traces: int, connections: int, worker: int, out: Any) -> None:
    """Post batches on ``connections`` keep-alive connections until ``seconds`` pass; report counts."""
    accepted = [0] * connections
    errors = [0] * connections
    deadline = time.monotonic() + seconds

    def post(conn: int) -> None:
        with httpx.Client(base_url=url, timeout=30, headers={"Content-Type": "application/json"}) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                prefix = (worker << 40) | (conn << 32) | n
                r = client.post("/spans", content=_batch_body(prefix, batch_traces))
                if r.status_code == 200:
                    accepted[conn] += r.json()["accepted"]
                else:
                    errors[conn] += 1

    threads = [threading.Thread(target=post, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"accepted": sum(accepted), "errors": sum(errors), "seconds": time.perf_counter() - started})


def _scrape(url: str, seconds: float, interval: float, out: Any) -> None:
    """Scrape /metrics as Prometheus does every ``interval`` for ``seconds``; report each latency (ms)."""
    latencies: list[float] = []
    sizes: list[int] = []
    failures = 0
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        client.get("/metrics")  # warm the connection
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            r = client.get("/metrics")
            body = r.content
            elapsed = (time.perf_counter() - started) * 1000.0
            if r.status_code == 200 and body.endswith(b"# EOF\n"):
                latencies.append(elapsed)
                sizes.append(len(body))
            else:
                failures += 1
            time.sleep(max(0.0, interval - elapsed / 1000.0))
    out.put({"latencies_ms": latencies, "failures": failures, "bytes": statistics.median(sizes) if sizes else 0})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", params={"name[]": name}, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def run(
    duration: float = sized(30.0, 1.0),
    idle: float = sized(10.0, 0.5),
    batch_traces: int = 40,
    connections: int = 2,
    scrape_interval: float = 0.1,
) -> dict[str, Any]:
    """Idle scrapes for ``idle`` s, then span load + scrapes for ``duration`` s, against one real server."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ark-obs-bench-") as tmp:
        proc, url, log = _start_server(Path(tmp))
        try:
            results: Any = ctx.Queue()
            scraper = ctx.Process(target=_scrape, args=(url, idle, scrape_interval, results))
            scraper.start()
            idle_result = results.get(timeout=idle + 60)
            scraper.join()

            loader = ctx.Process(target=_load, args=(url, duration, batch_traces, connections, 1, results))
            scraper = ctx.Process(target=_scrape, args=(url, duration, scrape_interval, results))
            loader.start()
            scraper.start()
            outcome = [results.get(timeout=duration + 120) for _ in range(2)]
            loader.join()
            scraper.join()
            load_result = next(r for r in outcome if "accepted" in r)
            busy_result = next(r for r in outcome if "latencies_ms" in r)
            complete = _metric(url, "ark_traces_complete_total")
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(30)
        server_log = log.read_text(errors="replace")

    spans_per_second = load_result["accepted"] / load_result["seconds"]
    idle_ms, busy_ms = idle_result["latencies_ms"], busy_result["latencies_ms"]
    idle_p50, idle_p99 = _percentile(idle_ms, 0.50), _percentile(idle_ms, 0.99)
    busy_p50, busy_p99 = _percentile(busy_ms, 0.50), _percentile(busy_ms, 0.99)
    spans_in_store = complete * len(PIPELINE)
    rows = [
        {
            "name": f"POST /spans: spans accepted per second ({batch_traces * 5}-span batches, {connections} conns)",
            "value": spans_per_second,
            "unit": "spans/s",
            "ratio": spans_per_second / MIN_SPANS_PER_SECOND,
            "target": None,
            "ok": spans_per_second >= MIN_SPANS_PER_SECOND,
            "note": f"target >= {MIN_SPANS_PER_SECOND:,}/s; {load_result['errors']} non-200 answers",
        },
        {
            "name": "spans accepted == complete traces x 5 (per the server's own /metrics)",
            "value": spans_in_store,
            "unit": "spans",
            "ratio": None,
            "target": None,
            "ok": spans_in_store == load_result["accepted"],
            "note": f"accepted {load_result['accepted']:,}",
        },
        {
            "name": "/metrics p50 idle",
            "value": idle_p50,
            "unit": "ms",
            "ratio": None,
            "target": None,
            "ok": None,
            "note": f"{len(idle_ms)} scrapes, {idle_result['bytes'] / 1024:.1f} KiB gzipped",
        },
        {
            "name": "/metrics p99 idle",
            "value": idle_p99,
            "unit": "ms",
            "ratio": None,
            "target": None,
            "ok": None,
            "note": "baseline",
        },
        {
            "name": "/metrics p50 under load",
            "value": busy_p50,
            "unit": "ms",
            "ratio": busy_p50 / idle_p50,
            "target": None,
            "ok": None,
            "note": f"{len(busy_ms)} scrapes",
        },
        {
            "name": "/metrics p99 under load",
            "value": busy_p99,
            "unit": "ms",
            "ratio": busy_p99 / idle_p99,
            "target": MAX_P99_RATIO,
            "ok": busy_p99 / idle_p99 <= MAX_P99_RATIO,
            "note": f"ratio to idle p99; {busy_result['failures'] + idle_result['failures']} failed scrapes",
        },
    ]
    return {
        "title": f"service under load: {duration:g} s of span batches + scrapes every {scrape_interval:g} s",
        "rows": rows,
        "server_exit_status": status,
        "server_log_tail": server_log[-2000:],
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    from bench.__main__ import show

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    show(run(duration=seconds))
