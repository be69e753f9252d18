"""Headless Chromium for tests that look at a page as a person would, and the artifacts it leaves."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from plugins.ci import missing_dependency

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots kept by `make test`


def chromium() -> str:
    """The Chromium binary; with CI=true its absence fails the test, else it is skipped."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        message = "chromium is not installed: sudo apt-get install -y chromium"
        missing_dependency(message)
    return path


def headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Load ``url`` in headless Chromium, letting its scripts run for 5 s of virtual time."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,1000", "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def png_size_and_variety(path: Path) -> tuple[int, int, int]:
    """Width, height and the number of distinct bytes in the decoded image data of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))
