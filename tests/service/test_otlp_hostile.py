"""Hostile OTLP bodies: every answer is one the OTLP/HTTP specification allows, nothing is logged as an
error, and limits stop the work before a body is decoded."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ark_obs.service import create_app, otlp
from ark_obs.settings import Settings

# what an OTLP/HTTP receiver may answer (200 possibly with partial_success; 401 is the token guard's)
ALLOWED = {200, 400, 413, 415, 429, 503}
JSON = {"Content-Type": "application/json"}
PROTO = {"Content-Type": "application/x-protobuf"}
MAX_SPANS = 50


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The app ``ark-obs serve`` runs, with a small span limit, in this process."""
    app = create_app(
        Settings(_env_file=None, max_batch_spans=MAX_SPANS, max_decompressed_bytes=256 * 1024)  # type: ignore[call-arg]
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def _span(**fields: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "startTimeUnixNano": str(now),
        "endTimeUnixNano": str(now),
        **fields,
    }


def _doc(spans: list[Any], resource: Any = None) -> dict[str, Any]:
    rs: dict[str, Any] = {"scopeSpans": [{"spans": spans}]}
    rs["resource"] = resource or {"attributes": [{"key": "service.name", "value": {"stringValue": "Kyle"}}]}
    return {"resourceSpans": [rs]}


DEEP = 5000
# the eight bodies that answered 500 with a traceback (issue 24), and relatives
HOSTILE_JSON = {
    "deep arrays": b"[" * DEEP + b"]" * DEEP,
    "deep attribute": json.dumps(_doc([_span(attributes=[{"key": "x", "value": {"arrayValue": {"values": []}}}])]))
    .replace('"values": []', '"values": [' + "[" * DEEP + "]" * DEEP + "]")
    .encode(),
    "unbalanced deep": b'{"resourceSpans": ' + b"[" * DEEP,
    "object as stringValue (resource)": json.dumps(
        _doc([_span()], {"attributes": [{"key": "service.name", "value": {"stringValue": {"a": 1}}}]})
    ).encode(),
    "list as stringValue (span)": json.dumps(
        _doc([_span(attributes=[{"key": "ark.agent", "value": {"stringValue": [1, 2]}}])])
    ).encode(),
    "superscript digit time": json.dumps(_doc([_span(startTimeUnixNano="²")])).encode(),
    "401-digit time string": json.dumps(_doc([_span(startTimeUnixNano="9" * 401)])).encode(),
    "401-digit time number": json.dumps(_doc([_span(endTimeUnixNano=10**400)])).encode(),
    "5000-digit number": b'{"resourceSpans": [], "x": ' + b"9" * 5000 + b"}",
    "huge trace id": json.dumps(_doc([_span(traceId="z" * 100_000)])).encode(),
    "lone surrogate": b'{"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", '
    b'"value": {"stringValue": "\\ud800"}}]}, "scopeSpans": [{"spans": [{}]}]}]}',
}


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
def test_hostile_json_gets_a_spec_status_and_no_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """Each of these answered 500 with a traceback before: now 200 (the span refused) or 400."""
    caplog.set_level(logging.INFO)
    r = client.post("/v1/traces", content=HOSTILE_JSON[name], headers=JSON)
    assert r.status_code in (200, 400), r.text
    assert r.headers["content-type"] == "application/json"
    assert len(r.content) < 2000  # client values are cut short in the error message
    assert not _errors(caplog)


def test_times_beyond_uint64_refuse_the_span_only() -> None:
    """A time that is not ASCII digits, or does not fit a uint64, refuses its span (partial success)."""
    for bad in ("²", "9" * 401, "1" * 21, 2**64, -5, "1e9", 1.5e18):
        decoded = otlp.decode_json(json.dumps(_doc([_span(startTimeUnixNano=bad), _span()])).encode())
        assert decoded.received == 2 and decoded.rejected == 1 and len(decoded.spans) == 1, bad


def test_json_depth_is_checked_on_the_brackets_before_parsing() -> None:
    """Depth counts nesting, not brackets; brackets and quotes inside strings (escaped quotes too) do not count."""
    otlp.check_json_depth(b"[" * 64 + b"]" * 64)
    otlp.check_json_depth(json.dumps({"a": '[[[[\\"{{{{' * 100, "b": [[{}], {"c": [1, [2]]}]}).encode(), 8)
    otlp.check_json_depth(b'{"a": "x\\\\", "b": [[[]]]}', 4)
    for body, depth in ((b"[" * 65 + b"]" * 65, 64), (b'{"a": [[[[]]]]}', 4), (b"[" * 9, 64), (b'["]', 64)):
        with pytest.raises(otlp.OtlpError) as err:
            otlp.check_json_depth(body, depth)
        assert err.value.status == 400


def _spans_request(n: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for _ in range(n):
        scope.spans.add()
    return bytes(request.SerializeToString())


def test_protobuf_spans_are_counted_on_the_wire_and_the_count_stops_at_the_limit() -> None:
    """The wire-format walk counts what the decoder would, and stops one past the limit."""
    assert otlp.count_protobuf_spans(_spans_request(7), 100) == 7
    assert otlp.count_protobuf_spans(_spans_request(100_000), 10) == 11
    assert otlp.count_protobuf_spans(b"\x0a\xff\xff", 10) == -1  # a length past the end: decode to tell
    with pytest.raises(otlp.OtlpError) as err:
        otlp.decode_protobuf(_spans_request(100_000), max_spans=10)
    assert err.value.status == 413


def test_oversized_json_is_refused_before_parsing_and_gzip_stops_inflating() -> None:
    """100,000 spans: 413 from counting keys, and a gzip body stops inflating at the step that passes the limit."""
    body = json.dumps(_doc([_span() for _ in range(100_000)])).encode()
    with pytest.raises(otlp.OtlpError) as err:
        otlp.decode_json(body, max_spans=MAX_SPANS)
    assert err.value.status == 413
    steps: list[int] = []

    def check(step: bytes) -> None:
        steps.append(len(step))
        if otlp.count_json_span_keys(step) > MAX_SPANS:
            raise otlp.OtlpError(413, "too many")

    with pytest.raises(otlp.OtlpError):
        otlp.gunzip(gzip.compress(body), len(body) + 1, check)
    assert len(steps) == 1 and steps[0] < len(body)


def test_refusals_over_http(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Over the app: too many spans 413 in either encoding and gzipped, a bomb 413, a deep body 400."""
    caplog.set_level(logging.INFO)
    many = json.dumps(_doc([_span() for _ in range(MAX_SPANS + 1)])).encode()
    nulls = b'{"resourceSpans": [' + b",".join([b"null"] * 40_000) + b"]}"
    cases = [
        (many, JSON, 413),
        (gzip.compress(many), {**JSON, "Content-Encoding": "gzip"}, 413),
        (_spans_request(MAX_SPANS + 1), PROTO, 413),
        (gzip.compress(_spans_request(100_000)), {**PROTO, "Content-Encoding": "gzip"}, 413),
        (gzip.compress(b"\0" * (8 * 1024 * 1024)), {**PROTO, "Content-Encoding": "gzip"}, 400),
        (gzip.compress(b"\x0a\x80\x80\x80\x04" + bytes(8 * 1024 * 1024)), {**PROTO, "Content-Encoding": "gzip"}, 413),
        (gzip.compress(b"  \0" * (1024 * 1024)), {**JSON, "Content-Encoding": "gzip"}, 400),
        (gzip.compress(nulls), {**JSON, "Content-Encoding": "gzip"}, 400),
        (b"[" * 100_000, JSON, 400),
    ]
    for body, headers, status in cases:
        assert client.post("/v1/traces", content=body, headers=headers).status_code == status
    assert not _errors(caplog)


# --- property tests: arbitrary shapes in both encodings ------------------------------------------------------
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_otlp_keys = st.sampled_from(
    [
        "resourceSpans",
        "scopeSpans",
        "spans",
        "resource",
        "attributes",
        "key",
        "value",
        "stringValue",
        "traceId",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "status",
        "code",
        "arrayValue",
        "values",
        "service.name",
        "ark.agent",
    ]
)
# shapes close to a request: OTLP's own keys with arbitrary values, nested
_otlp_like = st.recursive(
    _scalars | st.sampled_from(["Kyle", "5b8efff798038103d269b633813fc60c", "1544712660000000000", "²", 2]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_otlp_keys, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_json_values | _otlp_like)
def test_any_json_gets_a_spec_status(client: TestClient, caplog: pytest.LogCaptureFixture, document: object) -> None:
    """Any JSON document: a status the spec allows, never a 500, nothing logged as an error."""
    caplog.clear()
    body = json.dumps(document).encode()
    r = client.post("/v1/traces", content=body, headers=JSON)
    assert r.status_code in ALLOWED, r.text
    zipped = client.post("/v1/traces", content=gzip.compress(body), headers={**JSON, "Content-Encoding": "gzip"})
    assert zipped.status_code == r.status_code
    assert not _errors(caplog)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_protobuf_bytes_get_a_spec_status(
    client: TestClient, caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    """Random bytes, and a valid request with bytes flipped, cut or spliced: a status the spec allows."""
    valid = ExportTraceServiceRequest()
    rs = valid.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "Kyle"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.start_time_unix_nano, span.end_time_unix_nano = (
        bytes(range(1, 17)),
        time.time_ns(),
        time.time_ns(),
    )
    base = bytearray(valid.SerializeToString())
    body = data.draw(
        st.binary(max_size=300)
        | st.builds(
            lambda i, b: bytes(base[:i] + bytes([b]) + base[i + 1 :]),
            st.integers(0, len(base) - 1),
            st.integers(0, 255),
        )
        | st.builds(lambda i, extra: bytes(base[:i]) + extra, st.integers(0, len(base)), st.binary(max_size=40))
    )
    caplog.clear()
    r = client.post("/v1/traces", content=body, headers=PROTO)
    assert r.status_code in ALLOWED, r.content
    for encoded in (gzip.compress(body), body):  # gzip of the body, and the body claimed as gzip
        zipped = client.post("/v1/traces", content=encoded, headers={**PROTO, "Content-Encoding": "gzip"})
        assert zipped.status_code in ALLOWED, zipped.content
    assert not _errors(caplog)


def test_decoding_is_one_request_at_a_time_and_a_request_kept_waiting_gets_429() -> None:
    """Past its wait for the decoding slot a request is answered 429 with Retry-After (retryable per the
    spec), in its encoding; here the slot is never free (no decoder)."""
    from fastapi import FastAPI

    from ark_obs.metrics import MetricsCollector
    from ark_obs.service.routes.otlp import router_for
    from ark_obs.traces import TraceMonitor

    monitor = TraceMonitor(MetricsCollector(ticker=False), "memory", sweep=False, background=False)
    app = FastAPI()
    app.include_router(
        router_for(monitor, max_spans=10, max_decompressed_bytes=1024, decoders=0, decode_wait_seconds=0.01)
    )
    try:
        with TestClient(app) as c:
            r = c.post("/v1/traces", content=_spans_request(1), headers=PROTO)
    finally:
        monitor.close()
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/x-protobuf"


def test_a_refused_body_is_freed_at_once_not_left_in_a_cycle(client: TestClient) -> None:
    """The refusal carried back from the decoding thread holds no traceback, so the parsed document of a
    refused body is freed by reference counting, not left in a cycle for the rare full collection (resident
    memory grew by hundreds of MB under a flood of refused 8 MiB bodies)."""
    import gc

    refused = b'{"resourceSpans": [' + b",".join([b"null"] * 30_000) + b"]}"
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            assert client.post("/v1/traces", content=refused, headers=JSON).status_code == 400
        gc.collect()
        kept = [o for o in gc.garbage if isinstance(o, list) and len(o) >= 30_000]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert kept == []


def test_far_more_array_elements_than_objects_is_no_request() -> None:
    """Every OTLP array holds objects: 70,000 nulls are refused before parsing; an unknown field of 1,000
    numbers (receivers must ignore unknown fields) is not."""
    nulls = b'{"resourceSpans": [' + b",".join([b"null"] * 70_000) + b"]}"
    with pytest.raises(otlp.OtlpError) as err:
        otlp.check_json_depth(nulls)
    assert err.value.status == 400 and "OTLP arrays hold objects" in err.value.message
    doc = _doc([_span()])
    doc["futureField"] = list(range(1000))
    assert otlp.decode_json(json.dumps(doc).encode()).spans


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans()), max_size=6), max_size=4)
)
def test_the_wire_count_is_the_decoded_count(shape: list[list[tuple[int, int, bool]]]) -> None:
    """For requests of any shape (spans of any size, scopes and schema URLs around them), the wire-format
    count equals the decoded span count."""
    request = ExportTraceServiceRequest()
    for scopes in shape:
        rs = request.resource_spans.add()
        rs.schema_url = "x" * len(scopes)
        for spans, name_length, with_scope in scopes:
            ss = rs.scope_spans.add()
            if with_scope:
                ss.scope.name = "lib"
            for _ in range(spans):
                ss.spans.add().name = "n" * name_length
            ss.schema_url = "s"
    body = bytes(request.SerializeToString())
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert otlp.count_protobuf_spans(body, 1_000) == total
    if total:
        assert otlp.count_protobuf_spans(body, total - 1) == total  # stops one past
