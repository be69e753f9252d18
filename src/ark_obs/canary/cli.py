"""The ``ark-obs canary-check`` command: options over ``ARK_OBS_CANARY_*``, one analysis, exit 0 / 1 / 2.

``ARGUMENTS`` holds its options, which ``ark_obs.cli`` adds to its parser; ``main`` prints a table or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Final

from pydantic import ValidationError

from ark_obs.canary.analysis import analyze
from ark_obs.canary.config import CanaryConfig, SelectorError, env_name, parse_duration, parse_selector
from ark_obs.canary.results import EXIT_STATUS, CanaryAnalysis, Verdict

__all__ = ["ARGUMENTS", "HELP", "config_from_args", "main", "print_table"]

HELP: Final = "Judge a canary against its baseline from Prometheus: exit 0 pass, 1 fail, 2 inconclusive."


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selector_arg(text: str) -> str:
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# (flags, add_argument options): cli.py turns each into its ``arg(...)``. Defaults are None so that the
# ARK_OBS_CANARY_* environment (CanaryConfig) applies unless an option is given.
ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--prometheus",), {"metavar": "URL",
                         "help": "Prometheus base URL (default $ARK_OBS_CANARY_PROMETHEUS_URL, else http://127.0.0.1:9090)"}),
    (("--canary",), {"type": _selector_arg, "metavar": "SELECTOR",
                     "help": 'the canary: a track value or matcher (default track="canary")'}),
    (("--baseline",), {"type": _selector_arg, "metavar": "SELECTOR",
                       "help": 'the baseline: a track value or matcher (default track="stable")'}),
    (("--json",), {"action": "store_true", "help": "print the analysis as JSON"}),
    (("--latency-for",), {"type": _duration_arg, "metavar": "DURATION",
                          "help": "how long p95 must stay above the threshold (default 3m)"}),
    (("--quarantine-window",), {"type": _duration_arg, "metavar": "DURATION",
                                "help": "any quarantine in this window fails (default 10m)"}),
    (("--baseline-window",), {"type": _duration_arg, "metavar": "DURATION",
                              "help": "history of the baseline's denial ratio (default 1h)"}),
    (("--baseline-min-age",), {"type": _duration_arg, "metavar": "DURATION",
                               "help": "the baseline's history must reach back this far (default 30m)"}),
    (("--baseline-min-points",), {"type": int, "metavar": "N", "help": "fewest baseline samples (default 20)"}),
    (("--min-decisions",), {"type": int, "metavar": "N",
                            "help": "fewest canary decisions in the last minute (default 20)"}),
    (("--step",), {"type": _duration_arg, "metavar": "DURATION",
                   "help": "resolution of history queries: Prometheus' evaluation interval (default 15s)"}),
    (("--job",), {"metavar": "NAME", "help": "scrape job of ark-obs (default ark-obs)"}),
    (("--timeout",), {"type": float, "metavar": "SECONDS", "help": "timeout of each Prometheus request (default 2)"}),
)  # fmt: skip

_OPTION_FIELDS: Final = {
    "prometheus": "prometheus_url",
    "canary": "selector",
    "baseline": "baseline_selector",
    "latency_for": "latency_for",
    "quarantine_window": "quarantine_window",
    "baseline_window": "baseline_window",
    "baseline_min_age": "baseline_min_age",
    "baseline_min_points": "baseline_min_points",
    "min_decisions": "min_decisions",
    "step": "step",
    "job": "job",
    "timeout": "timeout_seconds",
}


def _option_or_env(args: argparse.Namespace, field: str) -> str:
    """How the user set ``field``: the option given (``--min-decisions``), else its environment variable."""
    for option, name in _OPTION_FIELDS.items():
        if name == field and getattr(args, option, None) is not None:
            return "--" + option.replace("_", "-")
    return env_name(field)


def _problem(args: argparse.Namespace, error: Any) -> str:
    """One validation error, named as the user set it, with the value they gave."""
    where = _option_or_env(args, str(error["loc"][0])) if error["loc"] else "?"
    message: str = error["msg"].removeprefix("Value error, ")
    given = repr(error.get("input"))
    return f"{where}: {message}" + ("" if given in message else f" (got {given})")


def config_from_args(args: argparse.Namespace) -> CanaryConfig:
    """The configuration: ``ARK_OBS_CANARY_*`` and ``.env``, overridden by the options given."""
    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items()}
    return CanaryConfig(**{k: v for k, v in overrides.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    """Run the analysis once; print a table (or JSON); exit 0 pass, 1 fail, 2 inconclusive (or bad options)."""
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(_problem(args, e) for e in exc.errors())
        print(f"ark-obs canary-check: {problems}", file=sys.stderr)
        return EXIT_STATUS[Verdict.INCONCLUSIVE]
    result = asyncio.run(analyze(config))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print_table(result)
    return EXIT_STATUS[result.verdict]


_STYLE: Final = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.INCONCLUSIVE: "yellow"}


def print_table(result: CanaryAnalysis, file: Any = None) -> None:
    """The analysis as a rich table, for people."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"canary {{{result.canary}}} vs baseline {{{result.baseline}}} ({result.prometheus})",
        title_justify="left",
    )
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
    table.add_column("why", overflow="fold")
    for check in result.checks.values():
        table.add_row(
            check.name,
            f"[{_STYLE[check.verdict]}]{check.verdict.value.upper()}[/]",
            "-" if check.value is None else f"{check.value:.4g} {check.unit}".strip(),
            "-" if check.threshold is None else f"{check.threshold:.4g}",
            check.reason,
        )
    console = Console(file=file)
    console.print(table)
    console.print(f"[{_STYLE[result.verdict]}]{result.verdict.value.upper()}[/]: {result.reason}")
