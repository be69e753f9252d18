"""The orchestrated start (`make start` = `ark-obs up`) end to end on a free loopback port: configuration
checked, service started, /readyz waited for, `ark-obs validate --synthetic` run, a status summary printed,
then serving until SIGTERM. A bad configuration starts nothing. About 15 s (the validation's own run)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from plugins.net import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARK_OBS = Path(sys.executable).with_name("ark-obs")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
    return {**env, **extra}


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Lines of ``proc``'s stdout up to the one containing ``marker`` (fails if the process ends first)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"ark-obs up ended ({proc.wait(5)}) before {marker!r}:\n{''.join(lines)}")
        lines.append(line)
        if marker in line:
            return lines
    pytest.fail(f"no {marker!r} in {timeout} s:\n{''.join(lines)}")


def test_make_start_is_ark_obs_up() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^start:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and "ark-obs up" in recipe.group(1)


def test_up_checks_starts_waits_validates_summarizes_and_serves(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(ARK_OBS), "up", "--port", str(port), "--watch", "2s"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        out = "".join(read_until(proc, "serving; stop with", timeout=90))
        steps = re.findall(r"^\[(\d)/5\] (.*)$", out, re.M)
        assert [n for n, _ in steps] == ["1", "2", "3", "4", "5"], out
        assert "configuration OK" in out
        assert f"waiting for {url}/readyz" in out
        assert "ark-obs validate --synthetic --watch 2s" in out
        assert f"is up on {url}" in out
        assert "readiness    ready: registry ok" in out
        assert re.search(r"^  SLOs +met: .*availability", out, re.M), out
        assert "validation   pass (5 steps" in out
        assert "killed Joey alerted within 2 heartbeats" in out
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200  # still serving after the summary
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_up_with_a_bad_configuration_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [str(ARK_OBS), "up", "--port", str(port)],
        cwd=tmp_path, env=clean_env(ARK_OBS_TRACE_STORE="nosuch://x"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "ARK_OBS_TRACE_STORE" in done.stderr
    assert "nothing started" in done.stderr
    assert "[2/5]" not in done.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_up_stops_a_service_that_never_gets_ready(tmp_path: Path) -> None:
    """A trace store nobody answers at: /readyz stays 503, so up names the failing check, stops the service it
    started and exits 1 (or, should check-config learn to probe the store, refuses at step 1 with exit 2)."""
    port, dead = free_port(), free_port()
    done = subprocess.run(
        [str(ARK_OBS), "up", "--port", str(port), "--ready-timeout", "3"],
        cwd=tmp_path, env=clean_env(ARK_OBS_TRACE_STORE=f"redis://127.0.0.1:{dead}/0"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode == 2:
        assert "nothing started" in done.stderr
    else:
        assert done.returncode == 1, done
        assert "not ready after 3 s (503: failing trace_store)" in done.stderr
        assert "[4/5]" not in done.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
