"""Trace context: the trace id of the signal being processed, carried through awaits, tasks and threads.

One ``ContextVar`` holds it (the model is ``structlog.contextvars``); every latency observation made
while one is bound carries it as an exemplar.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final

TRACE_ID: Final[ContextVar[str | None]] = ContextVar("ark_obs_trace_id", default=None)


def current_trace_id() -> str | None:
    """Return the trace id bound in the current context, or None."""
    return TRACE_ID.get()


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
