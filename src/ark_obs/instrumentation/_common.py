"""What the decorators share: names and constants, the once-only log, decoratability checks."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any, Final, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ark_obs")

TRACE_ID_PARAM: Final = "trace_id"
TRACEPARENT_PARAM: Final = "traceparent"
HEADERS_PARAM: Final = "headers"
AGENT_LABEL: Final = "agent"
METHOD_LABEL: Final = "method"
# per-class recorder cache bound: classes made at run time must not pin memory without limit
_MAX_CACHED_CLASSES: Final = 1024
# Read at decoration time when otel_span is not given: agents turn OpenTelemetry spans on by configuration
# (name matches ark_obs.settings' otel_spans).
ENV_OTEL_SPANS: Final = "ARK_OBS_OTEL_SPANS"
_NEVER: Final = sys.maxsize  # "no such positional parameter": len(args) is never above it
_INJECTOR_ATTR: Final = "__ark_trace_injector__"
_CancelledError = asyncio.CancelledError
_logged: set[str] = set()


def _name(func: object) -> str:
    qualname = getattr(func, "__qualname__", None)
    if qualname is None:
        return repr(func)
    return f"{getattr(func, '__module__', '?')}.{qualname}"


def _log_once(key: str, message: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(message, *args)


def _check_decoratable(func: object, decorator: str, metrics: str = "") -> None:
    """Raise a clear TypeError for what the decorators cannot wrap (at decoration time)."""
    about = f" ({metrics})" if metrics else ""
    if isinstance(func, (staticmethod, classmethod)):
        raise TypeError(
            f"@{decorator}{about} on {_name(func.__func__)}: put it below @{type(func).__name__}, "
            "so it wraps the function itself"
        )
    if not callable(func):
        raise TypeError(f"@{decorator}{about} needs a function or method, got {func!r}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"@{decorator}{about} on {_name(func)}: generators are not supported (the wrapper would "
            "only see the generator being created, not the work done while iterating it)"
        )


def _is_async(func: object) -> bool:
    """True for an ``async def`` function or method, or an object whose ``__call__`` is one."""
    call = getattr(type(func), "__call__", None)  # noqa: B004 -- the method itself, to ask if it is async
    return inspect.iscoroutinefunction(func) or (not inspect.isroutine(func) and inspect.iscoroutinefunction(call))
