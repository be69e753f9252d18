"""The ark-obs command as a user runs it (a real process): it works as documented and speaks plainly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def run(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ark-obs argv`` in an empty directory, with no ARK_OBS_* variable of the developer's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    return subprocess.run([sys.executable, "-m", "ark_obs", *argv], cwd=tmp_path, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


BAD_CANARY = {"ARK_OBS_CANARY_MIN_DECISIONS": "abc"}


def test_check_config_reports_a_bad_canary_setting(tmp_path: Path) -> None:
    """check-config validates the canary analysis' settings too: exit 2, naming the variable and the value."""
    result = run(tmp_path, "check-config", env=BAD_CANARY)
    assert result.returncode == 2, result.stdout
    assert "ARK_OBS_CANARY_MIN_DECISIONS: " in result.stderr and "'abc'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_lists_the_canary_settings_when_ok(tmp_path: Path) -> None:
    """The effective settings printed by check-config (offline: nothing listens there) include every
    ARK_OBS_CANARY_* setting."""
    result = run(
        tmp_path, "check-config", "--offline", env={"ARK_OBS_CANARY_PROMETHEUS_URL": "http://prom.example:9090"}
    )
    assert result.returncode == 0, result.stderr
    assert "ARK_OBS_CANARY_PROMETHEUS_URL=http://prom.example:9090" in result.stdout
    assert "ARK_OBS_CANARY_MIN_DECISIONS=20" in result.stdout


def test_serve_refuses_a_bad_canary_setting_like_check_config(tmp_path: Path) -> None:
    """serve exits 2 with the same one-line message as check-config, no traceback, before binding anything."""
    served = run(tmp_path, "serve", "--port", "1", env=BAD_CANARY)
    checked = run(tmp_path, "check-config", env=BAD_CANARY)
    assert served.returncode == 2 and "Traceback" not in served.stderr
    line = next(x for x in checked.stderr.splitlines() if "ARK_OBS_CANARY_MIN_DECISIONS" in x)
    assert line in served.stderr.splitlines()


def test_check_config_with_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    """An --env-file that does not exist is reported (exit 2), never silently skipped; serve agrees."""
    for command in ("check-config", "serve"):
        result = run(tmp_path, command, "--env-file", "MISSING")
        assert result.returncode == 2, (command, result.stdout)
        assert "--env-file: no such file: 'MISSING'" in result.stderr, command


def test_a_bad_port_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    """serve --port 70000 names --port, which the user typed, not ARK_OBS_PORT, which they did not."""
    result = run(tmp_path, "serve", "--port", "70000")
    assert result.returncode == 2
    assert "  --port: " in result.stderr and "ARK_OBS_PORT" not in result.stderr and "70000" in result.stderr


def test_bad_numbers_name_the_option_and_the_value(tmp_path: Path) -> None:
    """synthetic --rate abc: 'argument --rate: must be a positive number, got 'abc'' (no internal function name)."""
    result = run(tmp_path, "synthetic", "--rate", "abc")
    assert result.returncode == 2
    assert "argument --rate: must be a positive number, got 'abc'" in result.stderr
    assert "_positive" not in result.stderr
    shared = run(tmp_path, "synthetic", "--bad-share", "2")
    assert "argument --bad-share: must be a share between 0 and 1, got '2'" in shared.stderr


def test_canary_check_defaults_to_the_documented_variable(tmp_path: Path) -> None:
    """Without --prometheus, canary-check asks ARK_OBS_CANARY_PROMETHEUS_URL (here nothing listens: inconclusive)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = run(tmp_path, "canary-check", "--json", "--timeout", "1", env={"ARK_OBS_CANARY_PROMETHEUS_URL": url})
    assert result.returncode == 2, result.stderr
    analysis = json.loads(result.stdout)
    assert analysis["prometheus"] == url and analysis["verdict"] == "inconclusive"


def test_canary_check_names_options_not_fields(tmp_path: Path) -> None:
    """A bad option value is reported under the option the user typed; a bad variable under the variable."""
    result = run(tmp_path, "canary-check", "--min-decisions", "0")
    assert result.returncode == 2
    assert "--min-decisions: " in result.stderr and "(got 0)" in result.stderr
    assert "min_decisions:" not in result.stderr
    result = run(tmp_path, "canary-check", env={"ARK_OBS_CANARY_TIMEOUT_SECONDS": "0"})
    assert result.returncode == 2 and "ARK_OBS_CANARY_TIMEOUT_SECONDS: " in result.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`ark-obs check-config | head -0`: the reader is gone before the first line; no traceback, no error."""
    read, write = os.pipe()
    os.close(read)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    try:
        result = subprocess.run([sys.executable, "-m", "ark_obs", "check-config"], cwd=tmp_path, env=clean,
                                stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 141


def test_a_port_in_use_fails_before_the_banner(tmp_path: Path) -> None:
    """serve on a port another process listens on: exit 1 saying so, and no URL is printed as if it served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on http://127.0.0.1:{port}: " in result.stderr
    assert "/metrics" not in result.stderr and "/docs" not in result.stderr
