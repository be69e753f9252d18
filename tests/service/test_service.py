"""A real ``ark-obs serve`` process on a free loopback port: endpoints, graceful SIGTERM, multiprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

pytestmark = pytest.mark.slow

PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_serve_end_to_end_and_graceful_sigterm(start: Any) -> None:
    """A real server answers every endpoint, then SIGTERM stops it cleanly: exit 0, no traceback."""
    server = start()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/readyz").json()["status"] == "ready"
        spans = [{"trace_id": TRACE, "agent": a, "duration_ms": 20} for a in PIPELINE]
        assert c.post("/spans", json={"spans": spans}).json() == {"accepted": 5}
        assert c.post("/heartbeats/Kyle").status_code == 200
        report = c.get(f"/traces/{TRACE}").json()
        assert report["complete"] is True and report["agents_seen"] == list(PIPELINE)
        assert c.get(f"/traces/{'e' * 32}").status_code == 404
        assert c.get("/traces/not-a-trace").status_code == 422
        assert c.get("/slos").json()["total"] == 4
        assert c.get("/traces", params={"status": "incomplete"}).json()["count"] == 0
        text = c.get("/metrics").text
        names = [f.name for f in parse_text(text)]
        assert len(names) == len(set(names))
        assert "ark_traces_complete" in names and "ark_slo_met" in names and "ark_agent_up" in names
        om = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
        bucket_exemplars = [
            s.exemplar
            for f in parse_openmetrics(om)
            if f.name == "ark_trace_latency_ms"
            for s in f.samples
            if s.exemplar is not None
        ]
        assert [e.labels["trace_id"] for e in bucket_exemplars] == [TRACE]
        assert "families" in c.get("/metrics/json").json()
    assert server.terminate() == 0
    out = server.output()
    assert "Traceback" not in out, out
    assert "Finished server process" in out
    assert f"{server.url}/metrics" in out and "writes are open" in out  # the URLs, printed at start


def test_sigterm_finishes_in_flight_requests_and_flushes(start: Any, redis_url: str) -> None:
    """A request whose body is still arriving when SIGTERM lands is completed (200), its spans are in
    the (Redis) store after exit, new connections are refused, and the exit status is 0."""
    server = start({"ARK_OBS_TRACE_STORE": redis_url})
    body = ('{"spans": [' + ",".join(f'{{"trace_id": "{TRACE}", "agent": "{a}"}}' for a in PIPELINE) + "]}").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST /spans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[:20])
        # a later request answered means the server has read this one's headers: it is in flight
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the listening socket closes once the shutdown has begun
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.02)
        assert server.proc.poll() is None, "exited with a request in flight"
        sock.sendall(body[20:])
        response = b""
        while chunk := sock.recv(65536):  # the server closes the connection: it is shutting down
            response += chunk
        response = response.decode()
    assert response.startswith("HTTP/1.1 200"), response
    assert '{"accepted":5}' in response
    assert server.proc.wait(20) == 0
    assert "Traceback" not in server.output()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        stored = client.hgetall(f"ark:obs:t:{TRACE}")
    finally:
        client.close()
    assert {k for k in stored if k.startswith("@")} == {f"@{a}" for a in PIPELINE}


def test_sigint_also_exits_zero(start: Any) -> None:
    """Ctrl-C (SIGINT) drains and exits 0 too."""
    server = start()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0
    assert "Traceback" not in server.output()


def test_port_in_use_fails_with_status_1(start: Any) -> None:
    """A port another process holds: the server says so and exits 1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = start(args=("--port", str(port)), healthy=False)  # the last --port wins
        assert server.proc.wait(30) == 1
    assert "address already in use" in server.output().lower()


def test_open_ingest_on_public_address_refused(start: Any) -> None:
    """ARK_OBS_HOST=0.0.0.0 without a token never binds: exit 2 with the fix in the message."""
    server = start({"ARK_OBS_HOST": "0.0.0.0"}, healthy=False)
    assert server.proc.wait(30) == 2
    out = server.output()
    assert "ARK_OBS_INGEST_TOKEN" in out and "ARK_OBS_ALLOW_OPEN_INGEST=true" in out


AGENT = textwrap.dedent(
    """
    import sys
    from ark_obs import metrics
    agent, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        metrics.increment_counter("hrm_denials_total", labels={"rule_id": "max_position_size", "agent": agent})
        metrics.record_latency("ark_pass_latency_ms", 100.0 + i)
    metrics.set_gauge("kyle_ingest_rate", 1.0)
    """
)


def test_multiprocess_aggregates_every_process(start: Any, tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, /metrics sums two agent processes and the server's own metrics,
    with the SLO and trace families once each and no family emitted twice."""
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    server = start(env)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    for agent, n in (("Kenny", 3), ("Joey", 4)):
        subprocess.run(
            [sys.executable, "-c", AGENT, agent, str(n)], env={**clean, **env}, check=True, timeout=60, cwd=tmp_path
        )
    with httpx.Client(base_url=server.url, timeout=10) as c:
        spans = [{"trace_id": TRACE, "agent": a} for a in PIPELINE]
        assert c.post("/spans", json={"spans": spans}).status_code == 200
        text = c.get("/metrics").text
        om = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    fams = list(parse_text(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    by_name = {f.name: f for f in fams}
    denials = {s.labels["agent"]: s.value for s in by_name["hrm_denials"].samples if s.name == "hrm_denials_total"}
    assert denials == {"Kenny": 3.0, "Joey": 4.0}
    count = next(s.value for s in by_name["ark_pass_latency_ms"].samples if s.name == "ark_pass_latency_ms_count")
    assert count == 7.0
    complete = next(s.value for s in by_name["ark_traces_complete"].samples if s.name.endswith("_total"))
    assert complete == 1.0
    for family in ("ark_slo_objective", "ark_traces_in_flight", "ark_agent_heartbeat_interval_seconds"):
        assert names.count(family) == 1, family
    om_names = [f.name for f in parse_openmetrics(om)]
    assert len(om_names) == len(set(om_names))
    assert server.terminate() == 0


def test_serve_synthetic_is_what_make_run_shows(start: Any) -> None:
    """`ark-obs serve --synthetic` (make run) prints the URLs of /, /metrics, /slos and a complete trace,
    the synthetic loop feeds the served collector, and Ctrl-C stops both cleanly."""
    server = start(args=("--synthetic",))
    deadline = time.monotonic() + 20
    while "a trace" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    out = server.output()
    match = re.search(r"a trace\s+(http://\S+/traces/([0-9a-f]{32}))", out)
    assert match, out
    for line in ("status page", f"{server.url}/metrics", f"{server.url}/slos"):
        assert line in out
    with httpx.Client(timeout=10) as c:
        assert c.get(match.group(1)).json()["complete"] is True
        assert "ARK pipeline status" in c.get(server.url + "/").text
        # the loop records through the served collector: decisions and heartbeats show on /metrics
        text = c.get(server.url + "/metrics").text
        counts = [s.value for f in parse_text(text) for s in f.samples if s.name == "ark_pass_latency_ms_count"]
        assert counts and counts[0] >= 1
        assert 'ark_agent_up{agent="Kyle"} 1.0' in text
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0
    assert "Traceback" not in server.output()


def test_serve_synthetic_takes_the_loops_faults(start: Any) -> None:
    """`ark-obs serve --synthetic --fault kenny-errors` runs the loop with that fault: Kenny fails until the
    Watchdog quarantines him, and the status page's data shows the quarantine; --fault alone is refused."""
    server = start(args=("--synthetic", "--fault", "kenny-errors"), env={"ARK_OBS_HEARTBEAT_INTERVAL_SECONDS": "0.5"})
    deadline = time.monotonic() + 20
    while True:
        body = httpx.get(server.url + "/status.json", timeout=5).json()
        if (body["period"]["quarantines"] or 0) >= 1:
            break
        assert time.monotonic() < deadline, body["period"]
        time.sleep(0.2)
    kenny = next(a for a in body["agents"] if a["agent"] == "Kenny")
    assert kenny["quarantines_in_window"] >= 1 and body["quarantines"]["Kenny"] >= 1
    assert server.terminate() == 0
    refused = start(args=("--fault", "kenny-errors"), healthy=False)
    assert refused.proc.wait(20) == 2 and "add --synthetic" in refused.output()


async def test_serve_socket_turns_nagle_off_on_every_connection() -> None:
    """Connections accepted on the socket ``serve`` listens on have TCP_NODELAY, as asyncio sets it for TCP.

    Without it a keep-alive client waited ~40 ms per response (headers and body are two writes: Nagle
    held the body until the client's delayed ACK), which capped ``POST /spans`` at ~19,000 spans/s.
    """
    import asyncio

    from ark_obs.cli import _bind

    listener = _bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Note(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Note, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
