"""Helpers for multiprocess tests: agent processes record while a long-lived monitor process watches.

The monitor process starts first, as ``ark-obs serve`` would: what the shared files held before it
started is a baseline, not recent events (Prometheus treats its first scrape the same way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MONITOR = """
import json, sys
from ark_obs import metrics
c = metrics.get_collector()
exec(sys.argv[2], {"c": c})
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(eval(sys.argv[1], {"c": c})), flush=True)
"""

# The start of a process that serves an ark-obs collector to Prometheus (argv[1]: the port) and prints
# "ready"; a test appends what the process then does (say, read stdin lines and record them).
SCRAPED_COLLECTOR = """
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ark_obs.metrics import MetricsCollector

collector = MetricsCollector(ticker=False)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = collector.export_prometheus().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
"""


class LineProcess:
    """A Python process running ``code`` with ``args``, driven line by line: it prints "ready" once started
    and "ok" after each line it was sent (``send``); ``stop`` ends it."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def multiproc_env(path: Path) -> dict[str, str]:
    """The environment of a process in multiprocess mode over ``path``."""
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}


def run_agent(code: str, path: Path, *args: str) -> str:
    """Run one agent process to completion; its stdout."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=multiproc_env(path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


class Monitor:
    """A monitor process holding the default collector ``c``: ``setup`` runs at start, ``result()``
    evaluates ``expression``."""

    def __init__(self, path: Path, expression: str, setup: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MONITOR, expression, setup],
            env=multiproc_env(path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def result(self) -> Any:
        """Ask the monitor for its answer now."""
        out, _ = self.proc.communicate("go\n", timeout=60)
        return json.loads(out)
