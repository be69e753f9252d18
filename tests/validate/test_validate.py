"""ark-obs validate: the default plan passes against the built-in pipeline and fails naming the broken step."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ark_obs.cli import main
from ark_obs.validate import (
    EvidenceUnavailable,
    InjectionFailed,
    Injector,
    Plan,
    PlanError,
    Readers,
    SyntheticDeployment,
    ValidationReport,
    Verdict,
    default_plan,
    load_plan,
    run_plan,
    validate,
)
from ark_obs.validate.builtin import BASE_URL
from ark_obs.validate.evidence import ArkObsReader
from ark_obs.validate.plan import CommandInject, HttpInject, SyntheticInject

HEARTBEAT_S = 0.5  # generous: the 2-heartbeat limit must hold on a loaded machine
DEFAULT_STEPS = [
    "every SLO met",
    "state revisions contiguous",
    "known-bad actions denied",
    "Kenny's errors quarantine Kenny",
    "killed Joey alerted within 2 heartbeats",
]


def fast_plan(watch: float = 1.0) -> Plan:
    """The default plan with deadlines a test can wait for (the checks are the default ones)."""
    plan = default_plan(watch_seconds=watch)
    deadlines = {"known-bad actions denied": 3.0, "Kenny's errors quarantine Kenny": 3.0,
                 "state revisions contiguous": 3.0}  # fmt: skip
    steps = tuple(s.model_copy(update={"deadline": deadlines.get(s.name, s.deadline)}) for s in plan.steps)
    return plan.model_copy(update={"steps": steps})


async def run_synthetic(plan: Plan, faults: tuple[str, ...] = (), heartbeat: float = HEARTBEAT_S) -> ValidationReport:
    deployment = SyntheticDeployment(rate=40, heartbeat_interval_seconds=heartbeat, latency_scale=0.1,
                                     faults=faults, seed=1)  # fmt: skip
    async with deployment:
        return await validate(plan, deployment=deployment)


async def test_default_plan_passes_against_the_synthetic_pipeline() -> None:
    """Every step of the seed's checklist passes, each with what it observed and where it read it."""
    report = await run_synthetic(fast_plan())
    assert [s.name for s in report.steps] == DEFAULT_STEPS
    assert report.verdict is Verdict.PASS, report.steps
    assert report.exit_status == 0
    by_name = {s.name: s for s in report.steps}
    assert by_name["known-bad actions denied"].observed == "+5"
    assert by_name["Kenny's errors quarantine Kenny"].observed == "+1"
    assert by_name["state revisions contiguous"].observed == "+0"
    assert by_name["every SLO met"].seconds >= 1.0
    silent = by_name["killed Joey alerted within 2 heartbeats"]
    assert silent.observed.startswith("down after ") and float(silent.observed.split()[2]) <= 2 * HEARTBEAT_S
    assert all(s.evidence.startswith(BASE_URL) for s in report.steps)


@pytest.mark.parametrize(
    ("fault", "step"),
    [
        ("hrm-allows", "known-bad actions denied"),
        ("watchdog-off", "Kenny's errors quarantine Kenny"),
        ("kill-unnoticed", "killed Joey alerted within 2 heartbeats"),
        ("skip-revision", "state revisions contiguous"),
    ],
)
async def test_a_broken_safeguard_fails_exactly_its_step(fault: str, step: str) -> None:
    """Each fault breaks one safeguard: the run fails (exit 1) naming that step, and only that one."""
    # 1 s heartbeats: a fault that keeps an agent failing loads the loop, and the other steps' 2-heartbeat
    # deadline must not be decided by scheduling jitter on a busy 2-core machine
    report = await run_synthetic(fast_plan(watch=0.5), (fault,), heartbeat=1.0)
    assert report.verdict is Verdict.FAIL
    assert report.failed == [step], report.steps
    assert report.exit_status == 1


async def test_slo_violation_fails_the_watch() -> None:
    """A watch that starts during Kenny's quarantine (availability violated) fails the SLO step, naming the SLO."""
    plan = Plan.model_validate(
        {"steps": [
            {"name": "quarantine", "inject": {"synthetic": "kenny-errors"},
             "expect": {"kind": "counter_increase", "metric": "watchdog_quarantines_total", "at_least": 1},
             "deadline": 3},
            {"name": "SLOs", "expect": {"kind": "slos_met", "duration": 1, "poll": 0.2}, "deadline": 3},
        ]}
    )  # fmt: skip
    report = await run_synthetic(plan)
    assert report.failed == ["SLOs"]
    assert "availability" in report.steps[1].observed


async def test_trace_expectation_reads_the_injected_trace() -> None:
    """bad-actions yields ${trace_id}; the trace expectation finds that trace complete at GET /traces/{id}."""
    plan = Plan.model_validate(
        {"steps": [{"name": "denied action traced", "inject": {"synthetic": "bad-actions", "count": 1},
                    "expect": {"kind": "trace", "trace_id": "${trace_id}", "state": "complete"}, "deadline": 3}]}
    )  # fmt: skip
    report = await run_synthetic(plan)
    (step,) = report.steps
    assert step.verdict is Verdict.PASS, step
    assert "${" not in step.expected and step.expected.startswith("trace ")


async def test_unreachable_evidence_is_inconclusive() -> None:
    """ark-obs not answering makes every step inconclusive (exit 2), never failed or passed."""
    plan = Plan.model_validate(
        {"sources": {"ark_obs": "http://127.0.0.1:9", "timeout": 0.5},
         "steps": [{"name": "denials", "expect": {"kind": "counter_increase", "metric": "hrm_denials_total",
                                                  "at_most": 0}, "deadline": 1}]}
    )  # fmt: skip
    report = await validate(plan)
    assert report.verdict is Verdict.INCONCLUSIVE and report.exit_status == 2
    assert "127.0.0.1:9" in report.steps[0].evidence


async def test_http_and_command_injections_yield_variables() -> None:
    """An HTTP injection's JSON fields and a command's KEY=VALUE lines become variables; failures raise."""
    deployment = SyntheticDeployment(rate=1, heartbeat_interval_seconds=HEARTBEAT_S)
    async with deployment, deployment.client() as client:
        injector = Injector(client)
        beat = HttpInject.model_validate({"http": {"method": "POST", "url": f"{BASE_URL}/heartbeats/Probe"}})
        assert (await injector.run(beat))["agent"] == "Probe"
        assert await ArkObsReader(client, BASE_URL).agent_up("Probe") is True  # the request reached ark-obs
        echo = CommandInject(command=(sys.executable, "-c", "print('noise'); print('trace_id=abc123')"))
        assert await injector.run(echo) == {"trace_id": "abc123"}
        with pytest.raises(InjectionFailed, match="exited 3"):
            await injector.run(CommandInject(command=(sys.executable, "-c", "raise SystemExit(3)")))
        with pytest.raises(InjectionFailed, match="HTTP 422"):
            await injector.run(HttpInject.model_validate({"http": {"url": f"{BASE_URL}/heartbeats/1bad"}}))
        with pytest.raises(InjectionFailed, match="--synthetic"):
            await injector.run(SyntheticInject(synthetic="kenny-errors"))


async def test_failed_injection_makes_its_step_inconclusive() -> None:
    """A command that fails means nothing was tested: inconclusive, with the command's complaint as evidence."""
    deployment = SyntheticDeployment(rate=5, heartbeat_interval_seconds=HEARTBEAT_S)
    plan = Plan.model_validate(
        {"steps": [{"name": "kill", "inject": {"command": [sys.executable, "-c", "raise SystemExit('no such pod')"]},
                    "expect": {"kind": "agent_silent", "agent": "Joey"}, "deadline": 2}]}
    )  # fmt: skip
    async with deployment, deployment.client() as client:
        readers = Readers(ArkObsReader(client, BASE_URL), heartbeat_interval_seconds=HEARTBEAT_S)
        report = await run_plan(plan, readers, Injector(client), target="test")
    assert report.verdict is Verdict.INCONCLUSIVE
    assert "exited 1" in report.steps[0].evidence


def test_plan_file_errors_are_listed_with_their_location(tmp_path: Path) -> None:
    """A plan with an unknown kind, both bounds and a Prometheus step without Prometheus names each problem."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        """
[[steps]]
name = "a"
expect = { kind = "counter_increase", metric = "hrm_denials_total", at_least = 1, at_most = 2 }

[[steps]]
name = "b"
expect = { kind = "telepathy" }
"""
    )
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    message = str(info.value)
    assert "steps.0.expect.counter_increase" in message and "exactly one of at_least" in message
    assert "steps.1.expect" in message and "telepathy" in message
    plan.write_text('[[steps]]\nname = "p"\nexpect = { kind = "promql", query = "up" }\n')
    with pytest.raises(PlanError, match="set \\[sources\\] prometheus"):
        load_plan(plan)


def test_plan_file_runs_with_durations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TOML plan (text durations, a synthetic injection) runs with --synthetic; JSON names the failed step."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        """
[[steps]]
name = "bad actions denied"
deadline = "2s"
inject = { synthetic = "bad-actions", count = 3 }
expect = { kind = "counter_increase", metric = "hrm_denials_total", at_least = 3 }

[[steps]]
name = "revisions"
deadline = "1500ms"
expect = { kind = "counter_increase", metric = "ark_state_revision_anomalies_total", at_most = 0 }
"""
    )
    args = ["validate", "--synthetic", "--plan", str(plan), "--rate", "40", "--heartbeat-interval", "500ms", "--json"]
    assert main(args) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "pass" and [s["name"] for s in out["steps"]] == ["bad actions denied", "revisions"]
    assert main([*args, "--fault", "skip-revision"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "fail" and out["failed"] == ["revisions"]


def test_command_table_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    """The table names each step and the verdict; synthetic steps without --synthetic and --fault alone exit 2."""
    assert main(["validate", "--synthetic", "--watch", "1s", "--heartbeat-interval", "500ms", "--rate", "40"]) == 0
    out = capsys.readouterr().out
    assert all(name.split()[0] in out for name in DEFAULT_STEPS) and out.rstrip().endswith("pass")
    assert main(["validate"]) == 2
    assert "--synthetic" in capsys.readouterr().err
    assert main(["validate", "--fault", "hrm-allows"]) == 2
    assert "needs --synthetic" in capsys.readouterr().err


async def test_readers_sum_counter_series_by_label_subset() -> None:
    """The ark-obs reader sums the series whose labels include the asked ones, and 0 before any exists."""
    deployment = SyntheticDeployment(rate=1, heartbeat_interval_seconds=HEARTBEAT_S)
    async with deployment, deployment.client() as client:
        reader = ArkObsReader(client, BASE_URL)
        assert await reader.counter("watchdog_quarantines_total", {"agent": "Kenny"}) == 0
        q = deployment.collector.metric("watchdog_quarantines_total")
        q.labels("Kenny", "a").inc()
        q.labels("Kenny", "b").inc(2)
        q.labels("Joey", "a").inc()
        assert await reader.counter("watchdog_quarantines_total", {"agent": "Kenny"}) == 3
        assert await reader.counter("watchdog_quarantines", {}) == 4
        assert await reader.agent_up("Kyle") is True and await reader.agent_up("Nobody") is None
        assert await reader.heartbeat_interval() == HEARTBEAT_S
        async with httpx.AsyncClient(timeout=0.2) as other:
            with pytest.raises(EvidenceUnavailable, match=r"127\.0\.0\.1:9/metrics"):
                await ArkObsReader(other, "http://127.0.0.1:9").counter("hrm_denials_total", {})


ROLLOUT_HOOKS = Path(__file__).resolve().parents[2] / "deploy/rollouts/validate"


def test_shipped_plan_loads_and_covers_the_seed_checklist() -> None:
    """deploy/rollouts/validate/post-deploy.toml is a valid plan with a 30 min SLO watch and every checklist item."""
    plan = load_plan(ROLLOUT_HOOKS / "post-deploy.toml")
    kinds = [s.expect.kind for s in plan.steps]
    assert {"slos_met", "counter_increase", "agent_silent", "alert_firing", "alert_received", "promql"} <= set(kinds)
    (watch,) = [s.expect for s in plan.steps if s.expect.kind == "slos_met"]
    assert watch.duration == 1800.0  # type: ignore[union-attr]
    assert not plan.synthetic and plan.sources.prometheus and plan.sources.alertmanager


def test_rollout_hooks_run_validate_with_the_plan() -> None:
    """The Argo job and the Flagger webhook run `ark-obs validate --plan ...` (parsed by the real CLI parser);
    the Argo Rollout's last canary step is that analysis, so a failed validation aborts the rollout."""
    import shlex

    import yaml

    from ark_obs.cli import build_parser

    argo = list(yaml.safe_load_all((ROLLOUT_HOOKS / "argo-post-promotion.yaml").read_text()))
    template = next(d for d in argo if d["kind"] == "AnalysisTemplate")
    (metric,) = template["spec"]["metrics"]
    assert metric["count"] == 1 and metric["failureLimit"] == 0
    (container,) = metric["provider"]["job"]["spec"]["template"]["spec"]["containers"]
    args_default = {a["name"]: a["value"] for a in template["spec"]["args"]}
    argv = [c.replace("{{args.plan}}", args_default["plan"]) for c in container["command"]]
    assert argv[0] == "ark-obs"
    parsed = build_parser().parse_args(argv[1:])
    assert parsed.command == "validate" and str(parsed.plan) == "/etc/ark-obs/post-deploy.toml"
    rollout = next(d for d in argo if d["kind"] == "Rollout")
    last = rollout["spec"]["strategy"]["canary"]["steps"][-1]
    assert last["analysis"]["templates"][0]["templateName"] == template["metadata"]["name"]

    (flagger,) = yaml.safe_load_all((ROLLOUT_HOOKS / "flagger-post-rollout.yaml").read_text())
    (hook,) = flagger["spec"]["analysis"]["webhooks"]
    assert hook["type"] == "post-rollout"
    argv = shlex.split(hook["metadata"]["cmd"])
    assert argv[0] == "ark-obs" and build_parser().parse_args(argv[1:]).command == "validate"
