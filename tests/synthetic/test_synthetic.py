"""The synthetic validation loop: criteria, faults, the HTTP target, the command and its exit codes."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic import (
    GRAVEYARD,
    PIPELINE,
    Fault,
    SyntheticConfig,
    SyntheticReport,
    build_parser,
    in_process_collector,
    run_loop,
    start_background,
)
from ark_obs.traces import TraceMonitor
from ark_obs.traces.heartbeats import HeartbeatMonitor
from plugins.net import free_port

FAST = 0.2  # heartbeat interval (s) of the runs below: faults show within a second


def sample(collector: MetricsCollector, name: str, **labels: str) -> float:
    """A sample's value in the collector's exposition, 0 when absent."""
    value = collector.registry.prometheus.get_sample_value(name, labels)
    return 0.0 if value is None else value


def make_collector(**trace_options: Any) -> MetricsCollector:
    """A collector with a trace monitor configured by ``trace_options`` and heartbeats every FAST s."""
    c = MetricsCollector()
    c.traces = TraceMonitor(c, "memory", background=False, **trace_options)
    c.heartbeats = HeartbeatMonitor(c, FAST)
    return c


def run(config: SyntheticConfig, collector: MetricsCollector | None = None) -> tuple[SyntheticReport, MetricsCollector]:
    collector = collector or in_process_collector(config)
    return asyncio.run(run_loop(config, collector)), collector


def criterion(report: SyntheticReport, prefix: str) -> Any:
    return next(c for c in report.criteria if c.name.startswith(prefix))


# --- a healthy run ---------------------------------------------------------------------------------------
def test_live_display_and_report_give_one_throughput_figure() -> None:
    """The live panel's last achieved rate is the report's (the issue: 50.00/s reported, 49.2/s live)."""
    from rich.console import Console

    from ark_obs.synthetic.cli import _progress_table

    config = SyntheticConfig(rate=50, duration_seconds=0.5, latency_scale=0.2, seed=2, heartbeat_interval_seconds=FAST)
    panels: list[str] = []

    def progress(state: Any) -> None:
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(_progress_table(config, state))
        panels.append(console.export_text())

    report = asyncio.run(run_loop(config, in_process_collector(config), on_progress=progress))
    line = next(x for x in panels[-1].splitlines() if "achieved rate" in x)
    assert f"{report.achieved_rate:,.2f}/s" in line, (line, report.achieved_rate)
    throughput = criterion(report, "throughput")
    assert throughput.detail.endswith(f"= {report.achieved_rate:.2f}/s")
    assert f"{report.passes} passes completed over the" in throughput.detail


def test_short_run_meets_every_criterion_and_records_through_the_decorators() -> None:
    """50 passes/s for 2 s meets the seed's criteria; metrics, traces and heartbeats come from the decorators."""
    config = SyntheticConfig(rate=50, duration_seconds=2, latency_scale=0.2, bad_share=0.2, seed=7,
                             heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert all(any(ch.isdigit() for ch in x.detail) for x in report.criteria), report.criteria  # what it measured
    assert [x.name for x in report.criteria] == [
        "throughput >= 50 passes/s",
        "zero unexpected errors",
        "p95 <= 400 ms",
        "every injected violation denied",
        "every trace complete",
        "state revisions contiguous",
    ]
    n = report.passes
    assert n == 100 and report.achieved_rate >= 50 and report.traces_complete == n
    # the pass decorator observed every end-to-end latency, with its trace id as exemplar
    assert sample(c, "ark_pass_latency_ms_count") == n
    exposition = openmetrics_latest(c.registry.prometheus).decode().splitlines()
    assert any(line.startswith("ark_pass_latency_ms_bucket") and '# {trace_id="' in line for line in exposition)
    # each agent's decorator: the seed-style latency and counter, labelled by agent and method
    assert sample(c, "kyle_signals_processed_total", agent="Kyle", method="_ingest") == n
    assert sample(c, "aletheia_process_latency_ms_count", agent="Aletheia", method="_audit") == n
    # HRM's decorator records the seed's HRM metrics
    assert sample(c, "hrm_eval_latency_ms_count") == n
    assert sample(c, "graveyard_validations_total") == n
    assert sample(c, "ark_agent_errors_total", agent="Kenny", method="_execute", exception="InjectedFault") == 0
    # the gauges each agent owns
    assert sample(c, "kyle_ingest_rate") > 0
    assert 0.65 <= sample(c, "joey_pattern_confidence_avg") <= 0.95
    assert sample(c, "kenny_exec_success_rate") == 100.0
    assert sample(c, "ark_ethics_drift") == 0
    # traces went through the trace monitor, heartbeats through the heartbeat monitor
    assert sample(c, "ark_traces_complete_total") == n
    c.heartbeats.sweep()
    states = {s.agent: s.up for s in c.heartbeats.status() or ()}
    assert states == dict.fromkeys(PIPELINE, True)


def test_injected_violations_are_denied_and_counted_exactly() -> None:
    """Each known-bad action breaks one Graveyard rule: hrm_denials_total grows by exactly the injected count."""
    config = SyntheticConfig(rate=200, duration_seconds=1, latency_scale=0, bad_share=0.3, seed=3,
                             heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert 30 <= report.injected_violations <= 100  # 30% of 200, with room for chance
    assert report.injected_denied == report.denials == report.injected_violations
    assert report.false_denials == 0
    by_rule = {r.rule_id: sample(c, "hrm_denials_total", rule_id=r.rule_id, agent="Kenny") for r in GRAVEYARD}
    assert sum(by_rule.values()) == report.injected_violations
    assert all(v > 0 for v in by_rule.values()), by_rule
    assert criterion(report, "every injected violation").passed


def test_kenny_errors_fault_quarantines_kenny_and_its_errors_are_expected() -> None:
    """Forced Kenny errors are counted by the decorator, quarantine Kenny, and do not fail the report."""
    config = SyntheticConfig(rate=50, duration_seconds=1, latency_scale=0, bad_share=0, seed=1,
                             faults=(Fault.parse("kenny-errors"),), heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert report.unexpected_errors == 0 and report.expected_errors == 3  # 3 in a row, then 5 s in quarantine
    assert report.quarantines == {"Kenny": 1}
    assert sample(c, "watchdog_quarantines_total", agent="Kenny", reason="exec_errors") == 1
    assert sample(c, "ark_agent_errors_total", agent="Kenny", method="_execute", exception="InjectedFault") == 3
    assert sample(c, "kenny_exec_success_rate") == 0.0
    assert criterion(report, "Watchdog quarantined Kenny").passed
    # quarantined Kenny is skipped: those traces stop short of him, as the fault explains, and the line says so
    assert report.traces_incomplete_expected == report.passes - 3
    assert report.traces_incomplete_unexpected == 0
    traces = criterion(report, "every trace complete")
    assert traces.passed and traces.name == "every trace complete but those the injected fault breaks"
    assert traces.detail.startswith(f"3/{report.passes} traces checked complete; {report.passes - 3} incomplete")
    assert "incomplete as expected: missing Kenny, as kenny-errors injects" in traces.detail
    # the availability SLO sees the quarantine (5 s of downtime in a 5 min window)
    assert c.check_slos()["violations"] == ["availability"]


def test_silenced_agent_is_reported_down_within_two_intervals() -> None:
    """silence:HRM stops HRM's heartbeats; the monitor reports it down within 2 intervals, once."""
    config = SyntheticConfig(rate=20, duration_seconds=1.2, latency_scale=0, seed=1,
                             faults=(Fault.parse("silence:HRM"),), heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)

    assert report.passed, [c for c in report.criteria if not c.passed]
    (silence,) = report.silence
    assert silence.agent == "HRM" and silence.was_up_before
    assert silence.reported_down_after_seconds is not None
    assert silence.reported_down_after_seconds <= 2 * FAST
    assert criterion(report, "HRM reported silent").passed
    assert sample(c, "agent_heartbeat_failures_total", agent="HRM") == 1
    assert {s.agent for s in c.heartbeats.status() or () if not s.up} == {"HRM"}


def test_dropped_spans_make_exactly_the_injected_traces_incomplete() -> None:
    """drop:Kenny loses Kenny's span on a share of passes: only those traces expire incomplete, missing Kenny."""
    config = SyntheticConfig(rate=100, duration_seconds=1, latency_scale=0, seed=5, drop_share=0.3,
                             faults=(Fault.parse("drop:Kenny"),), heartbeat_interval_seconds=FAST)  # fmt: skip
    c = make_collector(ttl_seconds=0.2)
    report, _ = run(config, c)

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert 10 <= report.traces_incomplete_expected <= 60
    assert report.traces_complete + report.traces_incomplete_expected == report.passes
    deadline = time.monotonic() + 10  # every trace is finalized once its 0.2 s TTL has passed
    while (sample(c, "ark_traces_incomplete_total", missing_agent="Kenny") or 0) < report.traces_incomplete_expected:
        assert time.monotonic() < deadline, "the dropped traces never expired"
        time.sleep(0.02)
        c.traces.sweep()
    assert sample(c, "ark_traces_incomplete_total", missing_agent="Kenny") == report.traces_incomplete_expected
    assert sample(c, "ark_traces_complete_total") == report.traces_complete


def test_unexpected_incomplete_traces_fail_the_report() -> None:
    """Traces missing an agent no fault explains fail 'every trace complete', naming the agent."""
    config = SyntheticConfig(rate=50, duration_seconds=0.5, latency_scale=0, heartbeat_interval_seconds=FAST)
    # a pipeline with an agent the loop never runs: every trace misses it
    c = make_collector(pipeline=(*PIPELINE, "Auditor2"))
    report, _ = run(config, c)

    assert not report.passed
    assert report.failed == ("every trace complete",)
    assert report.unexpected_missing == {"Auditor2": report.passes}


def test_mismatched_heartbeat_interval_is_refused() -> None:
    """The loop refuses a collector whose heartbeat monitor expects another interval."""
    with pytest.raises(ValueError, match="wrong clock"):
        run(SyntheticConfig(duration_seconds=0.1, heartbeat_interval_seconds=FAST), MetricsCollector())


def test_configuration_is_validated() -> None:
    """Bad rates, shares, faults and targets raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="rate"):
        SyntheticConfig(rate=0)
    with pytest.raises(ValueError, match="bad_share"):
        SyntheticConfig(bad_share=1.5)
    with pytest.raises(ValueError, match="unknown agent 'Nobody'"):
        Fault.parse("silence:Nobody")
    with pytest.raises(ValueError, match="kenny-errors, silence:AGENT or drop:AGENT"):
        Fault.parse("explode")
    with pytest.raises(ValueError, match="target"):
        SyntheticConfig(target="ftp://x")


# --- the HTTP target ---------------------------------------------------------------------------------------
@contextmanager
def ark_obs_serve(workdir: Path, **env: str) -> Iterator[str]:
    """A real ``ark-obs serve`` process on a free loopback port (settings from ``env``); yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}
    log = workdir / "ark-obs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ark_obs", "serve", "--port", str(port)],
            env={**clean, **env},
            cwd=workdir,  # no stray .env
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"ark-obs exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"ark-obs did not start: {log.read_text()}"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The service's /metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(url + "/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_http_target_feeds_a_running_service(tmp_path: Path) -> None:
    """Against a real ark-obs serve: spans and heartbeats arrive over HTTP; the agents' metrics stay in the loop."""
    interval = 0.5  # over HTTP, with the server on the same 2 cores: room for a slow request
    with ark_obs_serve(
        tmp_path, ARK_OBS_HEARTBEAT_INTERVAL_SECONDS=str(interval), ARK_OBS_TRACE_TTL_SECONDS="1"
    ) as url:
        config = SyntheticConfig(rate=40, duration_seconds=1.5, latency_scale=0.1, seed=2, target=url,
                                 faults=(Fault.parse("silence:Joey"), Fault.parse("drop:Kenny")),
                                 heartbeat_interval_seconds=interval)  # fmt: skip
        local = in_process_collector(config)
        report, _ = run(config, local)
        incomplete = ("ark_traces_incomplete_total", (("missing_agent", "Kenny"),))
        deadline = time.monotonic() + 5  # dropped traces expire on the service one TTL after their last span
        while (served := scrape(url)).get(incomplete) != report.traces_incomplete_expected:
            assert time.monotonic() < deadline, (served.get(incomplete), report.traces_incomplete_expected)
            time.sleep(0.2)

    assert report.passed, [c for c in report.criteria if not c.passed]
    assert report.target == url
    assert report.traces_checked == report.passes == 60, (report.traces_checked, report.passes)
    assert report.traces_incomplete_expected > 0 and report.traces_incomplete_unexpected == 0
    assert report.silence[0].within_limit
    # the service judged the traces and the heartbeats ...
    assert served[("ark_traces_complete_total", ())] == report.traces_complete
    assert served[("agent_heartbeat_failures_total", (("agent", "Joey"),))] == 1
    assert served[("ark_agent_up", (("agent", "Joey"),))] == 0
    # ... while the agents' own metrics stay in the loop's process
    assert sample(local, "hrm_eval_latency_ms_count") == report.passes
    assert served[("hrm_eval_latency_ms_count", ())] == 0
    assert not any(name.startswith("kyle_process_latency_ms") for name, _ in served)


def test_unreachable_http_target_fails_on_unexpected_errors() -> None:
    """Spans that cannot be delivered are unexpected errors, and the traces cannot be checked."""
    config = SyntheticConfig(rate=20, duration_seconds=0.3, latency_scale=0, target=f"http://127.0.0.1:{free_port()}",
                             heartbeat_interval_seconds=FAST)  # fmt: skip
    report, _ = run(config)
    assert not report.passed
    assert "zero unexpected errors" in report.failed
    assert any("POST /spans" in k for k in report.unexpected_error_kinds)


# --- in the background -------------------------------------------------------------------------------------
def test_start_background_runs_until_stopped() -> None:
    """start_background runs an endless loop in a thread; stop() ends it and returns its report."""
    config = SyntheticConfig(rate=50, duration_seconds=None, latency_scale=0, heartbeat_interval_seconds=FAST)
    c = in_process_collector(config)
    handle = start_background(c, config)
    deadline = time.monotonic() + 5
    while handle.first_trace_id is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first = str(handle.first_trace_id)
    while not c.validate_trace_continuity(first)["complete"]:  # the loop keeps going: the first pass ends
        assert time.monotonic() < deadline, "the first pass never completed"
        time.sleep(0.01)
    report = handle.stop()
    assert not handle.running
    assert report is not None and report.passes > 0 and report.unexpected_errors == 0
    assert c.validate_trace_continuity(str(handle.first_trace_id))["complete"]


# --- the command -------------------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ark-obs")
    build_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["synthetic", *argv])


def test_command_json_report_parses_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON document with every criterion; a passing run exits 0."""
    args = parse("--rate", "40", "--duration", "1", "--latency-scale", "0", "--interval", str(FAST),
                 "--bad-share", "0.25", "--fault", "kenny-errors", "--json")  # fmt: skip
    assert args.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True and out["failed"] == []
    assert out["passes"] == 40 and out["faults"] == ["kenny-errors"]
    assert {c["name"] for c in out["criteria"]} >= {"zero unexpected errors", "Watchdog quarantined Kenny"}


def test_command_exits_one_naming_the_failed_criterion(capsys: pytest.CaptureFixture[str]) -> None:
    """A failing run prints the table, exits 1 and names the failed criteria on stderr."""
    args = parse("--rate", "20", "--duration", "0.3", "--latency-scale", "0", "--interval", str(FAST),
                 "--quiet", "--target", f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert args.run(args) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "zero unexpected errors" in captured.out
    assert "FAILED: " in captured.err and "zero unexpected errors" in captured.err


def test_command_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown fault agents and out-of-range shares are usage errors (exit status 2)."""
    for argv in (("--fault", "silence:Nobody"), ("--bad-share", "2"), ("--latency", "Bob=3"), ("--rate", "-1")):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 2
    assert "unknown agent 'Nobody'" in capsys.readouterr().err


def test_command_latency_option_sets_one_agent() -> None:
    """--latency AGENT=MEDIAN:SIGMA replaces that agent's distribution and keeps the others."""
    from ark_obs.synthetic import DEFAULT_LATENCIES, LatencyModel, config_from_args

    config = config_from_args(parse("--latency", "HRM=80:0.5", "--duration", "0"))
    assert config.latency("HRM") == LatencyModel(80.0, 0.5)
    assert config.latency("Kyle") == DEFAULT_LATENCIES["Kyle"]
    assert config.duration_seconds is None  # 0 = until stopped


def test_state_writes_are_contiguous_without_faults() -> None:
    """Kenny writes position:SYMBOL with each key's next revision: no anomaly, the criterion holds."""
    config = SyntheticConfig(rate=100, duration_seconds=1, latency_scale=0, bad_share=0, seed=4,
                             heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)
    assert criterion(report, "state revisions contiguous").passed
    assert c.get_histogram_stats("state_write_latency_ms", {"operation": "write", "agent": "Kenny"}).count == 100
    assert c.revisions.recent() == []


def test_skip_revision_fault_is_detected_as_gaps() -> None:
    """--fault skip-revision: every 10th write skips a revision; each is counted as a gap and listed by key."""
    config = SyntheticConfig(rate=100, duration_seconds=1, latency_scale=0, bad_share=0, seed=4,
                             faults=(Fault.parse("skip-revision"),), heartbeat_interval_seconds=FAST)  # fmt: skip
    report, c = run(config)
    assert report.passed, [c for c in report.criteria if not c.passed]
    assert criterion(report, "revision gaps detected").passed
    assert sample(c, "ark_state_revision_anomalies_total", agent="Kenny", kind="gap") == 10
    assert {a.kind for a in c.revisions.recent()} == {"gap"}
    assert all(a.key.startswith("position:") and a.revision == a.previous + 2 for a in c.revisions.recent())
