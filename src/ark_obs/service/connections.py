"""Connections that never finish a request are closed: deadlines per request, on top of uvicorn's h11.

uvicorn closes a kept-alive connection that stays idle after a response (``timeout_keep_alive``), but
not one that never sends its first request, sends its headers a byte at a time, or never finishes its
body: each holds a file descriptor forever, and enough of them starve ``/healthz`` of descriptors. This
protocol gives every request two deadlines:

- its headers must be complete within ``header_timeout`` of the connection opening (or of the first
  byte of a later request on a kept-alive connection);
- its body must be complete within ``body_timeout`` of the headers;
- its body must not come in more than ``MAX_TINY_CHUNKS`` chunks averaging under ``TINY_CHUNK_BYTES``:
  h11 parses each chunk in Python, so a megabyte sent a byte per chunk costs seconds of event loop.

A connection past a deadline is closed and counted by reason (``idle``, ``slow_headers``,
``slow_body``); the closures, and resource exhaustion reported by the event loop ("Too many open
files" on accept), are logged once per ``LOG_INTERVAL_SECONDS``, not once per event.

The connection cap (``ARK_OBS_MAX_CONNECTIONS``, uvicorn's ``limit_concurrency``) is kept below the
process' open-file limit (``connection_budget``: the soft limit is raised toward the hard one where
needed, and the cap clamped to leave ``HEALTH_HEADROOM + FD_RESERVE + ACCEPT_BATCHES * ACCEPT_BACKLOG``
descriptors). At the cap:

- a new connection closes the oldest connection that has not sent a byte yet (counted ``idle``), so
  idle connections cannot hold the cap against clients that send requests;
- ``GET /healthz`` is still answered (other requests get uvicorn's 503), on up to ``HEALTH_HEADROOM``
  connections past the cap; past those a new connection is closed at once (``over_capacity``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("ark_obs")

LOG_INTERVAL_SECONDS: Final = 60.0
MAX_TINY_CHUNKS: Final = 256
TINY_CHUNK_BYTES: Final = 64
CloseReason = str  # idle, slow_headers, slow_body, tiny_chunks; over_capacity (a 503, or a closure past the headroom)
# connections past the cap still accepted, so /healthz answers while the cap is reached
HEALTH_HEADROOM: Final = 32
# descriptors kept for everything but client connections: the listening socket, the trace store's
# connections (a cluster's pools), log files, the event loop's own
FD_RESERVE: Final = 64
# uvicorn's backlog, which asyncio also takes as how many connections it accepts in one go before any
# of them is looked at (uvicorn's default, 2048, accepted a whole flood at once: EMFILE). A connection is
# seen (connection_made) two loop iterations after its accept and a closed one released one later, while
# each iteration may accept a batch: ACCEPT_BATCHES batches are kept in the budget. The kernel's queue of
# connections waiting to be accepted (no descriptor of ours) stays LISTEN_QUEUE long: see ListenSocket.
ACCEPT_BACKLOG: Final = 64
LISTEN_QUEUE: Final = 2048
ACCEPT_BATCHES: Final = 4
_KEPT: Final = HEALTH_HEADROOM + FD_RESERVE + ACCEPT_BATCHES * ACCEPT_BACKLOG
MIN_CONNECTIONS: Final = 8
# requests served past the cap: cheap, and what a load balancer needs to see the process alive
_HEALTH_TARGETS: Final = frozenset({b"/healthz"})


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """The connection cap chosen against the open-file limit, and how the limit was set."""

    cap: int
    requested: int
    soft: int  # the soft RLIMIT_NOFILE in force (-1: unlimited)
    hard: int
    raised_from: int | None = None

    def describe(self) -> str:
        """The start-up line: the cap, and the file limit it was chosen against."""
        limit = "unlimited" if self.soft < 0 else str(self.soft)
        hard = "unlimited" if self.hard < 0 else str(self.hard)
        raised = f", raised from {self.raised_from}" if self.raised_from is not None else ""
        clamped = (
            f" (clamped from ARK_OBS_MAX_CONNECTIONS={self.requested}: {_KEPT} descriptors are kept for "
            "/healthz past the cap, connections being accepted and the process' own files)"
            if self.cap < self.requested
            else ""
        )
        return (
            f"ark-obs: connection cap {self.cap}{clamped}; open-file limit {limit}{raised} (hard {hard}); "
            f"/healthz answers on up to {HEALTH_HEADROOM} connections past the cap"
        )


class ListenSocket(socket.socket):
    """A listening socket whose kernel queue is ``LISTEN_QUEUE`` long whatever ``listen`` is asked for, so
    asyncio's accept batch (its backlog argument) can be small without refusing bursts of connections."""

    def listen(self, backlog: int = LISTEN_QUEUE) -> None:
        """Listen with the long queue."""
        super().listen(max(backlog, LISTEN_QUEUE))


def connection_budget(requested: int) -> ConnectionBudget:
    """Raise the soft open-file limit toward ``requested`` connections plus headroom (as far as the hard
    limit allows), then clamp the cap so the connections, the headroom and the reserve fit under it."""
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = requested + _KEPT
    raised_from = None
    if soft != infinity and soft < want:
        target = want if hard == infinity else min(want, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                pass
            else:
                raised_from, soft = soft, target
    cap = requested if soft == infinity else max(MIN_CONNECTIONS, min(requested, soft - _KEPT))
    return ConnectionBudget(
        cap, requested, -1 if soft == infinity else soft, -1 if hard == infinity else hard, raised_from
    )


class RateLimitedLog:
    """Logs the first event of a kind at once, then one summary per interval with how many followed."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._suppressed[kind] += 1
                return
            self._next[kind] = now + self.interval
            more = self._suppressed.pop(kind, 0)
        since = f" (and {more} more in the last {self.interval:g} s)" if more else ""
        log.warning("%s%s; logged at most once per %g s", message, since, self.interval)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a body deadline per request (see the module)."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    # a tuple, not a bare function: a function class attribute would be bound as a method
    on_close: ClassVar[tuple[Callable[[CloseReason], None], ...]] = ()
    report: ClassVar[RateLimitedLog] = RateLimitedLog()
    # connections that have not sent a byte yet, oldest first: the first closed to make room at the cap
    silent: ClassVar[OrderedDict[GuardedH11Protocol, None]] = OrderedDict()

    _deadline: asyncio.TimerHandle | None = None
    _cap: int | None = None
    _phase: str = ""
    _seen_bytes: bool = False
    _chunks: int = 0
    _chunk_bytes: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline: a connection that sends nothing is closed as idle. At the cap, make
        room by closing the oldest silent connection, or past the headroom this one."""
        super().connection_made(transport)
        self._cap = self.limit_concurrency
        self._h11_next_event = self.conn.next_event
        self.conn.next_event = self._next_event  # type: ignore[method-assign]
        cap = self._cap
        if cap is not None and len(self.connections) > cap and not self._make_room(cap):
            return
        self.silent[self] = None
        self._arm("headers", self.header_timeout)

    def _make_room(self, cap: int) -> bool:
        """Close the oldest connection that never sent a byte; False if this one had to be closed instead."""
        silent = self.silent
        while silent:
            oldest = silent.popitem(last=False)[0]
            if not oldest.transport.is_closing():
                oldest._refuse("idle", f"no byte sent, and a new connection came with {cap} open (the cap)")
                return True
        if len(self.connections) > cap + HEALTH_HEADROOM:
            self._refuse("over_capacity", f"{cap} connections (the cap) and {HEALTH_HEADROOM} more are open")
            return False
        return True

    def _next_event(self) -> Any:
        # counts body chunks as h11 parses them, so a body of tiny chunks is cut off after a bounded cost
        event = self._h11_next_event()
        if isinstance(event, h11.Data):
            self._chunks += 1
            self._chunk_bytes += len(event.data)
            if self._chunks > MAX_TINY_CHUNKS and self._chunk_bytes < TINY_CHUNK_BYTES * self._chunks:
                self._refuse(
                    "tiny_chunks", f"a body in over {MAX_TINY_CHUNKS} chunks of under {TINY_CHUNK_BYTES} bytes"
                )
                return h11.PAUSED
        elif isinstance(event, h11.Request):
            self._chunks = self._chunk_bytes = 0
            # uvicorn reads limit_concurrency right after this event: /healthz is answered past the cap
            health = event.method in (b"GET", b"HEAD") and event.target.partition(b"?")[0] in _HEALTH_TARGETS
            self.limit_concurrency = None if health else self._cap
        return event

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        self.silent.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11, then move the deadline to the phase the request is in."""
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm("headers", self.header_timeout)  # the first byte of a later request
        if not self._seen_bytes:
            self.silent.pop(self, None)
        self._seen_bytes = True
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        """Between requests uvicorn's keep-alive timeout applies; a pipelined request starts its own phase."""
        self._disarm()
        self._seen_bytes = False
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout)
        elif state is not h11.IDLE:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to wait for
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = ""

    def _expired(self) -> None:
        phase = self._phase
        self._deadline, self._phase = None, ""
        if self.transport.is_closing():
            return
        if phase == "body":
            reason, limit = "slow_body", self.body_timeout
        elif self._seen_bytes:
            reason, limit = "slow_headers", self.header_timeout
        else:
            reason, limit = "idle", self.header_timeout
        self._refuse(reason, f"no complete request {phase} in {limit:g} s")

    def _refuse(self, reason: CloseReason, why: str) -> None:
        self._disarm()
        for hook in self.on_close:
            hook(reason)
        self.report(reason, f"ark-obs closed a connection ({reason}: {why})")
        self.transport.close()


def guarded_protocol(
    header_timeout: float, body_timeout: float, on_close: Callable[[CloseReason], None]
) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these deadlines and close callback."""
    return type(
        "ArkObsH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "on_close": (on_close,),
            "report": RateLimitedLog(),
            "silent": OrderedDict(),
        },
    )


class OverCapacity(logging.Filter):
    """Counts uvicorn's 503s past ``limit_concurrency`` and logs them once per interval, not per request."""

    MESSAGE: Final = "Exceeded concurrency limit."

    def __init__(self, on_refused: Callable[[CloseReason], None], limit: int) -> None:
        super().__init__()
        self.on_refused = on_refused
        self.limit = limit
        self.report = RateLimitedLog()

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace uvicorn's per-request warning with a count and a rate-limited line."""
        if record.msg != self.MESSAGE:
            return True
        self.on_refused("over_capacity")
        self.report(
            "over_capacity",
            f"ark-obs answered 503: {self.limit} connections or requests are open (ARK_OBS_MAX_CONNECTIONS)",
        )
        return False


class ShutdownSummary(logging.Filter):
    """One line for a stop that had to cancel stuck requests, instead of one traceback per request.

    uvicorn logs "Cancel N running task(s)" and then, for each cancelled request, "Exception in ASGI
    application" with the CancelledError's traceback; the tracebacks say nothing the count does not.
    """

    CANCEL_NOTE: Final = "timeout graceful shutdown exceeded"

    def __init__(self, timeout_seconds: float) -> None:
        super().__init__()
        self.timeout_seconds = timeout_seconds

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the per-request tracebacks; reword uvicorn's count into the summary line."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and self.CANCEL_NOTE in " ".join(map(str, exc.args)):
            return False
        if isinstance(record.msg, str) and record.msg.startswith("Cancel %s running task(s)"):
            count = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = (
                "ark-obs stopped with %s request(s) still running after %g s "
                "(ARK_OBS_SHUTDOWN_TIMEOUT_SECONDS); cancelled them"
            )
            record.args = (count, self.timeout_seconds)
        return True


def quiet_resource_errors(loop: asyncio.AbstractEventLoop, report: RateLimitedLog | None = None) -> None:
    """Make the loop log resource exhaustion (EMFILE on accept, ...) once per interval, without traceback.

    asyncio reports a failed ``accept()`` through the loop's exception handler, with a traceback, every
    time it retries: with the descriptor limit reached that is megabytes of log per minute.
    """
    limited = report or RateLimitedLog()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno is not None and "resource" in str(context.get("message", "")):
            limited("resource", f"ark-obs: {context.get('message')}: {exc.strerror} (errno {exc.errno})")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
