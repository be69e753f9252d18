"""Trace context: trace id formats, W3C traceparent parsing and formatting, context across executors."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ark_obs.context import (
    TraceParent,
    bind_trace_id,
    current_trace_id,
    current_traceparent,
    format_traceparent,
    in_current_context,
    is_valid_trace_id,
    new_parent_id,
    new_trace_id,
    parse_traceparent,
    run_in_executor,
    traceparent_from_headers,
    w3c_trace_id,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADER = f"00-{TRACE}-{PARENT}-01"  # the example of the W3C Trace Context recommendation

hex_ids = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
hex_parents = st.text("0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s != "0" * 16)


@pytest.fixture(autouse=True)
def no_leaked_trace() -> Iterator[None]:
    """Every test starts and ends with no trace id bound."""
    assert current_trace_id() is None
    yield
    assert current_trace_id() is None


# --- trace ids ---------------------------------------------------------------------------------------
def test_new_trace_id_is_32_lowercase_hex_and_unique() -> None:
    """new_trace_id() gives valid W3C trace-ids (also parseable as UUIDs), none repeated in 20,000."""
    ids = [new_trace_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for tid in ids[:1000]:
        assert len(tid) == 32 and tid == tid.lower() and int(tid, 16) != 0
        assert is_valid_trace_id(tid)
        assert uuid.UUID(hex=tid).hex == tid


def test_new_parent_id_is_16_lowercase_hex() -> None:
    """new_parent_id() gives 16 lowercase hex digits, not all zeros, and they differ."""
    ids = {new_parent_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(p) == 16 and int(p, 16) != 0 and p == p.lower() for p in ids)


def test_forked_child_does_not_reuse_the_parents_trace_ids() -> None:
    """After fork, the child mints ids of its own, not the ones its parent was about to hand out."""
    new_trace_id()  # the pool is filled now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(write, new_trace_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert is_valid_trace_id(child)
    assert child != new_trace_id()


@pytest.mark.parametrize(
    "value",
    [
        TRACE,
        str(uuid.uuid4()),
        "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
        "00000000000000000000000000000001",
    ],
)
def test_valid_trace_ids(value: str) -> None:
    """A lowercase UUID (what the seed makes) and 32 lowercase hex digits are valid trace ids."""
    assert is_valid_trace_id(value)
    assert is_valid_trace_id(value)  # the second look comes from the cache of known ids: same answer


@pytest.mark.parametrize(
    "value",
    [
        "0" * 32,
        "00000000-0000-0000-0000-000000000000",
        TRACE.upper(),
        str(uuid.uuid4()).upper(),
        TRACE[:-1],
        TRACE + "0",
        "abc-123",
        "",
        "4bf92f3577b34da6-a3ce-929d0e0e4736--",
        "4bf92f35-77b34-da6-a3ce-929d0e0e4736",
        "g" * 32,
        " " + TRACE,
        TRACE + "\n",
        None,
        42,
        uuid.UUID(TRACE),
        TRACE.encode(),
    ],
)
def test_invalid_trace_ids(value: object) -> None:
    """All-zero ids, upper case, wrong lengths or dash positions, non-hex and non-strings are invalid."""
    assert not is_valid_trace_id(value)


def test_w3c_trace_id_maps_both_forms_to_32_hex() -> None:
    """A UUID loses its dashes; a W3C id is unchanged; an invalid id raises ValueError naming it."""
    assert w3c_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736") == TRACE
    assert w3c_trace_id(TRACE) == TRACE
    with pytest.raises(ValueError, match="abc-123"):
        w3c_trace_id("abc-123")


# --- traceparent ----------------------------------------------------------------------------------------
def test_parse_the_w3c_example() -> None:
    """The recommendation's example parses to its trace-id, parent-id and sampled flag."""
    parsed = parse_traceparent(HEADER)
    assert parsed == TraceParent(TRACE, PARENT, 0x01, 0)
    assert parsed.sampled
    assert parsed.header() == HEADER


def test_parse_unsampled_and_other_flags() -> None:
    """Flag 00 is not sampled; unknown flag bits are kept and do not make the header invalid."""
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == TraceParent(TRACE, PARENT, 0, 0)
    parsed = parse_traceparent(f"00-{TRACE}-{PARENT}-09")
    assert parsed is not None and parsed.sampled and parsed.flags == 9


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent-id
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"00-{TRACE}-{PARENT}-0A",
        f"0A-{TRACE}-{PARENT}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",  # lengths
        f"00-{TRACE}0-{PARENT}-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{PARENT}-01-",
        f"cc-{TRACE}-{PARENT}-01x",  # a later version's extra data must start with "-"
        f"00_{TRACE}_{PARENT}_01",
        f"00-{TRACE}-{PARENT}",
        f"00-{uuid.UUID(TRACE)!s}-{PARENT}-01",  # a UUID is not a W3C trace-id
        "",
        "00",
        f"00-{TRACE}-{PARENT}-01\n",
        None,
        42,
        [HEADER],
        b"\xff\xfe",
    ],
)
def test_parse_rejects_what_w3c_rejects(value: object) -> None:
    """Every invalid traceparent parses to None, without raising."""
    assert parse_traceparent(value) is None


def test_parse_later_versions_and_whitespace() -> None:
    """A later version may append fields after a dash; HTTP spaces and tabs around the value are ignored."""
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-holds") == TraceParent(TRACE, PARENT, 1, 0xCC)
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01") == TraceParent(TRACE, PARENT, 1, 0xCC)
    assert parse_traceparent(f" \t{HEADER}\t ") == TraceParent(TRACE, PARENT, 1, 0)
    assert parse_traceparent(HEADER.encode()) == TraceParent(TRACE, PARENT, 1, 0)


def test_a_later_version_is_sent_on_as_version_00() -> None:
    """What we send is the version we speak, 00, whatever version came in."""
    parsed = parse_traceparent(f"cc-{TRACE}-{PARENT}-01-more")
    assert parsed is not None and parsed.header() == HEADER


@given(hex_ids, hex_parents, st.integers(0, 255))
def test_traceparent_round_trip(trace_id: str, parent_id: str, flags: int) -> None:
    """Any valid version-00 header parses to its fields and formats back to the same text."""
    header = f"00-{trace_id}-{parent_id}-{flags:02x}"
    parsed = parse_traceparent(header)
    assert parsed == TraceParent(trace_id, parent_id, flags, 0)
    assert parsed.header() == header


@given(st.text(max_size=80))
def test_parse_never_raises(text: str) -> None:
    """Arbitrary text parses to None or to a TraceParent with valid fields, never an exception."""
    parsed = parse_traceparent(text)
    if parsed is not None:
        assert is_valid_trace_id(parsed.trace_id) and len(parsed.trace_id) == 32
        assert parsed.version != 0xFF and parsed.parent_id != "0" * 16


@given(st.uuids())
def test_format_then_parse_gives_the_w3c_form(value: uuid.UUID) -> None:
    """A seed-style UUID trace id survives format -> parse as its 32-hex form; sampled by default."""
    parsed = parse_traceparent(format_traceparent(str(value)))
    assert parsed is not None and parsed.sampled
    assert parsed.trace_id == value.hex == w3c_trace_id(str(value))


def test_format_traceparent() -> None:
    """format_traceparent takes either form, an optional parent-id and the sampled flag; rejects bad input."""
    assert format_traceparent(TRACE, PARENT) == HEADER
    assert format_traceparent(str(uuid.UUID(TRACE)), PARENT, sampled=False) == f"00-{TRACE}-{PARENT}-00"
    first, second = format_traceparent(TRACE), format_traceparent(TRACE)
    assert first != second  # a new parent-id each time
    with pytest.raises(ValueError, match="trace id"):
        format_traceparent("abc-123")
    for bad_parent in ("0" * 16, PARENT.upper(), PARENT[:-1], "x" * 16):
        with pytest.raises(ValueError, match="parent-id"):
            format_traceparent(TRACE, bad_parent)


def test_current_traceparent() -> None:
    """The next hop's header carries the bound trace; None when nothing (or garbage) is bound."""
    assert current_traceparent() is None
    with bind_trace_id(str(uuid.UUID(TRACE))):
        header = current_traceparent()
        assert header is not None
        parsed = parse_traceparent(header)
        assert parsed is not None and parsed.trace_id == TRACE
    with bind_trace_id("not-a-trace"):
        assert current_traceparent() is None


def test_traceparent_from_headers_ignores_case() -> None:
    """Header names are compared case-insensitively; a missing header gives None."""
    assert traceparent_from_headers({"traceparent": HEADER}) == HEADER
    assert traceparent_from_headers({"Content-Type": "x", "TraceParent": HEADER}) == HEADER
    assert traceparent_from_headers({"tracestate": "a=b"}) is None


# --- binding and executors ---------------------------------------------------------------------------------
def test_bind_trace_id_nests_and_restores() -> None:
    """Nested binds shadow the outer one and restore it on exit, also when the block raises."""
    with bind_trace_id("a" * 32):
        with pytest.raises(RuntimeError), bind_trace_id("b" * 32):
            assert current_trace_id() == "b" * 32
            raise RuntimeError
        assert current_trace_id() == "a" * 32


async def test_run_in_executor_copies_the_context() -> None:
    """loop.run_in_executor does not carry the trace id into the worker; run_in_executor does, with kwargs."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool, bind_trace_id(TRACE):
        assert await loop.run_in_executor(pool, current_trace_id) is None  # why the helper exists
        assert await run_in_executor(pool, current_trace_id) == TRACE
        assert await run_in_executor(None, lambda x, *, y: (x, y, current_trace_id()), 1, y=2) == (1, 2, TRACE)


async def test_run_in_executor_propagates_exceptions_and_refuses_process_pools() -> None:
    """The worker's exception reaches the caller unchanged; a process pool is refused with TypeError."""
    error = KeyError("boom")

    def fail() -> None:
        raise error

    with pytest.raises(KeyError) as caught:
        await run_in_executor(None, fail)
    assert caught.value is error
    with ProcessPoolExecutor(1) as pool, pytest.raises(TypeError, match="thread pool"):
        await run_in_executor(pool, current_trace_id)


def test_in_current_context_runs_in_threads_at_once() -> None:
    """A function wrapped once sees the captured trace id in several threads running it at the same time."""
    barrier = threading.Barrier(4)
    seen: list[str | None] = []

    def work() -> None:
        barrier.wait(timeout=5)  # all four inside the copied context together
        seen.append(current_trace_id())

    with bind_trace_id(TRACE):
        wrapped = in_current_context(work)
    threads = [threading.Thread(target=wrapped) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [TRACE] * 4
    assert wrapped.__name__ == "work"
