"""The ``ark-obs synthetic`` command: its options and their checks, the live progress display, the printed report.

``ark_obs.cli`` adds the options (``ARGUMENTS``) to its own parser and runs ``main``; the checks turn a
bad option into argparse's usage error, naming the option, before any agent runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ark_obs.synthetic.config import DEFAULT_LATENCIES, PIPELINE, Fault, LatencyModel, SyntheticConfig
from ark_obs.synthetic.loop import in_process_collector, run_loop
from ark_obs.synthetic.report import SyntheticReport
from ark_obs.synthetic.state import RunState

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["ARGUMENTS", "HELP", "add_arguments", "build_parser", "config_from_args", "main"]

HELP: Final = "Drive simulated, instrumented agents through the pipeline and check the seed's criteria."


def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latency(text: str) -> tuple[str, LatencyModel]:
    agent, sep, model = text.partition("=")
    if not sep or agent not in PIPELINE:
        raise argparse.ArgumentTypeError(
            f"--latency {text!r}: expected AGENT=MEDIAN_MS[:SIGMA], AGENT one of {', '.join(PIPELINE)}"
        )
    try:
        return agent, LatencyModel.parse(model)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--latency {text!r}: {exc}") from None


def _number(text: str, holds: Callable[[float], bool], what: str) -> float:
    """``text`` as a float for which ``holds``; argparse prefixes the option: ``argument --rate: must be ...``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and holds(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _share(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a share between 0 and 1")


def _positive(text: str) -> float:
    return _number(text, lambda v: v > 0, "a positive number")


def _scale(text: str) -> float:
    return _number(text, lambda v: v >= 0, "a number >= 0")


# (flags, add_argument options): cli.py turns each into its ``arg(...)``
ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--rate",), {"type": _positive, "default": 1.0, "help": "passes per second (default 1, the seed's 1 Hz)"}),
    (("--duration",), {"type": _scale, "default": 30.0,
                       "help": "seconds to run (default 30; 0 = until Ctrl-C)"}),
    (("--bad-share",), {"type": _share, "default": 0.05,
                        "help": "share of passes carrying a known-bad action HRM must deny (default 0.05)"}),
    (("--fault",), {"type": _fault, "action": "append", "default": [], "metavar": "FAULT",
                    "help": "inject a fault (repeatable): kenny-errors, skip-revision, silence:AGENT, drop:AGENT"}),
    (("--drop-share",), {"type": _share, "default": 0.1,
                         "help": "share of passes whose span a drop:AGENT fault loses (default 0.1)"}),
    (("--target",), {"default": "in-process",
                     "help": "in-process (default) or http://host:port of a running ark-obs"}),
    (("--token",), {"default": None, "help": "bearer token for an HTTP target (default: $ARK_OBS_INGEST_TOKEN)"}),
    (("--latency",), {"type": _latency, "action": "append", "default": [], "metavar": "AGENT=MS[:SIGMA]",
                      "help": "an agent's log-normal latency: median ms and sigma (repeatable)"}),
    (("--latency-scale",), {"type": _scale, "default": 1.0,
                            "help": "multiply every agent latency (0 = no simulated latency)"}),
    (("--interval",), {"type": _positive, "default": 1.0, "help": "heartbeat interval in seconds (default 1)"}),
    (("--seed",), {"type": int, "default": None, "help": "random seed, for a reproducible run"}),
    (("--json",), {"action": "store_true", "help": "print the report as JSON (no live display)"}),
    (("--quiet",), {"action": "store_true", "help": "no live display"}),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synthetic`` options to ``parser``."""
    for flags, options in ARGUMENTS:
        parser.add_argument(*flags, **options)


def build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synthetic`` subcommand to an ``add_subparsers()`` result; it runs ``main``."""
    parser: argparse.ArgumentParser = subparsers.add_parser("synthetic", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(run=main)
    return parser


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    """The run configuration the parsed options describe."""
    latencies = dict(DEFAULT_LATENCIES)
    latencies.update(dict(args.latency))
    return SyntheticConfig(
        rate=args.rate,
        duration_seconds=args.duration or None,
        bad_share=args.bad_share,
        faults=tuple(dict.fromkeys(args.fault)),
        drop_share=args.drop_share,
        target=args.target,
        token=args.token,
        latencies=latencies,
        latency_scale=args.latency_scale,
        heartbeat_interval_seconds=args.interval,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> int:
    """Run the loop as the options say; print the report; 0 when every criterion holds, else 1."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ark-obs synthetic: {exc}", file=sys.stderr)
        return 2
    live = not (args.json or args.quiet)
    report = asyncio.run(_run_cli(config, live))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    if not report.passed:
        print(f"ark-obs synthetic: FAILED: {'; '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


async def _run_cli(config: SyntheticConfig, live: bool) -> SyntheticReport:
    """Run with a live display on stderr; Ctrl-C or SIGTERM ends the run early, with a report."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if not live:
        return await run_loop(config, in_process_collector(config), stop=stop)
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    with Live(console=console, auto_refresh=False, transient=False) as display:

        def progress(state: RunState) -> None:
            display.update(_progress_table(config, state), refresh=True)

        return await run_loop(config, in_process_collector(config), stop=stop, on_progress=progress)


def _progress_table(config: SyntheticConfig, state: RunState) -> RenderableType:
    from rich.table import Table

    elapsed = state.elapsed
    # the report's figure: completed passes over the time their starts took (RunState.throughput)
    achieved = state.throughput(config.rate)[1]
    p95 = state.recent_p95()
    table = Table(title=f"ark-obs synthetic -> {config.target}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    incomplete = state.incomplete_expected + state.incomplete_unexpected
    rows = (
        ("passes", f"{state.passes:,} / {state.scheduled:,} started"),
        ("achieved rate", f"{achieved:,.2f}/s (asked {config.rate:g}/s)" if elapsed > 0 else "-"),
        ("p95 (recent)", "-" if p95 is None else f"{p95:,.1f} ms"),
        ("denials", f"{state.denials:,} ({state.injected_denied:,}/{state.injected:,} injected)"),
        ("quarantines", ", ".join(f"{a} x{n}" for a, n in state.quarantines.items()) or "0"),
        ("incomplete traces", f"{incomplete:,} ({state.incomplete_unexpected:,} unexpected)"),
        ("unexpected errors", f"{sum(state.unexpected.values()):,}"),
        ("silent agents", ", ".join(sorted(state.silent)) or "none"),
    )
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_report(report: SyntheticReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"synthetic validation: {report.passes:,} passes at {report.achieved_rate:,.2f}/s ({report.target})",
        title_justify="left",
    )
    table.add_column("criterion")
    table.add_column("result")
    table.add_column("detail")
    for c in report.criteria:
        table.add_row(c.name, "[green]PASS[/]" if c.passed else "[red]FAIL[/]", c.detail)
    console = Console()
    console.print(table)
    if report.example_trace_id:
        console.print(f"example trace: {report.example_trace_id}")
