"""``ark-obs validate``: run a plan, show live progress on stderr, print the report; exit 0, 1 or 2.

ark-obs validate --synthetic --watch 30s            # the default plan against the built-in pipeline
ark-obs validate --plan post-deploy.toml --json     # a deployment: the plan says how to inject
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx

from ark_obs._redact import redact_url, scrub
from ark_obs.canary import Verdict
from ark_obs.slo import parse_duration
from ark_obs.validate.builtin import BASE_URL, FAULTS, SyntheticDeployment
from ark_obs.validate.evidence import AlertmanagerReader, ArkObsReader, PrometheusReader
from ark_obs.validate.expectations import Readers
from ark_obs.validate.inject import Injector
from ark_obs.validate.plan import DEFAULT_WATCH_SECONDS, Plan, PlanError, Sources, default_plan, load_plan
from ark_obs.validate.report import EXIT_STATUS, StepResult, ValidationReport, print_table
from ark_obs.validate.runner import run_plan

__all__ = ["ARGUMENTS", "HELP", "main", "validate"]

HELP: Final = (
    "Post-deploy validation: run a plan of injections and expected reactions; exit 0 pass, 1 fail, 2 inconclusive."
)


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


ARGUMENTS: Final[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = (
    (("--plan",), {"type": Path, "metavar": "FILE",
                 "help": "TOML plan (default: the seed's checklist, needs --synthetic)"}),
    (("--synthetic",), {"action": "store_true",
                        "help": "run against the built-in synthetic pipeline, which provides the injections"}),
    (("--watch",), {"type": _duration_arg, "default": DEFAULT_WATCH_SECONDS, "metavar": "DURATION",
                    "help": "default plan: how long every SLO must stay met (default 30m)"}),
    (("--kill",), {"default": "Joey", "metavar": "AGENT", "help": "default plan: the agent killed (default Joey)"}),
    (("--ark-obs",), {"metavar": "URL", "help": "ark-obs base URL (overrides the plan's)"}),
    (("--prometheus",), {"metavar": "URL", "help": "Prometheus base URL (overrides the plan's)"}),
    (("--alertmanager",), {"metavar": "URL", "help": "Alertmanager base URL (overrides the plan's)"}),
    (("--json",), {"action": "store_true", "help": "print the report as JSON"}),
    (("--rate",), {"type": float, "default": 10.0, "metavar": "R",
                   "help": "--synthetic: passes per second (default 10)"}),
    (("--heartbeat-interval",), {"type": _duration_arg, "default": 1.0, "metavar": "DURATION",
                                 "help": "--synthetic: the agents' heartbeat interval (default 1s)"}),
    (("--fault",), {"action": "append", "default": [], "choices": FAULTS,
                    "help": "--synthetic: break a safeguard, to see validation fail (repeatable)"}),
)  # fmt: skip


def _sources(plan_sources: Sources, args: argparse.Namespace) -> Sources:
    overrides = {
        name: value
        for name, value in (
            ("ark_obs", args.ark_obs),
            ("prometheus", args.prometheus),
            ("alertmanager", args.alertmanager),
        )
        if value is not None
    }
    return Sources.model_validate({**plan_sources.model_dump(), **overrides}) if overrides else plan_sources


@contextlib.asynccontextmanager
async def _readers(
    plan: Plan, deployment: SyntheticDeployment | None
) -> AsyncIterator[tuple[Readers, httpx.AsyncClient]]:
    s = plan.sources
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=s.timeout))
        if deployment is not None:
            ark = ArkObsReader(await stack.enter_async_context(deployment.client(s.timeout)), BASE_URL)
            interval: float | None = deployment.config.heartbeat_interval_seconds
        else:
            ark, interval = ArkObsReader(client, s.ark_obs), s.heartbeat_interval_seconds
        yield (
            Readers(
                ark_obs=ark,
                prometheus=PrometheusReader(client, s.prometheus) if s.prometheus else None,
                alertmanager=AlertmanagerReader(client, s.alertmanager) if s.alertmanager else None,
                heartbeat_interval_seconds=interval,
            ),
            client,
        )


async def validate(
    plan: Plan,
    *,
    deployment: SyntheticDeployment | None = None,
    progress: Any = None,
    on_step: Any = None,
) -> ValidationReport:
    """Run ``plan``, against ``deployment`` (the built-in pipeline, already started) or the plan's sources."""
    async with _readers(plan, deployment) as (readers, client):
        injector = Injector(client, deployment)
        target = "synthetic" if deployment is not None else plan.sources.ark_obs
        kwargs = {"progress": progress} if progress is not None else {}
        return await run_plan(plan, readers, injector, target=target, on_step=on_step, **kwargs)


# each source's cheapest answer: the process is up and speaks HTTP
_PROBES: Final = {"ark_obs": ("ark-obs", "/healthz"), "prometheus": ("Prometheus", "/-/ready"),
                  "alertmanager": ("Alertmanager", "/-/ready")}  # fmt: skip


async def unreachable_sources(sources: Sources) -> list[str]:
    """Why each configured source does not answer (empty: all do), asked at once, ``sources.timeout`` each.

    Run before the plan, so that an unreachable ark-obs, Prometheus or Alertmanager is reported within one
    connect timeout, not after the first step's deadline.
    """

    async def ask(client: httpx.AsyncClient, field: str) -> str | None:
        name, path = _PROBES[field]
        url = getattr(sources, field)
        try:
            answer = await client.get(url.rstrip("/") + path)
        except httpx.HTTPError as exc:
            why = scrub(str(exc) or type(exc).__name__, url)
            return f"{name} at {redact_url(url)} is unreachable: {type(exc).__name__}: {why}"
        if answer.status_code >= 500:
            return f"{name} at {redact_url(url)} answered HTTP {answer.status_code} on {path}"
        return None

    fields = [f for f in _PROBES if getattr(sources, f)]
    async with httpx.AsyncClient(timeout=sources.timeout) as client:
        answers = await asyncio.gather(*(ask(client, f) for f in fields))
    return [a for a in answers if a is not None]


async def _run(plan: Plan, args: argparse.Namespace, live: bool) -> ValidationReport:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    done: list[StepResult] = []
    current = {"step": "", "observed": "", "elapsed": 0.0}

    def render() -> Table:
        table = Table(title="ark-obs validate", title_justify="left")
        for column in ("step", "state", "observed", "time"):
            table.add_column(column)
        for r in done:
            table.add_row(r.name, r.verdict.value, r.observed, f"{r.seconds:.1f} s")
        if current["step"]:
            table.add_row(str(current["step"]), "running", str(current["observed"]), f"{current['elapsed']:.1f} s")
        return table

    with Live(render(), console=Console(stderr=True, quiet=not live), transient=True) as display:

        def progress(step: str, observed: str, elapsed: float) -> None:
            current.update(step=step, observed=observed, elapsed=elapsed)
            display.update(render())

        def on_step(result: StepResult) -> None:
            done.append(result)
            current.update(step="", observed="", elapsed=0.0)
            display.update(render())

        if not args.synthetic:
            return await validate(plan, progress=progress, on_step=on_step)
        deployment = SyntheticDeployment(
            rate=args.rate, heartbeat_interval_seconds=args.heartbeat_interval, faults=tuple(args.fault)
        )
        async with deployment:
            return await validate(plan, deployment=deployment, progress=progress, on_step=on_step)


def main(args: argparse.Namespace) -> int:
    """The ``validate`` subcommand."""
    inconclusive = EXIT_STATUS[Verdict.INCONCLUSIVE]
    if args.fault and not args.synthetic:
        print("ark-obs validate: --fault breaks the built-in pipeline; it needs --synthetic", file=sys.stderr)
        return inconclusive
    try:
        base = load_plan(args.plan) if args.plan else default_plan(watch_seconds=args.watch, killed_agent=args.kill)
        plan = base.model_copy(update={"sources": _sources(base.sources, args)})
    except (PlanError, ValueError) as exc:
        print(f"ark-obs validate: {exc}", file=sys.stderr)
        return inconclusive
    if plan.synthetic and not args.synthetic:
        print(
            "ark-obs validate: the plan's synthetic injections need --synthetic; against a deployment, give "
            "--plan FILE saying how to inject (HTTP requests or commands)",
            file=sys.stderr,
        )
        return inconclusive
    if not args.synthetic:
        down = asyncio.run(unreachable_sources(plan.sources))
        if down:
            for line in down:
                print(f"ark-obs validate: {line}; nothing was tested (inconclusive)", file=sys.stderr)
            if args.json:
                print(
                    json.dumps({"verdict": Verdict.INCONCLUSIVE.value, "failed": [], "steps": [], "unreachable": down})
                )
            return inconclusive
    report = asyncio.run(_run(plan, args, live=not args.json and sys.stderr.isatty()))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_table(report)
    return report.exit_status
