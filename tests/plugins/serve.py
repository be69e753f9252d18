"""A real ``ark-obs serve`` process on a free loopback port, and the ``start`` fixture that runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugins.net import free_port

ARK_OBS = Path(sys.executable).with_name("ark-obs")


class Server:
    """An ``ark-obs serve`` subprocess; its output goes to ``log``."""

    def __init__(self, workdir: Path, env: dict[str, str], args: tuple[str, ...] = (), binary: Path = ARK_OBS) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"ark-obs-{self.port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
        if binary != ARK_OBS:  # another install (a clean venv): nothing of this source tree on its path
            clean.pop("PYTHONPATH", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--port", str(self.port), *args],
                env={**clean, "ARK_OBS_LOG_LEVEL": "info", **env},
                cwd=workdir,  # no stray .env
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll /healthz until it answers 200 (fail with the log if the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ark-obs exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"ark-obs did not answer /healthz in {timeout} s:\n{self.output()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        """Everything the process printed."""
        return self.log.read_text(errors="replace")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start servers with extra environment; every one still running is stopped afterwards."""
    servers: list[Server] = []

    def _start(env: dict[str, str] | None = None, args: tuple[str, ...] = (), healthy: bool = True) -> Server:
        server = Server(tmp_path, env or {}, args)
        servers.append(server)
        if healthy:
            server.wait_healthy()
        return server

    yield _start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
