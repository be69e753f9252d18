"""``ark-obs validate`` against hostile plans: every malformed plan is one line naming the field and exit 2,
numbers are finite and bounded, and no output (table, --json, errors) shows a credential."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ark_obs.cli import main
from ark_obs.validate.plan import Plan, PlanError, load_plan

STEP = (
    '[[steps]]\nname = "a"\ndeadline = "{deadline}"\nexpect = {{ kind = "counter_increase", metric = "x", {bound} }}\n'
)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("x = { " * 3000 + "}" * 3000, "nested too deeply"),
        (STEP.format(deadline="1s", bound="at_least = nan"), "steps.0.expect.counter_increase.at_least"),
        (STEP.format(deadline="1s", bound="at_least = inf"), "steps.0.expect.counter_increase.at_least"),
        (STEP.format(deadline="1s", bound="at_most = -1"), "steps.0.expect.counter_increase.at_most"),
        (STEP.format(deadline="100000000000000000000000d", bound="at_least = 1"), "steps.0.deadline"),
        (STEP.format(deadline="8d", bound="at_least = 1"), "steps.0.deadline"),
        ("[sources]\ntimeout = nan\n" + STEP.format(deadline="1s", bound="at_least = 1"), "sources.timeout"),
        (
            "[[steps]]\nname = 'a'\nexpect = { kind = 'agent_silent', agent = 'K', within_heartbeats = inf }",
            "within_heartbeats",
        ),
        ("x = \xff", "utf-8"),
    ],
)
def test_malformed_plans_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, path: str
) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())  # \xff: not UTF-8
    code, out, err = _run(["--plan", str(plan)], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and path in err and "Traceback" not in err


_toml_fragments = st.sampled_from(
    [
        "[[steps]]\n",
        "[sources]\n",
        "name = 'a'\n",
        "expect = { kind = 'counter_increase', metric = 'x' }\n",
        "at_least = 1e400\n",
        "deadline = '5m'\n",
        "deadline = -1\n",
        "x = [[[[1]]]]\n",
        "inject = { http = 3 }\n",
        "expect = { kind = 'trace', trace_id = '', state = 'complete' }\n",
        "= =\n",
        "'\n",
        "[a.b.c]\n",
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(_toml_fragments, max_size=12).map("".join) | st.text(max_size=200))
def test_any_plan_file_loads_or_is_a_plan_error(tmp_path: Path, text: str) -> None:
    """Any file: a Plan or a one-line PlanError, never another exception."""
    plan = tmp_path / "plan.toml"
    plan.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(load_plan(plan), Plan)
    except PlanError as exc:
        assert "\n" not in str(exc)


def test_credentials_are_masked_in_the_table_json_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Source and injection URLs with passwords, and an Authorization header, never appear in any output."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        """
[sources]
ark_obs = "http://user:src-password-1@127.0.0.1:1"
timeout = 0.5

[[steps]]
name = "a"
deadline = "1s"

[steps.inject.http]
url = "http://svc:inject-password-2@127.0.0.1:1/x"
headers = { Authorization = "Bearer header-token-3" }

[steps.expect]
kind = "counter_increase"
metric = "x"
at_least = 1
"""
    )
    secrets = ("src-password-1", "inject-password-2", "header-token-3", "cli-password-4")
    for extra in ([], ["--json"], ["--prometheus", "http://p:cli-password-4@127.0.0.1:1"]):
        code, out, err = _run(["--plan", str(plan), *extra], capsys)
        assert code == 2  # the evidence is unreachable: inconclusive
        assert not [s for s in secrets if s in out + err], (extra, out, err)
        if extra == ["--json"]:
            report = json.loads(out)
            # the source does not answer: named (masked) before any step runs
            assert report["target"] == "http://***@127.0.0.1:1" and report["steps"] == []
            assert "***@127.0.0.1:1" in report["unreachable"][0]
    code, out, err = _run(["--plan", str(plan), "--alertmanager", "ftp://a:cli-password-4@x"], capsys)
    assert code == 2 and "cli-password-4" not in err and "alertmanager" in err
