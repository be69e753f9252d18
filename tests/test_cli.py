"""The ark-obs command line: check-config reports every problem at once; serve refuses unsafe settings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ark_obs import cli

FIVE_MISTAKES = """
slos:
  - id: latency
    kind: latency
    metric: ark_pass_latency_msx
    threshold: 400
    window: 5m
  - id: hrm
    kind: latency
    metric: hrm_eval_latency_ms
    threshold: 123
    window: 5m
  - id: drift
    kind: gauge
    metric: hrm_denials_total
    operator: "=="
    objective: 0
  - id: avail
    kind: availability
    objective: 1.5
    window: 5m
  - id: long
    kind: latency
    metric: ark_pass_latency_ms
    threshold: 400
    window: 2h
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ARK_OBS_* variable or .env file of the developer's leaks into a test."""
    for key in list(os.environ):
        if key.startswith("ARK_OBS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """Defaults pass: exit 0 and every effective setting is listed, the token masked."""
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out
    for name in ("ARK_OBS_HOST=127.0.0.1", "ARK_OBS_PORT=9871", "ARK_OBS_PIPELINE=Kyle,Joey,HRM,Kenny,Aletheia"):
        assert name in out


def test_check_config_masks_the_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The ingest token is never printed, neither when valid nor when rejected."""
    monkeypatch.setenv("ARK_OBS_INGEST_TOKEN", "a-very-secret-token-value")
    assert cli.main(["check-config"]) == 0
    assert "a-very-secret" not in capsys.readouterr().out
    monkeypatch.setenv("ARK_OBS_INGEST_TOKEN", "tiny")
    assert cli.main(["check-config"]) == 2
    captured = capsys.readouterr()
    assert "tiny" not in captured.err and "ARK_OBS_INGEST_TOKEN" in captured.err


def test_check_config_reports_every_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several bad variables: exit 2, each named with its reason, all in one run."""
    monkeypatch.setenv("ARK_OBS_PORT", "http")
    monkeypatch.setenv("ARK_OBS_TRACE_STORE", "mysql://db")
    monkeypatch.setenv("ARK_OBS_PIPELINE", "Kyle,,Kyle")
    monkeypatch.setenv("ARK_OBS_MAX_BODY_BYTES", "-1")
    assert cli.main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "4 configuration problem(s)" in err
    assert "ARK_OBS_PORT: Input should be a valid integer" in err and "'http'" in err
    assert "ARK_OBS_TRACE_STORE: must be 'memory' or a redis://" in err
    assert "ARK_OBS_PIPELINE: agent listed twice: Kyle" in err
    assert "ARK_OBS_MAX_BODY_BYTES:" in err


def test_check_config_reads_the_env_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--env-file names the dotenv file to check."""
    env = tmp_path / "prod.env"
    env.write_text("ARK_OBS_HOST=0.0.0.0\n")
    assert cli.main(["check-config", "--env-file", str(env)]) == 2
    err = capsys.readouterr().err
    assert "ARK_OBS_HOST: 0.0.0.0 is not a loopback address" in err
    assert "ARK_OBS_ALLOW_OPEN_INGEST=true" in err


def test_check_config_includes_slo_file_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SLO file with five mistakes gives five ARK_OBS_SLO_FILE lines with their field paths."""
    f = tmp_path / "slos.yaml"
    f.write_text(FIVE_MISTAKES)
    monkeypatch.setenv("ARK_OBS_SLO_FILE", str(f))
    monkeypatch.setenv("ARK_OBS_RETENTION_SECONDS", "3600")
    assert cli.main(["check-config"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "ARK_OBS_SLO_FILE" in line]
    assert len(lines) == 5, lines
    for path in ("slos[0].metric", "slos[1].threshold", "slos[2].metric", "slos[3].objective", "slos[4].window"):
        assert any(path in line for line in lines), path


def test_check_config_settings_and_slo_problems_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cross-field problem and SLO file errors are reported in the same run."""
    f = tmp_path / "slos.toml"
    f.write_text("[[slos]]\nid = 'x'\nkind = 'nope'\n")
    monkeypatch.setenv("ARK_OBS_SLO_FILE", str(f))
    monkeypatch.setenv("ARK_OBS_HOST", "0.0.0.0")
    assert cli.main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "ARK_OBS_HOST:" in err and "ARK_OBS_SLO_FILE:" in err and "slos[0].kind" in err


def test_check_config_warns_on_a_neighbours_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Port 9090 passes with a warning that a scrape config would reach Prometheus."""
    monkeypatch.setenv("ARK_OBS_PORT", "9090")
    assert cli.main(["check-config"]) == 0
    assert "Prometheus" in capsys.readouterr().err


def test_serve_refuses_open_ingest_on_a_public_address(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --host 0.0.0.0 without a token exits 2 before binding, saying how to fix it."""
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err
    for fix in ("ARK_OBS_INGEST_TOKEN", "ARK_OBS_ALLOW_OPEN_INGEST=true", "127.0.0.1"):
        assert fix in err


def test_serve_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    """--port is validated like ARK_OBS_PORT, and named as the flag the user typed."""
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "--port: " in capsys.readouterr().err


def test_a_subcommand_is_one_decorated_function(capsys: pytest.CaptureFixture[str]) -> None:
    """@command registers the parser, its arguments and its runner in one place."""

    @cli.command("hello-test", "Say hello.", cli.arg("--who", default="ARK"))
    def hello(args: argparse.Namespace) -> int:
        print("hello", args.who)
        return 3

    try:
        assert cli.main(["hello-test", "--who", "Kyle"]) == 3
        assert capsys.readouterr().out == "hello Kyle\n"
    finally:
        del cli.COMMANDS["hello-test"]


def test_python_m_ark_obs() -> None:
    """``python -m ark_obs`` is the same command line."""
    out = subprocess.run(
        [sys.executable, "-m", "ark_obs", "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert "serve" in out and "check-config" in out


def test_every_subcommand_is_registered() -> None:
    """serve, check-config, synthetic and canary-check are all reachable from the one parser."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "check-config", "synthetic", "canary-check"} <= set(sub.choices)
    assert parser.parse_args(["serve", "--synthetic"]).synthetic is True


def test_canary_check_against_an_unreachable_prometheus_is_inconclusive(capsys: pytest.CaptureFixture[str]) -> None:
    """No Prometheus to ask: exit 2 (inconclusive) with the reason, never a pass or a crash."""
    assert cli.main(["canary-check", "--prometheus", "http://127.0.0.1:1", "--json"]) == 2
    out = capsys.readouterr().out
    assert '"verdict": "inconclusive"' in out and "unreachable" in out


def test_check_config_probes_the_store_and_prometheus(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """check-config asks the trace store for PING and Prometheus for a query: unreachable ones are problems
    (exit 2, named by their variables), reachable ones pass, and --offline skips the probes."""
    from plugins.net import free_port

    nowhere = free_port()
    monkeypatch.setenv("ARK_OBS_TRACE_STORE", f"redis://:pr0be-s3cret@127.0.0.1:{nowhere}/0")
    monkeypatch.setenv("ARK_OBS_PROMETHEUS_URL", f"http://ops:pr0be-s3cret@127.0.0.1:{nowhere}")
    started = time.monotonic()
    assert cli.main(["check-config"]) == 2
    assert time.monotonic() - started < 2 * cli.PROBE_TIMEOUT_SECONDS + 2
    err = capsys.readouterr().err
    assert f"ARK_OBS_TRACE_STORE: redis://***@127.0.0.1:{nowhere}/0 does not answer PING" in err
    assert f"ARK_OBS_PROMETHEUS_URL: Prometheus http://***@127.0.0.1:{nowhere} does not answer" in err
    assert "pr0be-s3cret" not in err  # credentials never reach the report
    assert cli.main(["check-config", "--offline"]) == 0
    monkeypatch.delenv("ARK_OBS_PROMETHEUS_URL")
    monkeypatch.setenv("ARK_OBS_TRACE_STORE", redis_url)
    assert cli.main(["check-config"]) == 0, capsys.readouterr().err
