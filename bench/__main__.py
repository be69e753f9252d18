"""Run every benchmark (``make bench``): ``python -m bench [name ...]``; results also go to bench/out/."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OUT = Path(os.environ.get("ARK_OBS_BENCH_OUT") or Path(__file__).parent / "out")


def show(result: dict[str, Any], console: Console | None = None) -> None:
    """Print one benchmark's result as a table (or as JSON if it has no rows)."""
    console = console or Console(width=150)
    rows = result.get("rows")
    if not rows:
        console.print_json(json.dumps(result, default=str))
        return
    table = Table(title=result.get("title", ""), title_justify="left")
    for col in ("measurement", "value", "ratio", "target", "ok", "note"):
        table.add_column(col, justify="right" if col in ("value", "ratio", "target") else "left")
    for r in rows:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[r.get("ok")]
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        target = "" if r.get("target") is None else f"<= {r['target']:g}x"
        table.add_row(r["name"], f"{r['value']:,.1f} {r['unit']}", ratio, target, ok, r.get("note", ""))
    console.print(table)


def missed_targets(module: str, result: dict[str, Any]) -> list[str]:
    """``module: measurement`` for every row of ``result`` that missed its target (``ok`` False)."""
    return [f"{module}: {r['name']}" for r in result.get("rows", []) if r.get("ok") is False]


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all bench_*.py modules).

    Exit status 0: every target met; 1: targets missed (each named); 2: a benchmark crashed (the others
    still ran). ``ARK_OBS_BENCH_SMOKE=1`` runs each at a tiny size (bench/_timing.py), figures meaningless.
    """
    here = [str(Path(__file__).parent)]
    names = argv or sorted(m.name for m in pkgutil.iter_modules(here) if m.name.startswith("bench_"))
    console = Console(width=150)
    OUT.mkdir(exist_ok=True)
    missed: list[str] = []
    crashed: list[str] = []
    for name in names:
        short = name if name.startswith("bench_") else "bench_" + name
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{short}")
            with console.status(f"running {module.__name__} ..."):
                result = module.run()
        except Exception:
            # one broken benchmark must not hide the ones after it: report it, run the rest, fail at the end
            console.print(f"[red]{short} crashed:[/]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            crashed.append(short)
            continue
        result["seconds"] = round(time.perf_counter() - started, 1)
        show(result, console)
        (OUT / f"{short}.json").write_text(json.dumps(result, indent=2, default=str))
        missed += missed_targets(short, result)
    if crashed:
        console.print(f"[red]{len(crashed)} benchmark(s) crashed: {', '.join(crashed)}[/]")
        return 2
    if not missed:
        console.print("[green]every target met[/]")
        return 0
    # a regression must be visible to make and CI, not only as a red cell in a table
    console.print(f"[red]{len(missed)} target(s) missed:[/]")
    for line in missed:
        console.print(f"  {line}", markup=False, highlight=False)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
