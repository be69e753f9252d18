"""The app ``ark-obs serve`` runs, served from a thread of the test process: what an in-process test scrapes.

Also the heartbeating agent process several suites kill to see an outage reported.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from ark_obs.metrics import MetricsCollector
from ark_obs.service import build_collector, create_app
from ark_obs.settings import Settings

# An agent that heartbeats over HTTP on a fixed schedule until killed.
HEARTBEAT_AGENT = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
due = time.monotonic()
while True:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=interval).close()
    except OSError:
        pass
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))
"""


def heartbeat_agent(url: str, interval: float) -> subprocess.Popen[bytes]:
    """A separate process POSTing to ``url`` (``.../heartbeats/AGENT``) every ``interval`` s until killed."""
    return subprocess.Popen([sys.executable, "-I", "-c", HEARTBEAT_AGENT, url, str(interval)])


@dataclass(frozen=True)
class Running:
    """A served app: its collector and base URL."""

    collector: MetricsCollector
    url: str


@contextlib.contextmanager
def running_service(ready: str = "/healthz", **settings: Any) -> Iterator[Running]:
    """``build_collector`` + ``create_app`` with ``settings`` (no .env), on a socket bound to a free loopback
    port and handed to uvicorn (no window for another process), until ``ready`` answers 200."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Settings(_env_file=None, port=port, **{"log_level": "warning", **settings})  # type: ignore[call-arg]
    collector, owned = build_collector(config)
    server = uvicorn.Server(uvicorn.Config(create_app(config, collector), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ark-obs-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert thread.is_alive() and time.monotonic() < deadline, "ark-obs did not become ready"
            try:
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield Running(collector, url)
    finally:
        server.should_exit = True
        thread.join(10)
        for monitor in owned:
            monitor.close()
        sock.close()
