"""/healthz while the service is attacked: p99 during each attack of issue 13, next to idle, in one run.

A real ``ark-obs serve`` (default settings; its canary points at a Prometheus that never answers)
runs in its own process; each attack runs in another process on loopback for ``seconds``, while this
process asks ``/healthz`` over one keep-alive connection, one request after the other. The idle phase
(no attack) is the baseline. Target: p99 during every attack within 5x of idle.

Attacks: idle connections that never send a byte; headers sent a byte at a time; a body sent in
1-byte chunks; bodies of 10,000 invalid spans (the batch limit); one trace flooded with 1,000 agent names per batch;
heartbeats from thousands of made-up agents; bursts of 100 distinct canary analyses.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench._timing import row

SECONDS = float(os.environ.get("ARK_OBS_BENCH_ATTACK_SECONDS", "6"))
MAX_P99_RATIO = 5.0
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """A Prometheus that accepts connections and never answers."""
    sock = socket.create_server((HOST, 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return sock, held


def _start_server(workdir: Path, prometheus_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
    env |= {
        "PYTHONASYNCIODEBUG": os.environ.get("PYTHONASYNCIODEBUG", ""),
        "ARK_OBS_LOG_LEVEL": "warning",
        "ARK_OBS_CANARY_PROMETHEUS_URL": f"http://{HOST}:{prometheus_port}",
        "ARK_OBS_CANARY_TIMEOUT_SECONDS": "2",
    }
    with open(workdir / "server.log", "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ark-obs")), "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("ark-obs did not become healthy in 30 s")


# --- attacks: each runs in its own process until ``until`` (time.time()) -----------------------------------
def _idle_connections(port: int, until: float) -> None:
    held = [socket.create_connection((HOST, port)) for _ in range(300)]
    time.sleep(max(0.0, until - time.time()))
    for s in held:
        s.close()


def _slow_headers(port: int, until: float) -> None:
    head = b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 10_000
    socks = [socket.create_connection((HOST, port)) for _ in range(200)]
    i = 0
    while time.time() < until:
        for s in list(socks):
            try:
                s.send(head[i % len(head) : i % len(head) + 1])
            except OSError:  # closed by the header deadline: open another
                socks.remove(s)
                socks.append(socket.create_connection((HOST, port)))
        i += 1
        time.sleep(0.2)
    for s in socks:
        s.close()


def _one_byte_chunks(port: int, until: float) -> None:
    body = b'{"spans": [' + b'{"trace_id": "x", "agent": "Kyle"},' * 60_000 + b"]}"
    while time.time() < until:
        s = socket.create_connection((HOST, port))
        s.sendall(
            b"POST /spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            for b in body:
                s.send(b"1\r\n" + bytes((b,)) + b"\r\n")
                if time.time() > until:
                    break
        s.close()


def _invalid_spans(port: int, until: float) -> None:
    body = b'{"spans": [' + b",".join([b'{"trace_id": "x", "agent": "Kyle"}'] * 10_000) + b"]}"
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        while time.time() < until:
            client.post("/spans", content=body, headers={"Content-Type": "application/json"})


def _trace_flood(port: int, until: float) -> None:
    trace = os.urandom(16).hex()
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        n = 0
        while time.time() < until:
            spans = [{"trace_id": trace, "agent": f"a{n + i}"} for i in range(1000)]
            client.post("/spans", json={"spans": spans})
            n += 1000


def _heartbeat_flood(port: int, until: float) -> None:
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        n = 0
        while time.time() < until:
            client.post(f"/heartbeats/fake{n}")
            n += 1


def _canary_selectors(port: int, until: float) -> None:
    # bursts of 100 distinct analyses, once a second, over raw keep-alive sockets: the canary's cost on
    # the server, not the cost of 100 HTTP clients in the attacking process
    socks = [socket.create_connection((HOST, port)) for _ in range(100)]
    burst = 0
    while time.time() < until:
        started = time.monotonic()
        for i, s in enumerate(socks):
            s.sendall(f"GET /canary/analysis?canary=t{burst}x{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for s in socks:
            s.settimeout(10)
            with contextlib.suppress(OSError):
                s.recv(65536)  # one answer (all are small), or the connection's end
        burst += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    for s in socks:
        s.close()


ATTACKS: dict[str, Callable[[int, float], None]] = {
    "300 idle connections": _idle_connections,
    "200 connections sending headers a byte at a time": _slow_headers,
    "a body in 1-byte chunks": _one_byte_chunks,
    "bodies of 10,000 invalid spans": _invalid_spans,
    "one trace, 1,000 new agents per batch": _trace_flood,
    "heartbeats from made-up agents": _heartbeat_flood,
    "bursts of 100 distinct canary analyses": _canary_selectors,
}


def _healthz_latencies(port: int, seconds: float) -> tuple[list[float], int]:
    """Sequential /healthz latencies (ms) over one keep-alive connection, and how many failed."""
    out: list[float] = []
    failed = 0
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=5) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((time.perf_counter() - started) * 1000.0)
            failed += not ok
            time.sleep(0.005)
    return out, failed


def _p99(values: list[float]) -> float:
    if len(values) < 2:  # a short (smoke) run under a heavy attack may get one answer or none
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100)[98]


def run(seconds: float = SECONDS) -> dict[str, Any]:
    """Idle, then each attack in turn: /healthz p99 and its ratio to idle."""
    silent, held = _silent_server()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_server(Path(tmp), silent.getsockname()[1])
        try:
            idle, idle_failed = _healthz_latencies(port, seconds)
            rows = [row("idle: /healthz p99", _p99(idle), "ms", note=f"{len(idle)} requests, {idle_failed} failed")]
            ctx = mp.get_context("spawn")
            for name, attack in ATTACKS.items():
                until = time.time() + seconds + 1
                worker = ctx.Process(target=attack, args=(port, until), daemon=True)
                worker.start()
                time.sleep(0.5)  # let the attack build up before measuring
                latencies, failed = _healthz_latencies(port, seconds)
                worker.join(seconds + 30)
                if worker.is_alive():
                    worker.kill()
                rows.append(
                    row(
                        f"{name}: /healthz p99",
                        _p99(latencies),
                        "ms",
                        baseline=_p99(idle),
                        target=MAX_P99_RATIO,
                        note=f"{len(latencies)} requests, {failed} failed, max {max(latencies, default=0.0):.0f} ms",
                    )
                )
            log = (Path(tmp) / "server.log").read_text(errors="replace")
        finally:
            proc.terminate()
            proc.wait(30)
            silent.close()
            for s in held:
                s.close()
    return {
        "title": f"/healthz p99 during each attack vs idle ({seconds:g} s each, one run)",
        "rows": rows,
        "server_log_lines": len(log.splitlines()),
        "server_log_bytes": len(log),
    }


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
