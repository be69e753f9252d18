"""deploy/systemd: the units pass `systemd-analyze verify` and score OK in `systemd-analyze security --offline`,
carry the hardening the deploy guide promises, and their commands do what the guide says (check-config before
start; the validation unit checks, waits for and validates a running service)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ark_obs import __version__
from plugins.ci import missing_dependency

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("ark-obs.service", "ark-obs-validate.service")
ENV_FILE = SYSTEMD / "ark-obs.env"
INSTALLED = "/opt/ark-obs/bin/ark-obs"  # where deploy/README.md installs the wheel's venv
ARK_OBS = str(Path(sys.executable).with_name("ark-obs"))


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing_dependency("systemd-analyze not found: sudo apt-get install -y systemd")
    return path


def directives(unit: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given in ``unit`` (sections flattened; keys are unique across them here)."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def rewritten(tmp_path: Path, binary: str) -> list[Path]:
    """The units with ExecStart's binary replaced by ``binary`` (verify needs it to exist)."""
    out = []
    for unit in UNITS:
        target = tmp_path / unit
        target.write_text((SYSTEMD / unit).read_text().replace(INSTALLED, binary))
        out.append(target)
    return out


def env_file_values() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def clean_env(**extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARK_OBS_", "PROMETHEUS_MULTIPROC"))}
    return {**env, **env_file_values(), **extra}


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    done = subprocess.run([analyze(), "verify", "--man=no", *map(str, rewritten(tmp_path, ARK_OBS))],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_verify_checks_the_binary_path(tmp_path: Path) -> None:
    """The shipped path only exists once installed: verify really looks at it (so the rewrite above matters)."""
    missing = str(tmp_path / "nowhere" / "ark-obs")
    done = subprocess.run([analyze(), "verify", "--man=no", str(rewritten(tmp_path, missing)[0])],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "is not executable" in done.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened(unit: str, tmp_path: Path) -> None:
    d = directives(unit)
    assert d["DynamicUser"] == ["yes"]  # its own user
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")):  # fmt: skip
        assert d[key] == [value], key
    assert d["EnvironmentFile"] == ["/etc/ark-obs/ark-obs.env"]
    (path,) = [p for p in rewritten(tmp_path, ARK_OBS) if p.name == unit]
    done = subprocess.run([analyze(), "security", "--offline=yes", str(path)], capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert score, done.stdout[-2000:]
    assert float(score.group(1)) <= 2.0, done.stdout[-3000:]


def test_service_checks_the_configuration_before_start_and_restarts_on_failure() -> None:
    d = directives("ark-obs.service")
    assert d["ExecStartPre"] == [f"{INSTALLED} check-config"]
    assert d["ExecStart"] == [f"{INSTALLED} serve"]
    assert d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["2"]  # a refused configuration is not retried


def test_check_config_with_the_shipped_environment_file(tmp_path: Path) -> None:
    """What the journal shows before start (the deploy guide quotes it)."""
    ok = subprocess.run([ARK_OBS, "check-config"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ark-obs: configuration OK (env file: none)")
    assert "ARK_OBS_INGEST_TOKEN=(unset: writes are open)" in ok.stdout
    bad = subprocess.run([ARK_OBS, "check-config"], cwd=tmp_path, env=clean_env(ARK_OBS_HOST="0.0.0.0"),
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("ark-obs: 1 configuration problem(s):")
    assert "ARK_OBS_HOST: 0.0.0.0 is not a loopback address" in bad.stderr


def test_validation_unit_checks_a_running_service(start: Any, tmp_path: Path) -> None:
    """ark-obs-validate.service's command against a service started as ark-obs.service would start it."""
    d = directives("ark-obs-validate.service")
    assert d["Type"] == ["oneshot"]
    assert d["After"] == ["ark-obs.service"] and d["Requires"] == ["ark-obs.service"]
    assert d["WantedBy"] == ["ark-obs.service"]
    (command,) = d["ExecStart"]
    argv = command.replace(INSTALLED, ARK_OBS).split()
    assert argv[1:3] == ["up", "--no-serve"]
    # the synthetic validation itself (~10 s) is run by tests/deploy/test_start.py; here the --no-serve path
    argv.append("--no-validate")
    server = start(env={**env_file_values(), "ARK_OBS_LOG_LEVEL": "warning"})
    done = subprocess.run(argv, cwd=tmp_path, env=clean_env(ARK_OBS_PORT=str(server.port)),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ark-obs {__version__} is up on {server.url}" in done.stdout
    assert "readiness    ready: registry ok" in done.stdout
    assert "validation   skipped" in done.stdout
    assert server.proc.poll() is None  # --no-serve leaves the service alone
