"""`ark-obs validate` against evidence it cannot reach says so at once, and its table fits the terminal."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ark_obs.canary import Verdict
from ark_obs.validate.report import StepResult, ValidationReport, print_table
from plugins.net import free_port

ARK_OBS = Path(sys.executable).with_name("ark-obs")

PLAN = """
[sources]
ark_obs = "http://127.0.0.1:{silent}"
prometheus = "http://127.0.0.1:{closed}"
alertmanager = "http://127.0.0.1:{closed}"
timeout = 1

[[steps]]
name = "every SLO met"
deadline = "10m"
expect = {{ kind = "slos_met", duration = "9m", poll = "15s" }}
"""


def test_unreachable_evidence_is_reported_within_the_connect_timeout(tmp_path: Path) -> None:
    """An ark-obs that accepts connections but never answers, and a Prometheus and an Alertmanager nothing
    listens for: each is named as unreachable within the plan's 1 s timeout (not after the step's 10 min
    deadline), and the run is inconclusive (exit 2)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever answers
    closed = free_port()
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(silent=silent.getsockname()[1], closed=closed))
    try:
        started = time.monotonic()
        result = subprocess.run([str(ARK_OBS), "validate", "--plan", str(plan)], capture_output=True, text=True,
                                timeout=60, check=False, cwd=tmp_path)  # fmt: skip
        took = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 2, result.stderr
    assert took < 1 + 5, f"{took:.1f} s"  # the timeout, plus starting Python on a loaded machine
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("ark-obs validate: ark-obs at http://127.0.0.1:") and "ReadTimeout" in line for line in lines
    )
    for name in ("Prometheus", "Alertmanager"):
        assert any(f"{name} at http://127.0.0.1:{closed} is unreachable" in line for line in lines), name


@pytest.mark.parametrize("columns", [60, 100])
def test_report_table_fits_columns(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """The report table is as wide as COLUMNS says, long texts wrapped inside their cells."""
    monkeypatch.setenv("COLUMNS", str(columns))
    long = 'ark_agent_up{agent="Joey"} went 1 -> 0 after 1.8 s, within 2 heartbeat intervals of 1 s ' * 2
    report = ValidationReport(target="http://127.0.0.1:9871", steps=[
        StepResult(name="Joey reported down", verdict=Verdict.PASS, expected=long, observed=long, evidence=long,
                   seconds=1.8),
    ])  # fmt: skip
    out = io.StringIO()
    print_table(report, file=out)
    widths = [len(line) for line in out.getvalue().splitlines()]
    assert max(widths) <= columns and max(widths) >= columns - 10, widths
