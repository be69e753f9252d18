"""OTLP/HTTP trace ingest: the mapping as pure functions, and real OpenTelemetry SDK exporters against a
real ``ark-obs serve``."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.service import otlp
from plugins.serve import Server

PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
TOKEN = "otlp-test-token-0123456789"
# The OTLP repository's examples/trace.json, verbatim (opentelemetry-proto, examples/trace.json).
SPEC_EXAMPLE = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
            "scopeSpans": [
                {
                    "scope": {
                        "name": "my.library",
                        "version": "1.0.0",
                        "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}],
                    },
                    "spans": [
                        {
                            "traceId": "5B8EFFF798038103D269B633813FC60C",
                            "spanId": "EEE19B7EC3C1B174",
                            "parentSpanId": "EEE19B7EC3C1B173",
                            "name": "I'm a server span",
                            "startTimeUnixNano": "1544712660000000000",
                            "endTimeUnixNano": "1544712661000000000",
                            "kind": 2,
                            "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}],
                        }
                    ],
                }
            ],
        }
    ]
}


def _request(spans: list[tuple[str, bytes, int, int, bool, str | None]]) -> ExportTraceServiceRequest:
    """One ResourceSpans per (service, ...) tuple: (service.name, trace id bytes, start ns, end ns, ok, ark.agent)."""
    request = ExportTraceServiceRequest()
    for service, tid, start, end, ok, override in spans:
        rs = request.resource_spans.add()
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", service
        span = rs.scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = tid, b"\x01" * 8, "work"
        span.start_time_unix_nano, span.end_time_unix_nano = start, end
        if not ok:
            span.status.code = otlp.STATUS_CODE_ERROR
        if override is not None:
            a = span.attributes.add()
            a.key, a.value.string_value = "ark.agent", override
    return request


# --- mapping (pure functions) --------------------------------------------------------------------------------
def test_protobuf_maps_service_name_times_status_and_merges_one_agents_spans() -> None:
    """service.name is the agent, times become seconds, ERROR is a failure, one agent's spans merge into one part."""
    tid = bytes(range(1, 17))
    body = _request(
        [
            ("Kyle", tid, 1_000_000_000, 1_500_000_000, True, None),
            ("Kyle", tid, 1_200_000_000, 2_000_000_000, False, None),
            ("Joey", tid, 3_000_000_000, 3_250_000_000, True, None),
        ]
    ).SerializeToString()
    decoded = otlp.decode_protobuf(body)
    assert decoded.received == 3 and decoded.rejected == 0
    parts = {s.agent: s for s in decoded.spans}
    assert set(parts) == {"Kyle", "Joey"}
    assert parts["Kyle"] == otlp.OtlpSpan(tid.hex(), "Kyle", 1.0, 2.0, False)
    assert parts["Joey"].ok and parts["Joey"].duration_ms == pytest.approx(250.0)


def test_span_attribute_overrides_resource_and_attribute_names_are_settings() -> None:
    """ark.agent on a span wins over service.name; a different resource attribute can be configured."""
    tid = bytes(range(1, 17))
    body = _request([("gateway", tid, 1, 2, True, "HRM"), ("gateway", tid, 1, 2, True, None)]).SerializeToString()
    assert sorted(s.agent for s in otlp.decode_protobuf(body).spans) == ["HRM", "gateway"]
    custom = otlp.decode_protobuf(body, resource_attribute="service.namespace", span_attribute="none")
    assert custom.spans == () and custom.rejected == 2 and "no agent attribute" in custom.error_message


def test_invalid_agents_and_ids_are_rejected_one_by_one() -> None:
    """A bad agent name, a zero trace id or an end before the start refuses that span only."""
    tid = bytes(range(1, 17))
    body = _request(
        [
            ("Kyle", tid, 10, 20, True, None),
            ("not a name!", tid, 10, 20, True, None),
            ("Joey", bytes(16), 10, 20, True, None),
            ("HRM", tid, 30, 20, True, None),
        ]
    ).SerializeToString()
    decoded = otlp.decode_protobuf(body)
    assert [s.agent for s in decoded.spans] == ["Kyle"]
    assert decoded.received == 4 and decoded.rejected == 3
    assert "'not a name!'" in decoded.error_message and "end before" in decoded.error_message


def test_spec_json_example_and_base64_ids() -> None:
    """The spec's JSON example maps to one span of my.service; base64 ids (some exporters) decode alike."""
    decoded = otlp.decode_json(json.dumps(SPEC_EXAMPLE).encode())
    assert decoded.spans == (
        otlp.OtlpSpan("5b8efff798038103d269b633813fc60c", "my.service", 1544712660.0, 1544712661.0, True),
    )
    doc = json.loads(json.dumps(SPEC_EXAMPLE))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = base64.b64encode(bytes.fromhex("5b8efff798038103d269b633813fc60c")).decode()
    span["startTimeUnixNano"] = 1544712660000000000  # a number is accepted too
    span["status"] = {"code": 2}
    again = otlp.decode_json(json.dumps(doc).encode())
    assert again.spans == (
        otlp.OtlpSpan("5b8efff798038103d269b633813fc60c", "my.service", 1544712660.0, 1544712661.0, False),
    )


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"resourceSpans": 3}', b'{"resourceSpans": [{"scopeSpans": [{"spans": 1}]}]}']
)
def test_json_that_does_not_parse_is_a_400(body: bytes) -> None:
    """Broken JSON, or a structure that is not a request, is refused as a whole with 400."""
    with pytest.raises(otlp.OtlpError) as err:
        otlp.decode_json(body)
    assert err.value.status == 400


def test_truncated_protobuf_is_a_400() -> None:
    """A protobuf body cut short does not parse: 400, not a partial import."""
    body = _request([("Kyle", bytes(range(1, 17)), 1, 2, True, None)]).SerializeToString()
    with pytest.raises(otlp.OtlpError) as err:
        otlp.decode_protobuf(body[:-3])
    assert err.value.status == 400


def test_gunzip_stops_a_bomb_at_the_limit() -> None:
    """A body inflating past the limit is refused (413) after inflating at most limit + 1 bytes."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    with pytest.raises(otlp.OtlpError) as err:
        otlp.gunzip(bomb, 1024 * 1024)
    assert err.value.status == 413
    assert otlp.gunzip(gzip.compress(b"abc"), 1024) == b"abc"
    with pytest.raises(otlp.OtlpError) as truncated:
        otlp.gunzip(gzip.compress(b"x" * 5000)[:-10], 1024 * 1024)
    assert truncated.value.status == 400


def test_responses_set_partial_success_only_when_spans_were_refused() -> None:
    """The protobuf response carries rejected_spans and error_message only on a partial success."""
    clean = otlp.Decoded((), 2, 0)
    assert not ExportTraceServiceResponse.FromString(otlp.encode_response(clean, otlp.CONTENT_TYPE_PROTOBUF)).HasField(
        "partial_success"
    )
    partial = ExportTraceServiceResponse.FromString(
        otlp.encode_response(otlp.Decoded((), 3, 2, ("why",)), otlp.CONTENT_TYPE_PROTOBUF)
    )
    assert partial.partial_success.rejected_spans == 2 and "why" in partial.partial_success.error_message
    as_json = json.loads(otlp.encode_response(otlp.Decoded((), 3, 2, ("why",)), otlp.CONTENT_TYPE_JSON))
    assert as_json["partialSuccess"]["rejectedSpans"] == "2"


# --- a real server, real exporters -------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An ``ark-obs serve`` with an ingest token and a 1 MiB decompressed-body limit."""
    srv = Server(tmp_path, {"ARK_OBS_INGEST_TOKEN": TOKEN, "ARK_OBS_MAX_DECOMPRESSED_BYTES": str(1024 * 1024)})
    try:
        srv.wait_healthy()
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)


def _t0() -> int:
    """A span start the service finds plausible: ten seconds ago, in ns."""
    return time.time_ns() - 10_000_000_000


def _spec_example_at(start_ns: int) -> dict[str, object]:
    """The spec's example with its one-second span moved to ``start_ns``."""
    doc = json.loads(json.dumps(SPEC_EXAMPLE))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["startTimeUnixNano"], span["endTimeUnixNano"] = str(start_ns), str(start_ns + 1_000_000_000)
    return doc


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def _export_pipeline(url: str, *, compression: Compression, batch: bool, spans_per_agent: int = 1) -> str:
    """Each agent its own TracerProvider (its own service.name) exporting over OTLP; returns the trace id."""
    providers = []
    for agent in PIPELINE:
        provider = TracerProvider(resource=Resource.create({"service.name": agent}))
        exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=_auth(), compression=compression, timeout=10)
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        providers.append(provider)
    root = providers[0].get_tracer("kyle").start_span("ingest")
    ctx = trace.set_span_in_context(root)
    trace_id = format(root.get_span_context().trace_id, "032x")
    try:
        for agent, provider in zip(PIPELINE[1:], providers[1:], strict=True):
            tracer = provider.get_tracer(agent.lower())
            for i in range(spans_per_agent):
                with tracer.start_as_current_span(f"step-{i}", context=ctx) as span:
                    if agent == "HRM" and i == 0:
                        span.set_status(Status(StatusCode.ERROR, "model timeout"))
    finally:
        root.end()
        for provider in providers:
            assert provider.force_flush(10_000)
            provider.shutdown()
    return trace_id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("compression", "batch"), [(Compression.NoCompression, False), (Compression.Gzip, True)], ids=["protobuf", "gzip"]
)
def test_sdk_exporters_of_five_agents_complete_one_trace(server: Server, compression: Compression, batch: bool) -> None:
    """Five SDK-instrumented agents, each its own service.name, make one complete trace; counted once.

    HRM's three spans (one failed) are one part of the trace, marked failed; completes go up by exactly one.
    """
    before = _counter(server.url, "ark_traces_complete_total")
    trace_id = _export_pipeline(server.url, compression=compression, batch=batch, spans_per_agent=3)
    report = httpx.get(f"{server.url}/traces/{trace_id}", timeout=10).json()
    assert report["complete"] is True and report["missing_agents"] == []
    assert sorted(report["agents_seen"]) == sorted(PIPELINE)
    assert report["failed_agents"] == ["HRM"]
    assert report["latency_ms"] > 0
    assert _counter(server.url, "ark_traces_complete_total") == before + 1
    assert _counter(server.url, "ark_trace_late_spans_total") == 0


@pytest.mark.slow
def test_exporter_without_the_token_is_refused(server: Server) -> None:
    """OTLP ingest is a write: without the bearer token the exporter's export fails (401) and nothing is stored."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "Kyle"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", timeout=5)
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    assert httpx.get(f"{server.url}/traces/{trace_id}", timeout=10).status_code == 404
    authorised = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", headers=_auth(), timeout=5)
    assert authorised.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    assert httpx.get(f"{server.url}/traces/{trace_id}", timeout=10).json()["agents_seen"] == ["Kyle"]
    provider.shutdown()


@pytest.mark.slow
def test_spec_json_example_posted_as_json(server: Server) -> None:
    """The spec's JSON example is read as JSON: verbatim, its 2018 span is refused alone as implausibly old
    (partial success, as /spans answers 422); with its times moved to now it is recorded, start and duration kept."""
    r = httpx.post(f"{server.url}/v1/traces", json=SPEC_EXAMPLE, headers=_auth(), timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "implausible time" in partial["errorMessage"]
    assert httpx.get(f"{server.url}/traces/5b8efff798038103d269b633813fc60c", timeout=10).status_code == 404

    now_ns = _t0()
    r = httpx.post(f"{server.url}/v1/traces", json=_spec_example_at(now_ns), headers=_auth(), timeout=10)
    assert r.status_code == 200 and r.json() == {}
    report = httpx.get(f"{server.url}/traces/5B8EFFF798038103D269B633813FC60C".lower(), timeout=10).json()
    assert report["agents_seen"] == ["my.service"]
    assert report["spans"][0]["start"] == pytest.approx(now_ns / 1e9)
    assert report["spans"][0]["duration_ms"] == pytest.approx(1000.0)


@pytest.mark.slow
def test_partial_success_names_the_refused_spans(server: Server) -> None:
    """Valid spans land, an invalid agent is refused alone: partial_success in protobuf, counted as dropped."""
    tid = bytes(range(1, 17))
    body = _request([("Kyle", tid, _t0(), _t0() + 1_000_000_000, True, None), ("bad agent", tid, 1, 2, True, None)])
    r = httpx.post(
        f"{server.url}/v1/traces",
        content=body.SerializeToString(),
        headers={**_auth(), "Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    response = ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 1 and "bad agent" in response.partial_success.error_message
    assert httpx.get(f"{server.url}/traces/{tid.hex()}", timeout=10).json()["agents_seen"] == ["Kyle"]
    assert _counter(server.url, "ark_obs_dropped_total", metric="trace_span", reason="otlp_rejected") == 1


@pytest.mark.slow
def test_hostile_bodies_get_4xx_and_the_service_keeps_serving(server: Server) -> None:
    """Truncated protobuf 400, wrong content type 415, unknown encoding 415, gzip bomb 413, no token 401;
    afterwards a good export still lands."""
    good = _request([("Kyle", bytes(range(1, 17)), _t0(), _t0() + 1_000_000_000, True, None)]).SerializeToString()
    proto = {**_auth(), "Content-Type": "application/x-protobuf"}
    url = f"{server.url}/v1/traces"
    with httpx.Client(timeout=10) as c:
        assert c.post(url, content=good[:-4], headers=proto).status_code == 400
        assert c.post(url, content=good, headers={**_auth(), "Content-Type": "text/plain"}).status_code == 415
        assert c.post(url, content=good, headers={**proto, "Content-Encoding": "br"}).status_code == 415
        assert c.post(url, content=good, headers={"Content-Type": "application/x-protobuf"}).status_code == 401
        # ~64 KiB, inflates 64x past the limit; it starts as a request would (resource_spans, 64 MiB long)
        bomb = gzip.compress(b"\x0a\x80\x80\x80\x20" + b"\0" * (64 * 1024 * 1024), compresslevel=9)
        r = c.post(url, content=bomb, headers={**proto, "Content-Encoding": "gzip"})
        # the error body is a google.rpc.Status in the request's encoding (protobuf: the message is field 2)
        assert r.status_code == 413 and r.headers["content-type"] == "application/x-protobuf"
        assert b"ARK_OBS_MAX_DECOMPRESSED_BYTES" in r.content
        # zeros do not start a request: refused after the first inflated step
        zeros = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
        assert c.post(url, content=zeros, headers={**proto, "Content-Encoding": "gzip"}).status_code == 400
        assert (
            c.post(url, content=b"\x1f\x8b garbage", headers={**proto, "Content-Encoding": "gzip"}).status_code == 400
        )
        assert c.get(f"{server.url}/healthz").status_code == 200
        ok = c.post(url, content=good, headers=proto)
        assert ok.status_code == 200
        assert c.get(f"{server.url}/traces/{bytes(range(1, 17)).hex()}").json()["agents_seen"] == ["Kyle"]
    assert server.proc.poll() is None


@pytest.mark.slow
def test_store_down_is_503_with_retry_after(tmp_path: Path) -> None:
    """With the Redis trace store unreachable an export is never acknowledged: 503 + Retry-After, which
    OTLP exporters retry, in the request's encoding."""
    from plugins.net import free_port

    srv = Server(tmp_path, {"ARK_OBS_TRACE_STORE": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        srv.wait_healthy()
        body = _request([("Kyle", bytes(range(1, 17)), _t0(), _t0() + 1_000_000_000, True, None)])
        for content, kind in (
            (body.SerializeToString(), "application/x-protobuf"),
            (json.dumps(_spec_example_at(_t0())).encode(), "application/json"),
        ):
            r = httpx.post(f"{srv.url}/v1/traces", content=content, headers={"Content-Type": kind}, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.headers["content-type"] == kind
    finally:
        srv.proc.kill()
        srv.proc.wait(10)
