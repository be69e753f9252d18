"""The connection cap against the open-file limit: chosen (and said) at start, and /healthz answering
while idle connections hold the cap, with a file limit far below the connections opened."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plugins.net import free_port

ARK_OBS = Path(sys.executable).with_name("ark-obs")


@contextlib.contextmanager
def _serve(tmp_path: Path, soft: int, hard: int, max_connections: int) -> Iterator[tuple[str, Path]]:
    """``ark-obs serve`` with RLIMIT_NOFILE set to (soft, hard) before it starts."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    env |= {"ARK_OBS_MAX_CONNECTIONS": str(max_connections), "ARK_OBS_LOG_LEVEL": "info"}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(ARK_OBS), "serve", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield url, log
    finally:
        proc.kill()
        proc.wait(10)


def test_healthz_answers_while_idle_connections_pass_the_cap_and_the_file_limit(tmp_path: Path) -> None:
    """Open-file limit 512 (soft and hard) and ARK_OBS_MAX_CONNECTIONS=1000: the cap is clamped to 160 and
    said at start; with 600 idle connections open, every /healthz answers 200 and other requests 503."""
    with _serve(tmp_path, 512, 512, 1000) as (url, log):
        assert "connection cap 160 (clamped from ARK_OBS_MAX_CONNECTIONS=1000" in log.read_text()
        host, port = url.removeprefix("http://").split(":")
        held = []
        try:
            for _ in range(600):
                held.append(socket.create_connection((host, int(port)), timeout=10))
            statuses = []
            for _ in range(5):
                statuses.append(httpx.get(url + "/healthz", timeout=10).status_code)
            assert statuses == [200] * 5
            # the oldest silent connections were closed to make room: far fewer than 600 are held
            assert httpx.get(url + "/metrics", timeout=10).status_code in (200, 503)
        finally:
            for s in held:
                s.close()
        text = log.read_text()
        assert "Too many open files" not in text and "Traceback" not in text


def test_the_soft_file_limit_is_raised_toward_the_hard_one(tmp_path: Path) -> None:
    """Soft limit 200 under a hard limit of 4096: raised to fit 512 connections and the headroom, said at start."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] not in (resource.RLIM_INFINITY,) and (
        resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096
    ):
        pytest.skip("this process' hard open-file limit is under 4096")
    with _serve(tmp_path, 200, 4096, 512) as (_, log):
        assert "connection cap 512; open-file limit 864, raised from 200 (hard 4096)" in log.read_text()
