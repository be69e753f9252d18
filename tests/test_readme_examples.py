"""The manual's examples run as written: every Python block and every curl command of README.md and deploy/."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from ark_obs.service import create_app
from ark_obs.settings import Settings
from plugins.net import free_port

ROOT = Path(__file__).resolve().parent.parent
MANUALS = [ROOT / "README.md", *sorted((ROOT / "deploy").rglob("*.md")), ROOT / "src/ark_obs/service/static/runbook.md"]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    out = []
    for path in MANUALS:
        for n, match in enumerate(BLOCK.finditer(path.read_text()), 1):
            indent = len(match.group(1))
            code = "\n".join(line[indent:] for line in match.group(2).splitlines())
            out.append((f"{path.relative_to(ROOT)}#{n}", code))
    return out


BLOCKS = python_blocks()


def test_the_manual_has_python_examples() -> None:
    """The extraction finds the README's examples (recording, decorators, traces, SLOs)."""
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_python_example_runs_as_written(where: str, code: str, tmp_path: Path) -> None:
    """The block runs on its own in a fresh interpreter (its imports included) and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, f"{where}:\n{result.stderr[-3000:]}"
    # an example that shows its output in a comment after print(...) prints what it shows
    for shown in re.findall(r"^print\(.*\)\n# (.+)$", code, re.M):
        words = shown.split()
        assert " ".join(words[:-1]) in result.stdout, (where, shown, result.stdout)


def test_deploy_guide_checks_name_their_files() -> None:
    """Each `amtool check-config` / `promtool check config` in the deploy guide names its file, and the ones on
    the repository's files pass as written from the repository root."""
    guide = (ROOT / "deploy" / "README.md").read_text()
    commands = re.findall(r"`((?:amtool check-config|promtool check config)[^`]*)`", re.sub(r"\n\s+", " ", guide))
    assert any(c.startswith("amtool") for c in commands)
    for command in commands:
        argv = shlex.split(command)
        files = [a for a in argv[2:] if not a.startswith("-")]
        assert files, f"{command!r} names no file"
        if files[0].startswith("deploy/"):
            tool = shutil.which(argv[0])
            assert tool, f"{argv[0]} is not installed (make system-deps)"
            result = subprocess.run(
                [tool, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
            )
            assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


SH_BLOCK = re.compile(r"^( *)```sh\n(.*?)^\1```", re.S | re.M)


def curl_examples() -> list[str]:
    """Every `curl` command of the manuals: lines of sh blocks (with their continuations) and inline code."""
    out = []
    for path in MANUALS:
        text = path.read_text()
        for match in SH_BLOCK.finditer(text):
            for command in re.sub(r"\\\n\s*", "", match.group(2)).splitlines():
                if command.strip().startswith("curl "):
                    out.append(command.split("  #")[0].strip())
        out += re.findall(r"`(curl [^`]+)`", text)
    return out


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """A real ark-obs on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(port=port, _env_file=None)), port=port,  # type: ignore[call-arg]
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_curl_examples_run_as_written(service: str) -> None:
    """Each curl example, pointed at a running service (only its address changed), succeeds: curl exits 0 and
    the service answers 2xx (checked with curl's --fail)."""
    commands = curl_examples()
    assert len(commands) >= 6
    curl = shutil.which("curl")
    assert curl, "curl is not installed"
    for command in commands:
        pointed = re.sub(r"(localhost|127\.0\.0\.1):9871", service, command)
        if " | " in pointed:  # a pipeline (curl ... | grep ...): run as the shell would, failing if any part fails
            shell = pointed.replace("curl ", f"{curl} --fail --max-time 10 ", 1)
            result = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True,
                                    timeout=30, check=False)  # fmt: skip
            assert result.returncode == 0 and result.stdout, f"{command}: exit {result.returncode}: {result.stderr}"
            continue
        argv = shlex.split(pointed)
        assert argv[0] == "curl" and any(service in a for a in argv), command
        result = subprocess.run([curl, "--fail", "--max-time", "10", *argv[1:]], capture_output=True, text=True,
                                timeout=30, check=False)  # fmt: skip
        assert result.returncode == 0, f"{command}: exit {result.returncode}: {result.stderr}"
