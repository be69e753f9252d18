"""Trace context: the trace id of the signal being processed, carried through awaits, tasks and threads.

One ``ContextVar`` holds it (the model is ``structlog.contextvars``); every latency observation made
while one is bound carries it as an exemplar. ``asyncio.create_task`` and ``asyncio.to_thread`` copy
the context by themselves; ``loop.run_in_executor`` does not, so use ``run_in_executor`` here.

Trace ids come in two accepted forms: a UUID as the seed makes (``str(uuid.uuid4())``, lowercase) and a
W3C trace-id (32 lowercase hex digits, not all zeros). ``new_trace_id()`` makes the W3C form, so an id
minted here survives a ``traceparent`` round trip unchanged; ``w3c_trace_id()`` maps either form to it.
``canonical_trace_id()`` is that mapping at the boundary: every way an id enters ark-obs (spans, lookups,
exemplars) stores and answers under the W3C form, so both forms of one id are one trace.

>>> header = format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
>>> header
'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
>>> parse_traceparent(header).trace_id
'4bf92f3577b34da6a3ce929d0e0e4736'
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar

from opentelemetry.trace import INVALID_SPAN, get_current_span

P = ParamSpec("P")
T = TypeVar("T")

TRACE_ID: Final[ContextVar[str | None]] = ContextVar("ark_obs_trace_id", default=None)

TRACEPARENT_HEADER: Final = "traceparent"
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"
_ZERO_PARENT_ID: Final = "0" * 16
# A trace id is a lowercase UUID (what the seed makes) or a W3C trace-id (32 lowercase hex), never all zeros.
TRACE_ID_PATTERN: Final = r"^([0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
ZERO_TRACE_IDS: Final = (_ZERO_TRACE_ID, _ZERO_UUID)
_TRACE_ID_RE: Final = re.compile(TRACE_ID_PATTERN.strip("^$"), re.ASCII)
_HEX32_RE: Final = re.compile(r"[0-9a-fA-F]{32}", re.ASCII)
# version 00 is exactly these four fields; a later version may append "-" and more fields (W3C §3.3)
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII | re.DOTALL
)
_HTTP_WHITESPACE: Final = " \t"  # optional whitespace HTTP allows around a field value

# New ids come from a pool filled by one os.urandom call per 256 ids: OS randomness, and ~20% cheaper
# per id than getrandbits + format (list pop/extend are atomic, so threads share it). A forked child
# must not hand out the ids its parent is about to use.
_ID_BATCH: Final = 256
_id_pool: list[str] = []
os.register_at_fork(after_in_child=_id_pool.clear)
# Ids already found valid: the same id is checked at every hop of a trace within a process.
_KNOWN_VALID_MAX: Final = 4096
_known_valid: set[str] = set()
# UUID-form ids already mapped to their W3C form (every span of a trace after the first one hits)
_canonical: dict[str, str] = {}


def current_trace_id() -> str | None:
    """The trace id bound in the current context, else the active OpenTelemetry span's, else None.

    An id bound here (``bind_trace_id``, a decorated call's ``trace_id``) is what the caller asked for
    and wins; without one, the span an OpenTelemetry instrumentation opened names the trace, so the
    exemplars and continuity spans recorded inside it point at the trace the tracing backend holds.
    """
    trace_id = TRACE_ID.get()
    return trace_id if trace_id is not None else otel_trace_id()


def _otel_current_span_reader() -> Callable[[], object]:
    """The cheapest way to read the active OpenTelemetry span (None or INVALID_SPAN when there is none).

    Every latency observation without a bound trace id asks, so the public ``get_current_span`` (four
    calls deep, ~0.5 µs here: a quarter of an observation) is read around: with the default contextvars
    runtime context, its ContextVar and the span key are read directly. Another runtime context
    (``OTEL_PYTHON_CONTEXT``) or a future API without those names gets the public function.
    tests/test_otel_context.py checks both give the same span.
    """
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:  # pragma: no cover - depends on the installed API's internals
        return get_current_span
    var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
    if not isinstance(var, ContextVar):  # pragma: no cover - a non-default runtime context
        return get_current_span
    get = var.get
    return lambda: get().get(_SPAN_KEY)


_current_otel_span: Final = _otel_current_span_reader()


def otel_trace_id() -> str | None:
    """The active OpenTelemetry span's trace id as 32 lowercase hex, or None when no valid span is active."""
    span = _current_otel_span()
    if span is None or span is INVALID_SPAN:  # the common case without OpenTelemetry: no formatting
        return None
    ctx = span.get_span_context()  # type: ignore[attr-defined]
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


@contextmanager
def bind_trace_id(trace_id: str) -> Iterator[str]:
    """Bind ``trace_id`` for the duration of a block (tasks created inside inherit it).

    >>> with bind_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"):
    ...     current_trace_id()
    '4bf92f3577b34da6a3ce929d0e0e4736'
    """
    token = TRACE_ID.set(trace_id)
    try:
        yield trace_id
    finally:
        TRACE_ID.reset(token)


# --- trace ids ---------------------------------------------------------------------------------------
def new_trace_id() -> str:
    """A new random W3C trace-id: 32 lowercase hex digits, never all zeros."""
    try:
        return _id_pool.pop()
    except IndexError:
        digits = os.urandom(16 * _ID_BATCH).hex()
        ids = [digits[i : i + 32] for i in range(0, len(digits), 32)]
        if _ZERO_TRACE_ID in ids:  # all zeros is invalid (odds 2**-128, but the rule is absolute)
            ids = [i for i in ids if i != _ZERO_TRACE_ID]
        _id_pool.extend(ids)
        return new_trace_id()


def new_parent_id() -> str:
    """A new random W3C parent-id (span id): 16 lowercase hex digits, never all zeros."""
    parent_id = os.urandom(8).hex()
    return parent_id if parent_id != _ZERO_PARENT_ID else new_parent_id()


def is_valid_trace_id(value: object) -> bool:
    """True for a lowercase UUID (``8-4-4-4-12``) or 32 lowercase hex digits, not all zeros.

    >>> is_valid_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"), is_valid_trace_id("0" * 32)
    (True, False)
    """
    if type(value) is str and value in _known_valid:
        return True
    if not (
        isinstance(value, str)
        and _TRACE_ID_RE.fullmatch(value) is not None
        and value != _ZERO_TRACE_ID
        and value != _ZERO_UUID
    ):
        return False
    if len(_known_valid) >= _KNOWN_VALID_MAX:
        _known_valid.clear()
    _known_valid.add(value)
    return True


def w3c_trace_id(trace_id: str) -> str:
    """The W3C form (32 lowercase hex) of a valid trace id in either accepted form.

    >>> w3c_trace_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
    '4bf92f3577b34da6a3ce929d0e0e4736'
    """
    if not is_valid_trace_id(trace_id):
        raise ValueError(f"not a valid trace id: {trace_id!r} (want a lowercase UUID or 32 lowercase hex)")
    return trace_id.replace("-", "")


def canonical_trace_id(trace_id: str) -> str:
    """The one id a trace is stored, looked up and exported under, whatever form it arrived in.

    A UUID-form id becomes its W3C form (what ``traceparent`` carries, what ``new_trace_id`` makes), so
    Kyle recording under ``str(uuid4())`` and Joey under the id from the header he received write one
    trace; 32 hex digits in upper case become lower case. Any other string is an id of its own and
    returned as it is.

    >>> canonical_trace_id("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    '3f2504e04f8941d39a0c0305e82c3301'
    >>> canonical_trace_id("abc-123")
    'abc-123'
    """
    n = len(trace_id)
    if n == 32:
        # a W3C id printed in upper case names the same trace: lower case, as traceparent carries it
        if trace_id.islower() or _HEX32_RE.fullmatch(trace_id) is None:
            return trace_id
        return trace_id.lower()
    if n != 36:
        return trace_id
    canonical = _canonical.get(trace_id)
    if canonical is not None:
        return canonical  # the same str object at every hop: its hash is computed once
    # UUID-shaped: dashes at 8, 13, 18 and 23 and nowhere else. The digits are not checked (a regex or a
    # character-set test costs more than the whole mapping): an id of that shape and the same id without
    # its dashes name one trace whatever its characters are. Lower case, as W3C ids are: a UUID printed
    # in upper case (RFC 4122 allows it on input) still names the trace its traceparent carries.
    if trace_id[8] == trace_id[13] == trace_id[18] == trace_id[23] == "-":
        digits = trace_id.replace("-", "").lower()
        if len(digits) == 32:
            if len(_canonical) >= _KNOWN_VALID_MAX:
                _canonical.clear()
            _canonical[trace_id] = digits
            return digits
    return trace_id


# --- W3C traceparent ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed W3C ``traceparent``: version, trace-id, parent-id and trace-flags."""

    trace_id: str
    parent_id: str
    flags: int = 0x01
    version: int = 0

    @property
    def sampled(self) -> bool:
        """The ``sampled`` trace flag."""
        return bool(self.flags & 0x01)

    def header(self) -> str:
        """The header value to send on; always version 00, the version this module speaks."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def parse_traceparent(value: object) -> TraceParent | None:
    """Parse a ``traceparent`` header value per W3C Trace Context; None when it is invalid.

    Invalid: version ``ff``; a field of the wrong length or not lowercase hex; an all-zero trace-id or
    parent-id; version 00 with anything after the flags; a later version whose extra data does not
    start with ``-``. Surrounding spaces and tabs (HTTP optional whitespace) are ignored.

    >>> parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").sampled
    True
    >>> parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None
    True
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT_RE.fullmatch(value.strip(_HTTP_WHITESPACE))
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16), int(version, 16))


def format_traceparent(trace_id: str, parent_id: str | None = None, *, sampled: bool = True) -> str:
    """A version-00 ``traceparent`` for ``trace_id`` (either accepted form); a new parent-id by default.

    >>> format_traceparent("4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "00f067aa0ba902b7", sampled=False)
    '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'
    """
    if parent_id is None:
        parent_id = new_parent_id()
    elif not (
        isinstance(parent_id, str)
        and len(parent_id) == 16
        and re.fullmatch(r"[0-9a-f]{16}", parent_id, re.ASCII)
        and parent_id != _ZERO_PARENT_ID
    ):
        raise ValueError(f"not a valid W3C parent-id: {parent_id!r} (want 16 lowercase hex, not all zeros)")
    return TraceParent(w3c_trace_id(trace_id), parent_id, 0x01 if sampled else 0x00).header()


def current_traceparent(*, sampled: bool = True) -> str | None:
    """A ``traceparent`` for the next hop of the bound trace (new parent-id), or None if none is bound.

    An invalid bound id also gives None: the next hop then starts a trace of its own. Without a bound
    id, inside an active OpenTelemetry span, the header names that span (its trace id, its span id as
    the parent-id, its trace flags), which is what OpenTelemetry's own propagator would inject.
    """
    trace_id = TRACE_ID.get()
    if trace_id is None:
        span = get_current_span()
        if span is INVALID_SPAN:
            return None
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    if not is_valid_trace_id(trace_id):
        return None
    return format_traceparent(trace_id, sampled=sampled)


def traceparent_from_headers(headers: Mapping[str, object]) -> object:
    """The ``traceparent`` value of a headers mapping (names compared case-insensitively), or None."""
    value = headers.get(TRACEPARENT_HEADER)
    if value is not None:
        return value
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == TRACEPARENT_HEADER:
            return value
    return None


# --- executors -----------------------------------------------------------------------------------------
def in_current_context(func: Callable[P, T]) -> Callable[P, T]:
    """Wrap ``func`` to run in a copy of the caller's context (for threads and ``executor.submit``).

    The context is captured now; each call runs in a fresh copy of it, so the wrapper may run in
    several threads at once (one ``Context`` cannot be entered twice).
    """
    ctx = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return ctx.copy().run(func, *args, **kwargs)

    return run


async def run_in_executor(executor: Executor | None, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Like ``loop.run_in_executor`` but ``func`` sees the caller's context (its trace id), and takes kwargs.

    Thread pools only: a context cannot be sent to another process, so a ``ProcessPoolExecutor`` raises
    ``TypeError`` (pass the trace id as an argument there).

    >>> async def handle(signal):
    ...     return await run_in_executor(None, score, signal)   # score() sees current_trace_id()
    """
    if isinstance(executor, ProcessPoolExecutor):
        raise TypeError(
            "run_in_executor copies the context into the worker: that needs a thread pool; "
            "pass the trace id as an argument to a process pool"
        )
    ctx = contextvars.copy_context()
    call = functools.partial(ctx.run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
