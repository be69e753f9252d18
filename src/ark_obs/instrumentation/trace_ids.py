"""Where a call's trace id comes from: its arguments, a traceparent or headers, the context, or a new one."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

from ark_obs import catalog
from ark_obs.context import (
    TRACE_ID,
    is_valid_trace_id,
    new_trace_id,
    otel_trace_id,
    parse_traceparent,
    traceparent_from_headers,
)
from ark_obs.instrumentation._common import (
    _NEVER,
    HEADERS_PARAM,
    TRACE_ID_PARAM,
    TRACEPARENT_PARAM,
    _log_once,
    _name,
)
from ark_obs.metrics import MetricsCollector, get_collector
from ark_obs.registry import ArkObsError


def _count_invalid(collector: MetricsCollector | None, source: str, value: object) -> None:
    """Count a malformed trace id or traceparent; log the first one. Never raises."""
    with contextlib.suppress(ArkObsError):  # a collector built without the catalogue entry
        (collector or get_collector()).metric(catalog.ARK_TRACEPARENT_INVALID_TOTAL.name).inc()
    _log_once(
        "invalid_trace",
        "ark-obs replaced a malformed %s (%.80r) with another trace id; further ones are only "
        "counted in ark_traceparent_invalid_total",
        source,
        value,
    )


class _TraceInjector:
    """Resolves the trace id of one call of a function decorated with ``with_trace_id``."""

    __slots__ = (
        "collector",
        "consume_traceparent",
        "func",
        "headers_position",
        "position",
        "reads_incoming",
        "simple",
        "traceparent_position",
        "wrapper",
    )

    def __init__(self, func: Callable[..., Any], collector: MetricsCollector | None) -> None:
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError) as exc:
            raise TypeError(f"@with_trace_id on {_name(func)}: cannot read its signature ({exc})") from exc
        var_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
        positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        trace = params.get(TRACE_ID_PARAM)
        if trace is None and not var_keyword:
            raise TypeError(
                f"@with_trace_id on {_name(func)}: it has no {TRACE_ID_PARAM} parameter to receive the trace id"
            )
        if trace is not None and trace.kind not in (trace.POSITIONAL_OR_KEYWORD, trace.KEYWORD_ONLY):
            raise TypeError(
                f"@with_trace_id on {_name(func)}: {TRACE_ID_PARAM} must be an ordinary or keyword-only "
                "parameter, so it can be passed by name"
            )

        def position(name: str) -> int:
            return positional.index(name) if name in positional else _NEVER

        self.func = func
        self.wrapper: object = None
        self.collector = collector
        self.position = position(TRACE_ID_PARAM)
        self.traceparent_position = position(TRACEPARENT_PARAM)
        self.headers_position = position(HEADERS_PARAM)
        # a traceparent the function does not take is accepted by the wrapper and taken out of the call
        self.consume_traceparent = TRACEPARENT_PARAM not in params and not var_keyword
        self.reads_incoming = var_keyword or TRACEPARENT_PARAM in params or HEADERS_PARAM in params
        # no traceparent or headers can come positionally: a call without keywords needs no look-up
        self.simple = self.traceparent_position == _NEVER and self.headers_position == _NEVER

    def on(self, collector: MetricsCollector) -> _TraceInjector:
        """This injector, counting malformed ids on ``collector`` unless it was given one."""
        if self.collector is not None:
            return self
        other = _TraceInjector.__new__(_TraceInjector)
        for slot in _TraceInjector.__slots__:
            setattr(other, slot, getattr(self, slot))
        other.collector = collector
        return other

    def resolve(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
        """The trace id of a call given keyword arguments or a positional ``trace_id``, and its args.

        The id goes into ``kwargs`` unless it was passed positionally.
        """
        incoming = kwargs.pop(TRACEPARENT_PARAM, None) if kwargs and self.consume_traceparent else None
        i = self.position
        tid = args[i] if len(args) > i else kwargs.get(TRACE_ID_PARAM)
        if tid is not None:
            if is_valid_trace_id(tid):
                return args, cast(str, tid)
            _count_invalid(self.collector, "trace_id argument", tid)
        tid = self.ambient(args, kwargs, incoming)
        if len(args) > i:
            return (*args[:i], tid, *args[i + 1 :]), tid
        kwargs[TRACE_ID_PARAM] = tid
        return args, tid

    def ambient(self, args: tuple[Any, ...], kwargs: dict[str, Any], incoming: object) -> str:
        """Sources 2 to 5: the bound trace id, the active OpenTelemetry span's, an incoming traceparent, a new id."""
        tid = TRACE_ID.get()
        if tid is not None:
            if is_valid_trace_id(tid):
                return tid
            _count_invalid(self.collector, "bound trace id", tid)
        tid = otel_trace_id()
        if tid is not None:
            return tid
        if incoming is None and self.reads_incoming:
            incoming = self.incoming(args, kwargs)
        if incoming is not None:
            parsed = parse_traceparent(incoming)
            if parsed is not None:
                return parsed.trace_id
            _count_invalid(self.collector, "traceparent", incoming)
        return new_trace_id()

    def incoming(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        """A traceparent argument, else the traceparent of a headers mapping argument, else None."""
        value = kwargs.get(TRACEPARENT_PARAM)
        if value is None and self.traceparent_position < len(args):
            value = args[self.traceparent_position]
        if value is not None:
            return value
        headers = kwargs.get(HEADERS_PARAM)
        if headers is None and self.headers_position < len(args):
            headers = args[self.headers_position]
        if isinstance(headers, Mapping):
            return traceparent_from_headers(headers)
        return None


def _resolve_given(given: object, collector: MetricsCollector | None) -> str:
    """A given trace id if valid, else the bound one if valid, else a new one (malformed ones counted)."""
    if given is not None:
        if is_valid_trace_id(given):
            return cast(str, given)
        _count_invalid(collector, "trace_id argument", given)
    tid = TRACE_ID.get()
    if tid is not None:
        if is_valid_trace_id(tid):
            return tid
        _count_invalid(collector, "bound trace id", tid)
    return otel_trace_id() or new_trace_id()
