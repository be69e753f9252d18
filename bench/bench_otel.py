"""OpenTelemetry interop: OTLP ingest vs ark-obs' own JSON, decorator + OTel span vs the SDK's span alone,
and the W3C traceparent parser/formatter vs opentelemetry-api's TraceContext propagator.

- Ingest: a real ``ark-obs serve``; the same spans (complete 5-span traces, fresh ids every round) posted
  as OTLP protobuf to ``/v1/traces`` and as JSON to ``/spans``, 1,000 spans a request, on one keep-alive
  connection, the two contenders alternating round by round; best round kept. Target: OTLP time per span
  <= 1.0x the JSON time (OTLP spans/s >= 1.0x).
- Decorator: ``instrument_agent_method(otel_span=True)`` (latency histogram, counter, trace id, OTel span)
  vs the SDK's ``start_as_current_span`` around the same method; target <= 1.5x the SDK's overhead.
- Lookup: what asking for the active OTel span adds to an observation made with no trace id bound.
- Propagation: ``parse_traceparent`` vs ``TraceContextTextMapPropagator().extract`` (+ reading the span
  context), ``current_traceparent`` vs the propagator's ``inject``, inside one active span.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.context import current_traceparent, parse_traceparent
from ark_obs.instrumentation import instrument_agent_method
from ark_obs.metrics import MetricsCollector
from bench._timing import interleaved_ns, row, sized
from bench.bench_service import PIPELINE, _start_server

SPANS_PER_REQUEST = 1_000
REQUESTS_PER_ROUND = sized(10, 2)
ROUNDS = sized(6, 1)
INGEST_TARGET = 1.0
DECORATOR_TARGET = 1.5
HEADER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- ingest -----------------------------------------------------------------------------------------------
def _spans(prefix: int) -> list[tuple[str, str, int, int]]:
    """200 complete traces: (trace id, agent, start ns, end ns), agents in pipeline order."""
    base = time.time_ns()
    out = []
    for t in range(SPANS_PER_REQUEST // len(PIPELINE)):
        tid = f"{prefix:016x}{t + 1:016x}"
        for i, agent in enumerate(PIPELINE):
            start = base + i * 2_000_000
            out.append((tid, agent, start, start + 1_500_000))
    return out


def _otlp_body(spans: list[tuple[str, str, int, int]]) -> bytes:
    """One ResourceSpans per agent (service.name), as an SDK or a collector batches them."""
    request = ExportTraceServiceRequest()
    by_agent: dict[str, Any] = {}
    for tid, agent, start, end in spans:
        scope = by_agent.get(agent)
        if scope is None:
            rs = request.resource_spans.add()
            attr = rs.resource.attributes.add()
            attr.key, attr.value.string_value = "service.name", agent
            scope = by_agent[agent] = rs.scope_spans.add()
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = bytes.fromhex(tid), b"\x01" * 8, "work"
        span.start_time_unix_nano, span.end_time_unix_nano = start, end
    return bytes(request.SerializeToString())


def _json_body(spans: list[tuple[str, str, int, int]]) -> bytes:
    items = [
        f'{{"trace_id":"{tid}","agent":"{agent}","at":{start / 1e9!r},"duration_ms":{(end - start) / 1e6!r}}}'
        for tid, agent, start, end in spans
    ]
    return ('{"spans":[' + ",".join(items) + "]}").encode()


def _ingest() -> list[dict[str, Any]]:
    bodies: dict[str, list[list[bytes]]] = {"otlp": [], "json": []}
    prefix = 0
    for _ in range(ROUNDS):
        for kind in bodies:
            batch = []
            for _ in range(REQUESTS_PER_ROUND):
                prefix += 1
                spans = _spans(prefix)
                batch.append(_otlp_body(spans) if kind == "otlp" else _json_body(spans))
            bodies[kind].append(batch)
    routes = {
        "otlp": ("/v1/traces", "application/x-protobuf"),
        "json": ("/spans", "application/json"),
    }
    best = {"otlp": float("inf"), "json": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, _ = _start_server(Path(tmp))
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                for r in range(ROUNDS):
                    for kind, (path, content_type) in routes.items():
                        started = time.perf_counter()
                        for body in bodies[kind][r]:
                            resp = client.post(path, content=body, headers={"Content-Type": content_type})
                            assert resp.status_code == 200, resp.text
                        best[kind] = min(best[kind], time.perf_counter() - started)
                # both contenders' traces all completed: the same work was done on each side
                expected = ROUNDS * REQUESTS_PER_ROUND * (SPANS_PER_REQUEST // len(PIPELINE)) * 2
                text = client.get("/metrics", headers={"Accept-Encoding": "identity"}).text
                done = next(
                    s.value for f in parse_text(text) for s in f.samples if s.name == "ark_traces_complete_total"
                )
                assert done == expected, (done, expected)
        finally:
            proc.terminate()
            proc.wait(20)
    spans = SPANS_PER_REQUEST * REQUESTS_PER_ROUND
    json_us, otlp_us = best["json"] / spans * 1e6, best["otlp"] / spans * 1e6
    return [
        row("ingest: POST /spans JSON", json_us, "µs/span", note=f"{spans / best['json']:,.0f} spans/s"),
        row(
            "ingest: POST /v1/traces OTLP protobuf",
            otlp_us,
            "µs/span",
            json_us,
            INGEST_TARGET,
            note=f"{spans / best['otlp']:,.0f} spans/s; ratio is time per span (<= 1 means >= 1x spans/s)",
        ),
    ]


# --- decorator ----------------------------------------------------------------------------------------
def _decorator() -> list[dict[str, Any]]:
    tracer = trace.get_tracer("bench")
    collector = MetricsCollector(ticker=False)

    class Joey:
        def bare(self, signal: int) -> int:
            return signal

        def sdk(self, signal: int) -> int:
            with tracer.start_as_current_span("Joey.sdk"):
                return signal

        @instrument_agent_method(latency_metric="bench_otel_ms", collector=collector, otel_span=True)
        def ours(self, signal: int) -> int:
            return signal

    joey = Joey()
    fns = {"bare": lambda: joey.bare(1), "sdk": lambda: joey.sdk(1), "ours": lambda: joey.ours(1)}
    t = interleaved_ns(fns, number=5_000, rounds=15)
    sdk = t["sdk"] - t["bare"]
    return [
        row("decorator: bare method call", t["bare"], "ns", note="per call, not overhead"),
        row("decorator: SDK start_as_current_span alone", sdk, "ns", note="overhead"),
        row(
            "decorator: instrument_agent_method(otel_span=True)",
            t["ours"] - t["bare"],
            "ns",
            sdk,
            DECORATOR_TARGET,
            note="metrics + trace id + OTel span",
        ),
    ]


# --- propagation -----------------------------------------------------------------------------------------
def _propagation() -> list[dict[str, Any]]:
    propagator = TraceContextTextMapPropagator()
    carrier = {"traceparent": HEADER}
    tracer = trace.get_tracer("bench")

    def otel_extract() -> str:
        ctx = trace.get_current_span(propagator.extract(carrier)).get_span_context()
        return format(ctx.trace_id, "032x")

    def otel_inject() -> str:
        out: dict[str, str] = {}
        propagator.inject(out)
        return out["traceparent"]

    assert parse_traceparent(HEADER) is not None and otel_extract() == parse_traceparent(HEADER).trace_id  # type: ignore[union-attr]
    parse = interleaved_ns({"ours": lambda: parse_traceparent(HEADER), "otel": otel_extract}, number=20_000, rounds=15)
    with tracer.start_as_current_span("outer"):
        assert current_traceparent() == otel_inject()
        fmt = interleaved_ns({"ours": current_traceparent, "otel": otel_inject}, number=20_000, rounds=15)
    return [
        row("traceparent parse: OTel propagator extract", parse["otel"], "ns"),
        row("traceparent parse: ark_obs parse_traceparent", parse["ours"], "ns", parse["otel"]),
        row("traceparent format: OTel propagator inject", fmt["otel"], "ns", note="inside an active span"),
        row("traceparent format: ark_obs current_traceparent", fmt["ours"], "ns", fmt["otel"]),
    ]


# --- the lookup every unbound observation now makes -------------------------------------------------------
def _observe_lookup() -> list[dict[str, Any]]:
    """``observe`` with no bound trace id asks for the active OTel span: its cost next to not asking."""
    from ark_obs import registry

    collector = MetricsCollector(ticker=False)
    observe = collector.observe_histogram
    real = registry.otel_trace_id

    def asking() -> None:
        registry.otel_trace_id = real
        for _ in range(100):
            observe("ark_pass_latency_ms", 12.0)

    def not_asking() -> None:
        registry.otel_trace_id = lambda: None
        for _ in range(100):
            observe("ark_pass_latency_ms", 12.0)

    try:
        t = interleaved_ns({"asking": asking, "not": not_asking}, number=200, rounds=25)
    finally:
        registry.otel_trace_id = real
    return [
        row("observe_histogram, no trace bound, OTel lookup stubbed out", t["not"] / 100, "ns"),
        row("observe_histogram, no trace bound, active-span lookup", t["asking"] / 100, "ns", t["not"] / 100),
    ]


def run() -> dict[str, Any]:
    """Every OpenTelemetry interop measurement, in one run."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # no processor: span cost without an exporter, both sides
    rows = [*_observe_lookup(), *_propagation(), *_decorator(), *_ingest()]
    return {"title": "OpenTelemetry interop", "rows": rows}
