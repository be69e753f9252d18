"""OTLP/HTTP trace ingest: any OpenTelemetry-instrumented agent feeds trace continuity, no ark_obs import.

``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` as binary protobuf (``application/x-protobuf``,
the SDKs' default) or as OTLP JSON (``application/json``: lowerCamelCase keys, hex ids, int64 times as
strings or numbers), optionally gzip-compressed. Each span becomes one continuity span:

- agent: the span attribute ``span_attribute`` (``ark.agent`` by default) when the span has it, else the
  resource attribute ``resource_attribute`` (``service.name`` by default);
- trace id: the 16 id bytes as 32 lowercase hex (already ark-obs' canonical form, so an OTel trace and
  ``/traces/{id}`` name one trace); start and end from ``start/endTimeUnixNano``; ``ok`` unless the
  span's status code is ERROR.

Several spans of one agent in one trace are that agent's part once (first start, last end, failed if any
failed). A span with no valid agent name, a bad id or impossible times is refused on its own and counted
(``ark_obs_dropped_total{metric="trace_span",reason="otlp_rejected"}``); the answer then carries
``partial_success.rejected_spans`` and an ``error_message``, which exporters do not retry. Per the spec
the response mirrors the request's encoding; 400 for a body that cannot be decoded, 413 over a limit,
415 for another content type or encoding, 503 with ``Retry-After`` when the store cannot take the spans
(nothing is acknowledged before it is in the store, and a repeated span is harmless).

The decoding and mapping are pure functions; ``ark_obs.service.routes.otlp`` wires them to the trace monitor.
"""

from __future__ import annotations

import base64
import binascii
import json
import operator
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, NamedTuple

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pydantic import BaseModel, Field

from ark_obs.settings import is_valid_name
from ark_obs.traces import StoreUnavailable, TraceMonitor

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_PROTOBUF",
    "DEFAULT_RESOURCE_ATTRIBUTE",
    "DEFAULT_SPAN_ATTRIBUTE",
    "Decoded",
    "OtlpError",
    "OtlpSpan",
    "check_json_depth",
    "check_start",
    "count_json_span_keys",
    "count_protobuf_spans",
    "decode",
    "decode_json",
    "decode_protobuf",
    "encode_response",
    "encode_status",
    "gunzip",
    "media_type",
    "refuse_implausible",
    "store_spans",
]

CONTENT_TYPE_PROTOBUF: Final = "application/x-protobuf"
CONTENT_TYPE_JSON: Final = "application/json"
DEFAULT_RESOURCE_ATTRIBUTE: Final = "service.name"
DEFAULT_SPAN_ATTRIBUTE: Final = "ark.agent"
REJECTED_REASON: Final = "otlp_rejected"
STATUS_CODE_ERROR: Final = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_ZERO_ID: Final = bytes(16)
_HEX: Final = frozenset("0123456789abcdefABCDEF")
# error_message lists this many distinct reasons at most: the response stays small whatever the batch
_MAX_REASONS: Final = 5
_START: Final = operator.itemgetter(2)  # OtlpSpan.start
_END: Final = operator.itemgetter(3)  # OtlpSpan.end
# google.rpc.Status codes for the error body (the spec says clients may log, not act on, them)
_RPC_INVALID_ARGUMENT: Final = 3
_RPC_RESOURCE_EXHAUSTED: Final = 8
_RPC_UNAVAILABLE: Final = 14
_RPC_UNAUTHENTICATED: Final = 16
_RPC_PERMISSION_DENIED: Final = 7
# JSON nested deeper than this is refused before it is parsed (OTLP itself nests about 10 levels; the
# rest is room for arrayValue/kvlistValue attributes)
MAX_JSON_DEPTH: Final = 64
# An int64/uint64 time has at most 20 decimal digits, and a valid one is below 2**64
_MAX_NANOS: Final = 2**64
# every byte but the JSON structure ([]{}, commas, colons and the quotes of strings), for bytes.translate
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'[]{}",:')
# array elements that are not objects (commas past colons and objects) a JSON request may hold
_MAX_LOOSE_VALUES: Final = 65536
_JSON_STRING: Final = re.compile(rb'"[^"]*"')
# brackets to depth steps for a signed running sum: opening +1, closing -1 (255 as a signed byte)
_DEPTH_STEPS: Final = bytes.maketrans(b"[]{}", bytes((1, 255, 1, 255)))
_DEPTH_SLICE: Final = 65536
_FIRST_DEPTH_SLICE: Final = 4096
# a span's start time key: only spans have one (events and links do not), so their count is a lower bound
# of a well-formed request's span count, found with bytes.count before anything is parsed
_SPAN_KEYS: Final = (b'"startTimeUnixNano"', b'"start_time_unix_nano"')
# a quoted value in an error message is cut to this many characters
_MAX_SHOWN: Final = 80
# inflate in steps of this size, so a limit can stop it early
_INFLATE_STEP: Final = 1024 * 1024


class OtlpSpan(NamedTuple):
    """One agent's part in one trace, merged over that agent's spans of the request (Unix seconds).

    A named tuple rather than a frozen dataclass: one is built per span, and on the ingest path the
    dataclass' construction cost as much as decoding the protobuf.
    """

    trace_id: str
    agent: str
    start: float
    end: float
    ok: bool

    @property
    def duration_ms(self) -> float:
        """End minus start, in milliseconds."""
        return (self.end - self.start) * 1000.0


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request's spans mapped to continuity: the accepted parts, and how many spans were refused why."""

    spans: tuple[OtlpSpan, ...]
    received: int
    rejected: int
    reasons: tuple[str, ...] = ()

    @property
    def error_message(self) -> str:
        """The ``partial_success.error_message``: empty when nothing was refused."""
        if not self.rejected:
            return ""
        return f"{self.rejected} of {self.received} span(s) rejected: {'; '.join(self.reasons)}"


class PartialSuccessJson(BaseModel):
    """``ExportTracePartialSuccess`` in OTLP JSON."""

    rejectedSpans: str = Field(description="Spans refused (an int64, so a string in OTLP JSON).")
    errorMessage: str = Field(description="Why, for the first few reasons.")


class ExportResponseJson(BaseModel):
    """``ExportTraceServiceResponse`` in OTLP JSON: empty when every span was accepted."""

    partialSuccess: PartialSuccessJson | None = None


class StatusJson(BaseModel):
    """``google.rpc.Status`` in JSON: the body of every OTLP error answer."""

    code: int = Field(description="gRPC status code (informational; the HTTP status is what counts).")
    message: str


class OtlpError(Exception):
    """A request refused as a whole: HTTP ``status`` and a developer-facing message."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# --- body ----------------------------------------------------------------------------------------------
def gunzip(body: bytes, limit: int, check: Callable[[bytes], None] | None = None) -> bytes:
    """Inflate a gzip body, refusing (413) once the output would pass ``limit`` bytes.

    At most ``limit + 1`` bytes are ever inflated, so a gzip bomb costs what its first ``limit`` bytes
    cost and no more. It is inflated in steps of ``_INFLATE_STEP``; ``check`` sees each step and may
    raise (an OtlpError) to stop there. A corrupt or truncated stream is a 400.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    parts: list[bytes] = []
    size = 0
    pending = body
    try:
        while True:
            step = inflater.decompress(pending, min(_INFLATE_STEP, limit + 1 - size))
            pending = inflater.unconsumed_tail
            size += len(step)
            if step and check is not None:
                check(step)  # first: a body that is no request is a 400 whatever its size
            if size > limit:
                raise OtlpError(413, f"gzip body inflates past the {limit}-byte limit (ARK_OBS_MAX_DECOMPRESSED_BYTES)")
            if step:
                parts.append(step)
            if inflater.eof or not step:
                break
    except zlib.error as exc:
        raise OtlpError(400, f"gzip body could not be decompressed: {exc}") from exc
    if not inflater.eof:
        raise OtlpError(400, "gzip body is truncated")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _shown(value: object) -> str:
    """``repr(value)``, cut short: client values go into error messages."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --- limits before decoding -------------------------------------------------------------------------------
def count_json_span_keys(body: bytes) -> int:
    """How many span start-time keys an OTLP JSON body holds: at most its span count, by ``bytes.count``."""
    return sum(body.count(key) for key in _SPAN_KEYS)


def check_json_depth(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """OtlpError(400) when JSON ``body`` nests arrays and objects deeper than ``max_depth``, its brackets or
    quotes do not balance, or it holds far more values than an OTLP request could: checked on its structure
    alone, before the body is parsed.

    Escaped backslashes and quotes are removed first, then every byte that is not a bracket, a quote, a
    comma or a colon, then the strings (with what they held). Every array of an OTLP request holds
    objects, so its commas are at most its colons (one per member) plus its objects; past that by
    ``_MAX_LOOSE_VALUES`` (room for unknown fields, which receivers must ignore) the body is no request,
    whatever it would parse to (8 MiB of ``null`` took 25 ms to parse). The depth is then a running sum
    (+1 opening, -1 closing) taken in slices of ``_DEPTH_SLICE`` brackets, so a deep body is refused in
    its first slice and no single step holds the interpreter long.
    """
    s = body
    if b"\\" in s:
        s = s.replace(b"\\\\", b"").replace(b'\\"', b"")
    s = s.translate(None, _NOT_STRUCTURE)
    if b'"' in s:
        s = _JSON_STRING.sub(b"", s)
        if b'"' in s:
            raise OtlpError(400, "body is not JSON: a string is not closed")
    loose = s.count(b",") - s.count(b":") - s.count(b"{")
    if loose > _MAX_LOOSE_VALUES:
        raise OtlpError(
            400, f"body is not an OTLP request: {loose} more array elements than objects (OTLP arrays hold objects)"
        )
    structure = s.translate(_DEPTH_STEPS, b",:")
    if b"\x01" * (max_depth + 1) in structure:  # the usual deep body: a run of openings, found in one C scan
        raise OtlpError(400, f"body nests arrays or objects deeper than {max_depth} levels")
    steps = memoryview(structure).cast("b")
    depth = 0
    at = 0
    while at < len(steps):
        # a small first slice: a body deep near its start is refused after a few thousand steps, not 65,536
        size = _DEPTH_SLICE if at else _FIRST_DEPTH_SLICE
        levels = list(accumulate(steps[at : at + size], initial=depth))
        at += size
        if max(levels) > max_depth:
            raise OtlpError(400, f"body nests arrays or objects deeper than {max_depth} levels")
        if min(levels) < 0:
            raise OtlpError(400, "body is not JSON: a bracket closes what was not opened")
        depth = levels[-1]
    if depth:
        raise OtlpError(400, "body is not JSON: a bracket is not closed")


def check_start(head: bytes, content_type: str) -> None:
    """OtlpError(400) when the first bytes of a body already show it is no request: a JSON request is an
    object, and a protobuf one starts with a valid field tag. Lets a gzip body be refused after its first
    inflated step instead of its whole inflated size."""
    if content_type == CONTENT_TYPE_PROTOBUF:
        tag = head[0] if head else 8
        if tag >> 3 == 0 or tag & 7 in (3, 4, 6, 7):  # field 0, groups or no wire type: never a request
            raise OtlpError(400, "body is not an ExportTraceServiceRequest: it starts with an invalid field tag")
        return
    first = head.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf")[:1]
    if first and first != b"{":
        raise OtlpError(400, "body is not a JSON ExportTraceServiceRequest: it does not start with an object")


def _varint_at(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("bad varint")


def _length_fields(buf: bytes, pos: int, end: int, field: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each length-delimited occurrence of ``field`` in ``buf[pos:end]`` (others skipped)."""
    while pos < end:
        tag, after_tag = _varint_at(buf, pos, end)
        if tag & 7 == 2 and tag >> 3 == field:
            size, start = _varint_at(buf, after_tag, end)
            if start + size > end:
                raise ValueError("field past its message")
            yield start, start + size
            pos = start + size
        else:
            pos = _next_field(buf, pos, end)


def count_protobuf_spans(body: bytes, stop_after: int) -> int:
    """Spans in a binary ``ExportTraceServiceRequest``, from the wire format without decoding it; counting
    stops once past ``stop_after``. -1 when the walk cannot tell (malformed, or groups): decode to know.

    ``resource_spans`` is field 1 of the request, ``scope_spans`` field 2 of ResourceSpans, ``spans``
    field 2 of ScopeSpans.
    """
    count = 0
    try:
        for rs_start, rs_end in _length_fields(body, 0, len(body), 1):
            for ss_start, ss_end in _length_fields(body, rs_start, rs_end, 2):
                count += _count_spans(body, ss_start, ss_end, stop_after - count)
                if count > stop_after:
                    return count
    except ValueError:
        return -1
    return count


def _count_spans(buf: bytes, pos: int, end: int, stop_after: int) -> int:
    """Occurrences of field 2 (length-delimited) in the ScopeSpans ``buf[pos:end]``, stopping once past
    ``stop_after``: the one loop run per span, so the common one-byte tag and length are read inline."""
    count = 0
    while pos < end:
        tag = buf[pos]
        if tag == 0x12 and pos + 1 < end and buf[pos + 1] < 0x80:  # a span shorter than 128 bytes
            pos += 2 + buf[pos + 1]
        elif tag == 0x12:
            size, pos = _varint_at(buf, pos + 1, end)
            pos += size
        else:
            pos = _next_field(buf, pos, end)  # another field (the scope, the schema URL): skipped
            continue
        count += 1
        if count > stop_after:
            return count
    if pos > end:
        raise ValueError("field past its message")
    return count


def _next_field(buf: bytes, pos: int, end: int) -> int:
    """Where the field starting at ``pos`` ends."""
    tag, pos = _varint_at(buf, pos, end)
    wire = tag & 7
    if wire == 2:
        size, pos = _varint_at(buf, pos, end)
        pos += size
    elif wire == 0:
        pos = _varint_at(buf, pos, end)[1]
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:
        raise ValueError(f"wire type {wire}")
    if pos > end:
        raise ValueError("field past its message")
    return pos


def _too_many(limit: int) -> OtlpError:
    return OtlpError(413, f"more than {limit} spans in one request (ARK_OBS_MAX_BATCH_SPANS)")


# --- mapping ---------------------------------------------------------------------------------------------
class _Merger:
    """Collects spans, merging one agent's spans of one trace; counts the refused ones by reason."""

    __slots__ = ("names", "parts", "reasons", "received", "rejected")

    def __init__(self) -> None:
        self.parts: dict[tuple[str, object], OtlpSpan] = {}
        self.names: dict[object, bool] = {}  # agent name -> valid: a batch names a handful of agents
        self.received = 0
        self.rejected = 0
        self.reasons: dict[str, None] = {}

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons[reason] = None

    def valid(self, agent: object) -> bool:
        ok = self.names.get(agent)
        if ok is None:
            ok = self.names[agent] = isinstance(agent, str) and is_valid_name(agent)
        return ok

    def add(self, trace_id: str, agent: object, start_ns: int, end_ns: int, ok: bool) -> None:
        if not self.valid(agent):
            self.reject(f"agent {_shown(agent)} is not a valid agent name" if agent else "span has no agent attribute")
            return
        if start_ns <= 0 or end_ns < start_ns:
            self.reject(f"span times {start_ns}..{end_ns} ns are missing or end before they start")
            return
        key = (trace_id, agent)
        part = self.parts.get(key)
        if part is None:
            self.parts[key] = OtlpSpan(trace_id, agent, start_ns / 1e9, end_ns / 1e9, ok)  # type: ignore[arg-type]
        else:
            self.parts[key] = OtlpSpan(
                trace_id,
                part.agent,
                min(part.start, start_ns / 1e9),
                max(part.end, end_ns / 1e9),
                part.ok and ok,
            )

    def result(self) -> Decoded:
        return Decoded(tuple(self.parts.values()), self.received, self.rejected, tuple(self.reasons))


def decode_protobuf(
    body: bytes,
    *,
    resource_attribute: str = DEFAULT_RESOURCE_ATTRIBUTE,
    span_attribute: str = DEFAULT_SPAN_ATTRIBUTE,
    max_spans: int | None = None,
) -> Decoded:
    """Map a binary ``ExportTraceServiceRequest`` to continuity spans; OtlpError(400) if it does not parse,
    413 past ``max_spans`` spans (counted on the wire format first, so an oversized body is not decoded).
    """
    # an empty span takes 2 bytes, so a body under 2 * max_spans cannot hold too many
    if max_spans is not None and len(body) >= 2 * max_spans and count_protobuf_spans(body, max_spans) > max_spans:
        raise _too_many(max_spans)
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise OtlpError(400, f"body is not an ExportTraceServiceRequest: {exc}") from exc
    if max_spans is not None:
        total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        if total > max_spans:
            raise _too_many(max_spans)
    merger = _Merger()
    parts, valid, add = merger.parts, merger.valid, merger.add
    received = 0
    # The common case inline (a valid resource agent, no override, sane times, first span of its agent
    # in its trace): per span, a few field reads and one dict store. Everything else goes through add().
    for resource_spans in request.resource_spans:
        default_agent: object = None
        for attribute in resource_spans.resource.attributes:
            if attribute.key == resource_attribute:
                default_agent = attribute.value.string_value if attribute.value.HasField("string_value") else ""
        default_valid = valid(default_agent)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received += 1
                raw_id = span.trace_id
                if len(raw_id) != 16 or raw_id == _ZERO_ID:
                    merger.reject(f"trace id of {len(raw_id)} bytes (want 16, not all zero)")
                    continue
                agent = default_agent
                if span.attributes:
                    for attribute in span.attributes:
                        if attribute.key == span_attribute:
                            value = attribute.value
                            agent = value.string_value if value.HasField("string_value") else ""
                trace_id = raw_id.hex()
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                ok = span.status.code != STATUS_CODE_ERROR
                key = (trace_id, agent)
                if agent is default_agent and default_valid and 0 < start <= end and key not in parts:
                    parts[key] = OtlpSpan(trace_id, agent, start / 1e9, end / 1e9, ok)  # type: ignore[arg-type]
                else:
                    add(trace_id, agent, start, end, ok)
    merger.received = received
    return merger.result()


def _json_trace_id(value: object) -> str | None:
    """32 hex digits (any case; the spec's encoding) or base64 of 16 bytes (some exporters) -> 32 lowercase hex."""
    if not isinstance(value, str):
        return None
    if len(value) == 32 and _HEX.issuperset(value):
        tid = value.lower()
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 16:
            return None
        tid = raw.hex()
    return None if tid == "0" * 32 else tid


def _json_int(value: object) -> int:
    """A uint64 time as OTLP JSON sends it (a decimal string or a number); -1 when it is neither or too large."""
    if type(value) is int:
        return value if 0 <= value < _MAX_NANOS else -1
    # ASCII digits only ("²".isdigit() holds, int("²") fails), and at most 20 of them (2**64 has 20)
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        number = int(value)
        return number if number < _MAX_NANOS else -1
    return -1


def _json_string_attribute(attributes: object, key: str) -> str | None:
    """The string value of ``key`` in an OTLP JSON attribute list; None absent, "" present but not a string."""
    found: str | None = None
    if isinstance(attributes, list):
        for attribute in attributes:
            if isinstance(attribute, dict) and attribute.get("key") == key:
                value = attribute.get("value")
                text = value.get("stringValue") if isinstance(value, dict) else None
                found = text if isinstance(text, str) else ""
    return found


def _json_list(parent: dict[str, Any], key: str) -> list[Any]:
    value = parent.get(key, [])
    if not isinstance(value, list):
        raise OtlpError(400, f"{key} must be a list")
    return value


def _json_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OtlpError(400, f"{what} must be an object")
    return value


def decode_json(
    body: bytes,
    *,
    resource_attribute: str = DEFAULT_RESOURCE_ATTRIBUTE,
    span_attribute: str = DEFAULT_SPAN_ATTRIBUTE,
    max_spans: int | None = None,
) -> Decoded:
    """Map an OTLP JSON ``ExportTraceServiceRequest`` to continuity spans; OtlpError(400) if it does not parse,
    413 past ``max_spans`` spans.

    Before parsing: the span start-time keys are counted (more than ``max_spans`` is a 413) and the
    nesting is checked (``check_json_depth``); after parsing, the spans are counted before any is mapped.
    Unknown keys are ignored (the spec: receivers MUST), snake_case keys included; a span whose own
    fields are wrong is refused on its own, a request whose structure is wrong as a whole.
    """
    if max_spans is not None and count_json_span_keys(body) > max_spans:
        raise _too_many(max_spans)
    check_start(body[:64], CONTENT_TYPE_JSON)
    check_json_depth(body)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OtlpError(400, f"body is not JSON: {exc}") from exc
    root = _json_object(document, "the request")
    groups: list[tuple[str | None, list[Any]]] = []
    total = 0
    for resource_spans in _json_list(root, "resourceSpans"):
        resource_spans = _json_object(resource_spans, "resourceSpans[]")
        resource = _json_object(resource_spans.get("resource", {}), "resource")
        default_agent = _json_string_attribute(resource.get("attributes"), resource_attribute)
        for scope_spans in _json_list(resource_spans, "scopeSpans"):
            spans = _json_list(_json_object(scope_spans, "scopeSpans[]"), "spans")
            groups.append((default_agent, spans))
            total += len(spans)
    if max_spans is not None and total > max_spans:
        raise _too_many(max_spans)
    merger = _Merger()
    merger.received = total
    for default_agent, spans in groups:
        for span in spans:
            if not isinstance(span, dict):
                merger.reject("span is not an object")
                continue
            trace_id = _json_trace_id(span.get("traceId"))
            if trace_id is None:
                merger.reject(f"trace id {_shown(span.get('traceId'))} is not 32 hex digits or base64 of 16 bytes")
                continue
            agent = _json_string_attribute(span.get("attributes"), span_attribute)
            status = span.get("status")
            code = status.get("code") if isinstance(status, dict) else None
            merger.add(
                trace_id,
                default_agent if agent is None else agent,
                _json_int(span.get("startTimeUnixNano")),
                _json_int(span.get("endTimeUnixNano")),
                code not in (STATUS_CODE_ERROR, "STATUS_CODE_ERROR"),
            )
    return merger.result()


def decode(
    body: bytes,
    content_type: str,
    *,
    resource_attribute: str = DEFAULT_RESOURCE_ATTRIBUTE,
    span_attribute: str = DEFAULT_SPAN_ATTRIBUTE,
    max_spans: int | None = None,
) -> Decoded:
    """Decode by content type (``CONTENT_TYPE_PROTOBUF`` or ``CONTENT_TYPE_JSON``)."""
    decoder = decode_protobuf if content_type == CONTENT_TYPE_PROTOBUF else decode_json
    return decoder(body, resource_attribute=resource_attribute, span_attribute=span_attribute, max_spans=max_spans)


# --- responses -------------------------------------------------------------------------------------------
def encode_response(decoded: Decoded, content_type: str) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` set only when spans were refused (the spec)."""
    if content_type == CONTENT_TYPE_JSON:
        if not decoded.rejected:
            return b"{}"
        partial = {"rejectedSpans": str(decoded.rejected), "errorMessage": decoded.error_message}
        return json.dumps({"partialSuccess": partial}).encode()
    response = ExportTraceServiceResponse()
    if decoded.rejected:
        response.partial_success.rejected_spans = decoded.rejected
        response.partial_success.error_message = decoded.error_message
    return bytes(response.SerializeToString())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_status(http_status: int, message: str, content_type: str) -> bytes:
    """The ``google.rpc.Status`` error body the spec asks for (code 1, message 2), in the request's encoding.

    Encoded by hand: the message has two scalar fields, and the generated class is not in
    ``opentelemetry-proto``.
    """
    code = {
        400: _RPC_INVALID_ARGUMENT,
        401: _RPC_UNAUTHENTICATED,
        403: _RPC_PERMISSION_DENIED,
        413: _RPC_RESOURCE_EXHAUSTED,
        429: _RPC_RESOURCE_EXHAUSTED,
    }.get(http_status, _RPC_UNAVAILABLE if http_status >= 500 else _RPC_INVALID_ARGUMENT)
    if content_type != CONTENT_TYPE_PROTOBUF:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode(errors="replace")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


# --- the route -----------------------------------------------------------------------------------------
def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def store_spans(traces: TraceMonitor, spans: Sequence[OtlpSpan], dropped: Any) -> None:
    """Record ``spans`` and flush: on return they are in the store; StoreUnavailable otherwise."""
    if not spans:
        return  # nothing to acknowledge falsely: an empty (or wholly refused) export needs no store
    health = traces.check()
    if not health.healthy:
        raise StoreUnavailable(health.detail or health.backend)
    before = dropped.get()
    record = traces.record_span
    for trace_id, agent, start, end, ok in spans:
        record(trace_id, agent, at=start, duration_ms=(end - start) * 1000.0, ok=ok)
    traces.store.flush()
    health = traces.check()
    if not health.healthy or dropped.get() != before:
        raise StoreUnavailable(health.detail or "spans were dropped")


def refuse_implausible(decoded: Decoded, traces: TraceMonitor) -> Decoded:
    """Refuse the parts whose times the monitor finds implausible (older than the trace TTL, or in the future
    beyond the clock-skew allowance), as ``POST /spans`` answers them 422: here they join the partial success.

    Counted per agent part: several spans of one agent merged into an implausible part count as one.
    """
    now = traces.collector.clock()
    implausible = traces.implausible
    spans = decoded.spans
    # A time is implausible only by being too old or too far ahead, so a batch whose earliest start and
    # latest end pass passes whole: two C-level scans instead of a call per span in the common case.
    if not spans or not implausible(min(map(_START, spans)), max(map(_END, spans)), now):
        return decoded
    kept = [s for s in spans if not implausible(s.start, s.end, now)]
    if len(kept) == len(decoded.spans):
        return decoded
    reasons = dict.fromkeys(decoded.reasons)
    for s in decoded.spans:
        why = implausible(s.start, s.end, now)
        if why and len(reasons) < _MAX_REASONS:
            reasons[f"implausible time: {why}"] = None
    refused = len(decoded.spans) - len(kept)
    return Decoded(tuple(kept), decoded.received, decoded.rejected + refused, tuple(reasons))
