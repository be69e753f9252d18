"""``make bench`` (python -m bench) exits non-zero naming every missed target or crashed benchmark.

``make test`` smoke-runs every benchmark module once at a tiny size, so none can silently rot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import bench.__main__ as bench_main
import pytest

ROOT = Path(__file__).resolve().parent.parent


def fake_benchmark(monkeypatch: pytest.MonkeyPatch, name: str, rows: list[dict[str, Any]]) -> None:
    """A module ``bench.bench_<name>`` whose run() returns ``rows`` (nothing is timed)."""
    module = types.ModuleType(f"bench.bench_{name}")
    module.run = lambda: {"title": name, "rows": rows}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)


def result_row(name: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "value": 1.0, "unit": "ns", "ratio": 1.0, "target": 2.0, "ok": ok, "note": ""}


@pytest.fixture(autouse=True)
def out_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Results go to a scratch directory, not bench/out."""
    monkeypatch.setattr(bench_main, "OUT", tmp_path)


def test_missed_target_exits_1_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One missed target among met ones: exit status 1, and the summary names the module and the measurement."""
    fake_benchmark(monkeypatch, "fast", [result_row("observe", True), result_row("baseline", None)])
    fake_benchmark(monkeypatch, "slow", [result_row("scrape p99 under load", False), result_row("other", True)])
    assert bench_main.main(["fast", "slow"]) == 1
    out = capsys.readouterr().out
    summary = out[out.index("target(s) missed") - 2 :]
    assert summary.splitlines()[0] == "1 target(s) missed:"
    assert "bench_slow: scrape p99 under load" in summary
    assert "observe" not in summary and "other" not in summary


def test_every_target_met_exits_0(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows that met their targets, and rows without a target, exit 0."""
    fake_benchmark(monkeypatch, "fast", [result_row("observe", True), result_row("baseline", None)])
    assert bench_main.main(["fast"]) == 0
    assert "every target met" in capsys.readouterr().out


def test_a_crashing_benchmark_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A benchmark that raises: named with its traceback, the ones after it still run, exit status 2."""
    module = types.ModuleType("bench.bench_broken")

    def broken() -> dict[str, Any]:
        raise ValueError("Duplicated timeseries in CollectorRegistry")

    module.run = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    fake_benchmark(monkeypatch, "after", [result_row("observe", True)])
    assert bench_main.main(["broken", "after"]) == 2
    out = capsys.readouterr().out
    assert "bench_broken crashed" in out and "Duplicated timeseries" in out
    assert "1 benchmark(s) crashed: bench_broken" in out
    assert (bench_main.OUT / "bench_after.json").exists()


def test_make_bench_propagates_a_failing_status(tmp_path: Path) -> None:
    """``make bench`` run with an interpreter that fails: make fails too, whatever the recipe's shape."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "fake interpreter: $*"\nexit 3\n')
    fake.chmod(0o755)
    # -o: neither the venv nor the system packages are (re)made; only the bench recipe runs
    done = subprocess.run(
        [make, "-o", ".venv/.installed", "-o", "system-deps", "bench", f"PY={fake}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "fake interpreter: -m bench" in done.stdout, done.stdout + done.stderr
    assert done.returncode != 0


def test_every_benchmark_runs_to_its_end_at_a_tiny_size(tmp_path: Path) -> None:
    """Smoke run (ARK_OBS_BENCH_SMOKE=1): every bench/bench_*.py module runs once and reports rows; no timing asserted.

    A benchmark that no longer runs (an API it uses changed) fails here instead of on the next ``make bench``.
    """
    modules = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    env = {
        **os.environ,
        "ARK_OBS_BENCH_SMOKE": "1",
        "ARK_OBS_BENCH_OUT": str(tmp_path),
        "ARK_OBS_BENCH_ATTACK_SECONDS": "0.1",
    }
    # two halves at once (this machine has two cores), each as `make bench` runs them
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench", *half],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in (modules[0::2], modules[1::2])
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode in (0, 1), out[-4000:] + err[-4000:]  # 1: tiny sizes miss targets
        assert "crashed" not in out
    for name in modules:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["rows"], name
