"""/healthz while the service is attacked: p99 during each attack of issue 13, next to idle, in one run.

A real ``ark-obs serve`` (default settings; its canary points at a Prometheus that never answers)
runs in its own process; each attack runs in another process on loopback for ``seconds``, while this
process asks ``/healthz`` over one keep-alive connection, one request after the other. The idle phase
(no attack) is the baseline. Target: p99 during every attack within 5x of idle.

Attacks: idle connections that never send a byte; headers sent a byte at a time; a body sent in
1-byte chunks; bodies of 10,000 invalid spans (the batch limit); one trace flooded with 1,000 agent names per batch;
heartbeats from thousands of made-up agents; bursts of 100 distinct canary analyses. On ``POST /v1/traces``
(issue 24), four clients at once: gzip bodies of 100,000 spans (protobuf and JSON), 8 MiB of JSON nulls
inflated from a few KiB, a 1 GiB gzip bomb (about 1 MiB sent), and JSON nested 100,000 deep.

``ARK_OBS_BENCH_ATTACKS`` (comma-separated substrings of the attack names) runs only those.
"""

from __future__ import annotations

import contextlib
import gzip
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench._timing import row

OTLP_CLIENTS = 4

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


def _otlp_flood(port: int, until: float, body: bytes, content_type: str) -> None:
    """``OTLP_CLIENTS`` threads posting ``body`` (gzip) to /v1/traces back to back until ``until``."""

    def client() -> None:
        headers = {"Content-Type": content_type, "Content-Encoding": "gzip"}
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as c:
            while time.time() < until:
                with contextlib.suppress(httpx.HTTPError):
                    c.post("/v1/traces", content=body, headers=headers)

    threads = [threading.Thread(target=client) for _ in range(OTLP_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _protobuf_spans(n: int) -> bytes:
    """An ExportTraceServiceRequest of ``n`` minimal spans under one resource, on the wire (no SDK needed)."""
    span = b"\x0a\x10" + bytes(range(1, 17))  # trace_id (field 1), 16 bytes
    one = b"\x12" + bytes([len(span)]) + span  # ScopeSpans.spans (field 2)
    spans = one * n
    scope = b"\x12" + _varint(len(spans)) + spans  # ResourceSpans.scope_spans (field 2)
    return b"\x0a" + _varint(len(scope)) + scope  # resource_spans (field 1)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _otlp_100k_protobuf(port: int, until: float) -> None:
    _otlp_flood(port, until, gzip.compress(_protobuf_spans(100_000), 9), "application/x-protobuf")


def _otlp_100k_json(port: int, until: float) -> None:
    span = b'{"traceId":"0102030405060708090a0b0c0d0e0f10","startTimeUnixNano":"1","endTimeUnixNano":"2"}'
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b",".join([span] * 100_000) + b"]}]}]}"
    _otlp_flood(port, until, gzip.compress(body, 9), "application/json")


def _otlp_nulls(port: int, until: float) -> None:
    # just under the default 8 MiB inflate limit: everything is inflated, then refused
    nulls = b",".join([b"null"] * (8 * 1024 * 1024 // 5 - 8))
    _otlp_flood(port, until, gzip.compress(b'{"resourceSpans":[' + nulls + b"]}", 9), "application/json")


BOMB = Path(tempfile.gettempdir()) / "ark-obs-bench-gzip-bomb-1gib.gz"


def _gzip_bomb() -> Path:
    """1 GiB of zeros, gzip level 9: about 1 MiB (under the default body limit); built once (3 s of CPU),
    before the server starts, and kept in the temporary directory."""
    if not BOMB.is_file():
        deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        chunk = bytes(16 * 1024 * 1024)
        BOMB.write_bytes(b"".join(deflate.compress(chunk) for _ in range(64)) + deflate.flush())
    return BOMB


def _otlp_bomb(port: int, until: float) -> None:
    _otlp_flood(port, until, BOMB.read_bytes(), "application/x-protobuf")


def _otlp_deep(port: int, until: float) -> None:
    deep = b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _otlp_flood(port, until, gzip.compress(deep, 9), "application/json")


ATTACKS: dict[str, Callable[[int, float], None]] = {
    "300 idle connections": _idle_connections,
    "200 connections sending headers a byte at a time": _slow_headers,
    "a body in 1-byte chunks": _one_byte_chunks,
    "bodies of 10,000 invalid spans": _invalid_spans,
    "one trace, 1,000 new agents per batch": _trace_flood,
    "heartbeats from made-up agents": _heartbeat_flood,
    "bursts of 100 distinct canary analyses": _canary_selectors,
    "OTLP: 4 clients, gzip bodies of 100,000 protobuf spans": _otlp_100k_protobuf,
    "OTLP: 4 clients, gzip bodies of 100,000 JSON spans": _otlp_100k_json,
    "OTLP: 4 clients, 8 MiB of JSON nulls from a few KiB of gzip": _otlp_nulls,
    "OTLP: 4 clients, a 1 GiB gzip bomb": _otlp_bomb,
    "OTLP: 4 clients, JSON nested 100,000 deep": _otlp_deep,
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


def _rss_mb(pid: int) -> float | None:
    """The server's resident memory (Linux /proc), after every attack."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def _p99(values: list[float]) -> float:
    if len(values) < 2:  # a short (smoke) run under a heavy attack may get one answer or none
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100)[98]


def run(seconds: float = SECONDS) -> dict[str, Any]:
    """Idle, then each attack in turn: /healthz p99 and its ratio to idle."""
    _gzip_bomb()
    silent, held = _silent_server()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_server(Path(tmp), silent.getsockname()[1])
        try:
            idle, idle_failed = _healthz_latencies(port, seconds)
            rows = [
                row(
                    "idle: /healthz p99",
                    _p99(idle),
                    "ms",
                    note=f"{len(idle)} requests, {idle_failed} failed, server RSS {_rss_mb(proc.pid) or 0:.0f} MB",
                )
            ]
            ctx = mp.get_context("spawn")
            only = [part.strip() for part in os.environ.get("ARK_OBS_BENCH_ATTACKS", "").split(",") if part.strip()]
            for name, attack in ATTACKS.items():
                if only and not any(part in name for part in only):
                    continue
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
                        note=f"{len(latencies)} requests, {failed} failed, max {max(latencies, default=0.0):.0f} ms, "
                        f"server RSS {_rss_mb(proc.pid) or 0:.0f} MB after",
                    )
                )
            log = (Path(tmp) / "server.log").read_text(errors="replace")
            rss_mb = _rss_mb(proc.pid)
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
        "server_tracebacks": log.count("Traceback"),
        "server_rss_mb_at_end": rss_mb,
    }


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
