"""The manual's examples run as written: every Python block of README.md and deploy/ is a complete program."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANUALS = [ROOT / "README.md", *sorted((ROOT / "deploy").rglob("*.md"))]
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
