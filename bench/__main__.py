"""Run every benchmark (``make bench``): ``python -m bench [name ...]``; results also go to bench/out/."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

OUT = Path(__file__).parent / "out"


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


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all bench_*.py modules)."""
    here = [str(Path(__file__).parent)]
    names = argv or sorted(m.name for m in pkgutil.iter_modules(here) if m.name.startswith("bench_"))
    console = Console(width=150)
    OUT.mkdir(exist_ok=True)
    failed = False
    for name in names:
        module = importlib.import_module(f"bench.{name if name.startswith('bench_') else 'bench_' + name}")
        with console.status(f"running {module.__name__} ..."):
            started = time.perf_counter()
            result = module.run()
        result["seconds"] = round(time.perf_counter() - started, 1)
        show(result, console)
        (OUT / f"{module.__name__.split('.')[-1]}.json").write_text(json.dumps(result, indent=2, default=str))
        failed |= any(r.get("ok") is False for r in result.get("rows", []))
    console.print("[red]some targets were missed[/]" if failed else "[green]every target met[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
