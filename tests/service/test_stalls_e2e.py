"""The first minute of an incident, against a running ``ark-obs serve`` on its default stall threshold.

Agents in their own processes, as the README recommends for several hosts: the synthetic loop over
HTTP (``ark-obs synthetic --target URL --fault kenny-errors``) and agents exporting with the real
OpenTelemetry SDK. A Kenny fault shows as traces stalled at Kenny within 10 s, and the passes Kenny
failed are counted and listed as failed at Kenny.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.traces import DEFAULT_PIPELINE

ARK_OBS = Path(sys.executable).with_name("ark-obs")
PIPELINE = list(DEFAULT_PIPELINE)


def samples(url: str, name: str) -> dict[str, float]:
    """``name``'s samples on ``url``'s /metrics, by their labels' values joined with ','."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {",".join(s.labels.values()): s.value for f in parse_text(text) for s in f.samples if s.name == name}


def wait_for(what: str, check: Any, deadline: float) -> Any:
    """Poll ``check`` every 0.1 s until it returns something true, by the monotonic ``deadline``."""
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not by the deadline: {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_kenny_fault_over_http_stalls_at_kenny_within_10_s_and_fails_at_kenny(start: Any, tmp_path: Path) -> None:
    """``ark-obs synthetic --target URL --fault kenny-errors``: Kenny fails three passes (failed at Kenny,
    counted and listed), the Watchdog quarantines him and the next passes skip him: traces stalled at
    Kenny on /metrics and /traces?status=stalled within 10 s of the fault's start, nothing else stalled."""
    server = start()
    started = time.monotonic()
    loop = subprocess.run(
        [str(ARK_OBS), "synthetic", "--target", server.url, "--fault", "kenny-errors", "--rate", "20",
         "--duration", "3", "--latency-scale", "0.1", "--json"],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert loop.returncode in (0, 1), loop.stderr.decode()  # 1: the quarantines are reported as a criterion

    stalled = wait_for(
        "traces stalled at Kenny",
        lambda: samples(server.url, "ark_traces_stalled").get("Kenny", 0) or None,
        started + 10,
    )
    assert stalled >= 1
    gauge = samples(server.url, "ark_traces_stalled")
    assert set(gauge) == set(PIPELINE) and all(v == 0 for a, v in gauge.items() if a != "Kenny")
    listed = httpx.get(server.url + "/traces", params={"status": "stalled", "limit": 1000}, timeout=10).json()
    assert listed["status"] == "stalled" and listed["count"] >= 1
    assert {t["waiting_on"] for t in listed["traces"]} == {"Kenny"}
    assert all(t["waited_seconds"] >= 6 and t["status"] == "stalled" for t in listed["traces"])

    assert samples(server.url, "ark_traces_failed_total").get("Kenny", 0) >= 3
    failed = httpx.get(server.url + "/traces", params={"status": "failed"}, timeout=10).json()
    assert failed["count"] >= 3 and {t["failed_at"] for t in failed["traces"]} == {"Kenny"}
    one = httpx.get(server.url + f"/traces/{failed['traces'][0]['trace_id']}", timeout=10).json()
    assert (one["status"], one["complete"], one["failed_at"]) == ("failed", True, "Kenny")
    assert_latency_slos_from_spans(server.url)


def assert_latency_slos_from_spans(url: str) -> None:
    """Agents feed the service only spans: both latency SLOs have data, judged on the span-derived SLIs."""
    slos = {s["name"]: s for s in httpx.get(url + "/slos", timeout=10).json()["slos"]}
    assert slos["decision_latency_p95"]["status"] != "no_data" and slos["decision_latency_p95"]["total_events"] > 0
    assert slos["decision_latency_p95"]["source"] == "ark_trace_latency_ms"
    assert slos["hrm_eval_latency_p95"]["status"] != "no_data"
    assert slos["hrm_eval_latency_p95"]["source"] == 'ark_span_latency_ms{agent="HRM"}'
    met = samples(url, "ark_slo_met")
    assert "decision_latency_p95" in met and "hrm_eval_latency_p95" in met


def _providers(url: str) -> dict[str, TracerProvider]:
    providers = {}
    for agent in PIPELINE:
        provider = TracerProvider(resource=Resource.create({"service.name": agent}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=10)))
        providers[agent] = provider
    return providers


@pytest.mark.slow
def test_otel_agents_kenny_failing_then_silent_fail_and_stall_at_kenny(start: Any) -> None:
    """Five agents exporting with the OpenTelemetry SDK, no heartbeat: they read up, the latency SLOs have
    data; a pass where Kenny's span has status ERROR is complete and failed at Kenny; a pass Kenny never
    reports is stalled at Kenny within 10 s of its start."""
    server = start()
    providers = _providers(server.url)
    try:

        def run_pass(kenny: str) -> str:
            root = providers["Kyle"].get_tracer("kyle").start_span("ingest")
            ctx = trace.set_span_in_context(root)
            for agent in PIPELINE[1:]:
                if agent == "Kenny" and kenny == "silent":
                    continue
                with providers[agent].get_tracer(agent).start_as_current_span(agent, context=ctx) as span:
                    if agent == "Kenny":
                        span.set_status(Status(StatusCode.ERROR, "execution rejected"))
            root.end()
            return format(root.get_span_context().trace_id, "032x")

        failed_id = run_pass("error")
        started = time.monotonic()
        stalled_id = run_pass("silent")
    finally:
        for provider in providers.values():
            provider.shutdown()
    report = httpx.get(server.url + f"/traces/{failed_id}", timeout=10).json()
    assert (report["status"], report["complete"], report["failed_at"]) == ("failed", True, "Kenny")
    assert samples(server.url, "ark_agent_up") == dict.fromkeys(PIPELINE, 1.0)  # no heartbeat, spans only
    assert_latency_slos_from_spans(server.url)
    assert samples(server.url, "ark_traces_failed_total") == {"Kenny": 1.0}

    report = httpx.get(server.url + f"/traces/{stalled_id}", timeout=10).json()
    assert (report["status"], report["waiting_on"]) == ("in_flight", "Kenny")
    wait_for(
        "the pass stalled at Kenny",
        lambda: samples(server.url, "ark_traces_stalled").get("Kenny") == 1.0,
        started + 10,
    )
    listed = httpx.get(server.url + "/traces?status=stalled", timeout=10).json()["traces"]
    assert [(t["trace_id"], t["waiting_on"]) for t in listed] == [(stalled_id, "Kenny")]
    report = httpx.get(server.url + f"/traces/{stalled_id}", timeout=10).json()
    assert (report["status"], report["complete"]) == ("stalled", False) and report["waited_seconds"] >= 6
