"""``make bench`` (python -m bench) exits non-zero naming every missed target, so a regression is visible."""

from __future__ import annotations

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


def test_make_bench_propagates_the_status() -> None:
    """The Makefile runs ``python -m bench`` as the recipe's command, so its exit status is make's."""
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "$(PY) -m bench" in recipe and "|| true" not in recipe and "-$(PY)" not in recipe
    assert "sys.exit(main(sys.argv[1:]))" in (ROOT / "bench/__main__.py").read_text()
