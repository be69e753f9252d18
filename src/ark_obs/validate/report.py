"""The validation report: one result per step (expected, observed, evidence, time taken) and a verdict."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from ark_obs.canary import EXIT_STATUS, Verdict

__all__ = ["EXIT_STATUS", "StepResult", "ValidationReport", "Verdict", "print_table"]


class StepResult(BaseModel):
    """How one step went."""

    model_config = ConfigDict(frozen=True)

    name: str
    verdict: Verdict
    expected: str
    observed: str
    evidence: str
    seconds: float


class ValidationReport(BaseModel):
    """Every step's result; the verdict is fail if a step failed, else inconclusive if one was, else pass."""

    model_config = ConfigDict(frozen=True)

    target: str
    steps: list[StepResult]

    @property
    def verdict(self) -> Verdict:
        """The whole run's verdict."""
        verdicts = {s.verdict for s in self.steps}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        return Verdict.INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else Verdict.PASS

    @property
    def failed(self) -> list[str]:
        """Names of the failed steps."""
        return [s.name for s in self.steps if s.verdict is Verdict.FAIL]

    @property
    def exit_status(self) -> int:
        """0 passed, 1 a step failed, 2 inconclusive (as ``ark-obs canary-check``)."""
        return EXIT_STATUS[self.verdict]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: the steps, the verdict and the failed steps' names."""
        return {**self.model_dump(mode="json"), "verdict": self.verdict.value, "failed": self.failed}


_STYLE: Final = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.INCONCLUSIVE: "yellow"}


def table_width() -> int:
    """The terminal's width: ``COLUMNS`` when set (as shells export it), else the terminal's, else 160."""
    import os
    import shutil

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 20:
        return int(columns)
    return shutil.get_terminal_size((160, 24)).columns


def print_table(report: ValidationReport, file: Any = None) -> None:
    """The report as a rich table, one row per step, then the verdict naming the failed steps."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ark-obs validate ({report.target})", title_justify="left", show_lines=True)
    table.add_column("step")
    table.add_column("verdict", no_wrap=True)
    table.add_column("expected")
    table.add_column("observed")
    table.add_column("evidence")
    table.add_column("time", justify="right", no_wrap=True)
    for s in report.steps:
        table.add_row(
            s.name,
            f"[{_STYLE[s.verdict]}]{s.verdict.value}[/]",
            s.expected,
            s.observed,
            s.evidence,
            f"{s.seconds:.1f} s",
        )
    console = Console(file=file, width=table_width())
    console.print(table)
    verdict = report.verdict
    detail = f": {', '.join(report.failed)} failed" if report.failed else ""
    console.print(f"[{_STYLE[verdict]}]{verdict.value}[/]{detail}")
