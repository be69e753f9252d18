"""Agent instrumentation: one decorator times and counts a method, another gives it a trace id.

>>> from ark_obs.instrumentation import instrument_agent_method, with_trace_id
>>> class Kyle:
...     @instrument_agent_method(
...         latency_metric="kyle_process_latency_ms",
...         counter_metric="kyle_signals_processed_total",
...     )
...     @with_trace_id
...     async def process_signal(self, signal, trace_id):
...         return {"signal": signal, "trace_id": trace_id}

Both work on sync and async functions and methods. On an ``async def`` the awaited work is timed (not
the creation of the coroutine, which is what prometheus_client's decorators time). Stacked as above,
the two fuse into one wrapper: the trace id is bound before the clock starts and until the latency is
observed, so the observation carries it as an exemplar.

Where a call's trace id comes from, first valid source wins:

1. an explicit ``trace_id`` argument (keyword or positional);
2. the trace id bound in the current context (an enclosing ``with_trace_id`` call, ``bind_trace_id``,
   ``MetricsContext``);
3. the trace id of the active OpenTelemetry span, if one is active;
4. an incoming W3C ``traceparent``: a ``traceparent`` argument (a header value; taken out of the call
   unless the function declares that parameter), else a ``headers`` argument that is a mapping with a
   ``traceparent`` key (any case; the mapping is passed on untouched);
5. a new trace id (``ark_obs.context.new_trace_id``).

Each malformed value met on the way is counted in ``ark_traceparent_invalid_total`` and skipped; it
never raises into the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from time import perf_counter
from types import TracebackType
from typing import Any, Final, TypeVar, cast, overload

from opentelemetry import trace as otel_api

from ark_obs import catalog
from ark_obs.catalog import Kind, MetricSpec
from ark_obs.context import (
    TRACE_ID,
    bind_trace_id,
    current_trace_id,
    current_traceparent,
    format_traceparent,
    in_current_context,
    is_valid_trace_id,
    new_parent_id,
    new_trace_id,
    otel_trace_id,
    parse_traceparent,
    run_in_executor,
    traceparent_from_headers,
    w3c_trace_id,
)
from ark_obs.metrics import MetricsCollector, get_collector
from ark_obs.registry import ArkObsError, LabelError, MetricTypeError

__all__ = [
    "MetricsContext",
    "bind_trace_id",
    "current_trace_id",
    "current_traceparent",
    "format_traceparent",
    "in_current_context",
    "instrument_agent_method",
    "new_trace_id",
    "parse_traceparent",
    "run_in_executor",
    "track_state_operation",
    "with_trace_id",
]

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


# --- trace ids ---------------------------------------------------------------------------------------
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


@overload
def with_trace_id(func: F, /) -> F: ...
@overload
def with_trace_id(*, collector: MetricsCollector | None = None) -> Callable[[F], F]: ...
def with_trace_id(func: F | None = None, /, *, collector: MetricsCollector | None = None) -> F | Callable[[F], F]:
    """Give each call a ``trace_id`` keyword argument and bind it in the context for the call.

    Use bare (``@with_trace_id``) or with the collector that counts malformed ids
    (``@with_trace_id(collector=c)``; default: the instrumenting decorator's collector when stacked
    under ``instrument_agent_method``, else ``get_collector()``). See the module docstring for where the
    trace id comes from.
    """
    if func is None:
        return lambda f: _with_trace_id(f, collector)
    return _with_trace_id(func, collector)


def _with_trace_id(func: F, collector: MetricsCollector | None) -> F:
    _check_decoratable(func, "with_trace_id")
    injector = _TraceInjector(func, collector)
    wrapper = _traced_wrapper(func, _UNINSTRUMENTED, injector)
    functools.update_wrapper(wrapper, func)
    injector.wrapper = wrapper
    setattr(wrapper, _INJECTOR_ATTR, injector)
    return cast(F, wrapper)


# --- metrics for instrumented methods ----------------------------------------------------------------
def _noop(*_: object) -> None:
    """Stands in for a metric that was not asked for."""


class _Recorders:
    """The metric children one (agent, method) records on, resolved once."""

    __slots__ = ("_cancelled", "_errors", "agent", "inc", "method", "observe")

    def __init__(
        self,
        agent: str,
        method: str,
        observe: Callable[[float], None],
        inc: Callable[[], None],
        errors: Any,
        cancelled: Any,
    ) -> None:
        self.agent = agent
        self.method = method
        self.observe = observe
        self.inc = inc
        self._errors = errors
        self._cancelled = cancelled

    def failed(self, exc: BaseException, elapsed_s: float) -> None:
        """A call raised: its latency and count are recorded as usual, plus the exception type."""
        try:
            self.observe(elapsed_s * 1000.0)
            self.inc()
            self._errors.labels(self.agent, self.method, type(exc).__name__).inc()
        except Exception:  # recording must never replace the agent's own exception
            log.exception("ark-obs could not record an error of %s.%s", self.agent, self.method)

    def cancelled(self) -> None:
        """A call was cancelled: counted apart, neither an error nor a latency sample."""
        try:
            self._cancelled.inc()
        except Exception:
            log.exception("ark-obs could not record a cancellation of %s.%s", self.agent, self.method)


class _Instruments:
    """The metrics of one decorated function and its recorders per agent name."""

    def __init__(
        self,
        func: Callable[..., Any],
        latency_metric: str | None,
        counter_metric: str | None,
        agent: str | None,
        collector: MetricsCollector,
    ) -> None:
        self.where = _name(func)
        self.method = getattr(func, "__name__", type(func).__name__)
        self.collector = collector
        self.latency = self._metric(latency_metric, Kind.HISTOGRAM, "latency_metric")
        self.counter = self._metric(counter_metric, Kind.COUNTER, "counter_metric")
        self.errors = collector.metric(catalog.ARK_AGENT_ERRORS_TOTAL.name)
        self.cancellations = collector.metric(catalog.ARK_AGENT_CANCELLATIONS_TOTAL.name)
        self.by_agent: dict[str, _Recorders] = {}
        self.by_class: dict[type, _Recorders] = {}
        self.default_agent, self.per_class = self._agent_mode(func, agent)
        # fail now, not at the first call, if a metric has a label we cannot fill
        for metric, argument in ((self.latency, "latency_metric"), (self.counter, "counter_metric")):
            if metric is not None:
                self._values(metric, self.default_agent, argument)
        self.fixed = None if self.per_class else self.for_agent(self.default_agent)

    def _metric(self, name: str | None, kind: Kind, argument: str) -> Any:
        if name is None:
            return None
        spec: MetricSpec
        if kind is Kind.HISTOGRAM:
            what, unit = "Latency of", " (ms)"
            make = catalog.latency_ms
        else:
            what, unit = "Finished calls of", ""
            make = catalog.counter
        try:
            if name in self.collector.registry:
                metric = self.collector.metric(name)
                if metric.spec.kind is not kind:
                    raise MetricTypeError(f"it is a {metric.spec.kind}, {argument} needs a {kind}")
                return metric
            spec = make(name, f"{what} {self.where}{unit}.", labels=(AGENT_LABEL, METHOD_LABEL))
            return self.collector.declare(spec)
        except ArkObsError as exc:
            raise type(exc)(f"@instrument_agent_method on {self.where}: {argument}={name!r}: {exc}") from exc
        except ValueError as exc:  # a counter name without _total, a name Prometheus does not allow
            raise ValueError(f"@instrument_agent_method on {self.where}: {argument}={name!r}: {exc}") from exc

    @staticmethod
    def _agent_mode(func: Callable[..., Any], agent: str | None) -> tuple[str, bool]:
        """The agent label: given; else the instance's class for a method; else the defining class or module."""
        if agent is not None:
            return agent, False
        try:
            first = next(iter(inspect.signature(func).parameters), None)
        except (TypeError, ValueError):
            first = None
        parts = getattr(func, "__qualname__", "").split(".")
        owner = parts[-2] if len(parts) >= 2 and parts[-2] != "<locals>" else None
        fallback = owner or str(getattr(func, "__module__", "") or "unknown").rsplit(".", 1)[-1]
        return fallback, first == "self"

    def _values(self, metric: Any, agent: str, argument: str) -> tuple[str, ...]:
        values = []
        for label in metric.spec.labels:
            if label == AGENT_LABEL:
                values.append(agent)
            elif label == METHOD_LABEL:
                values.append(self.method)
            elif label in metric.spec.optional_labels:
                values.append("")
            else:
                raise LabelError(
                    f"@instrument_agent_method on {self.where}: {argument}={metric.spec.name!r} has a label "
                    f"{label!r} the decorator cannot fill (it fills {AGENT_LABEL} and {METHOD_LABEL}); record "
                    "that metric by hand"
                )
        return tuple(values)

    def _child(self, metric: Any, agent: str, argument: str) -> Any:
        if not metric.spec.labels:
            return dict(metric.children())[()]
        return metric.labels(*self._values(metric, agent, argument))

    def for_agent(self, agent: str) -> _Recorders:
        """The recorders for ``agent`` (cached)."""
        rec = self.by_agent.get(agent)
        if rec is None:
            observe = _noop if self.latency is None else self._child(self.latency, agent, "latency_metric").observe
            inc = _noop if self.counter is None else self._child(self.counter, agent, "counter_metric").inc
            cancelled = self.cancellations.labels(agent, self.method)
            rec = _Recorders(agent, self.method, observe, inc, self.errors, cancelled)
            self.by_agent[agent] = rec
        return rec

    def for_call(self, args: tuple[Any, ...]) -> _Recorders:
        """The recorders for a method call: agent = the class name of ``self`` (cached per class)."""
        if not args:  # a method called without self: the call itself will raise TypeError
            return self.for_agent(self.default_agent)
        cls = type(args[0])
        rec = self.for_agent(cls.__name__)
        if len(self.by_class) < _MAX_CACHED_CLASSES:
            self.by_class[cls] = rec
        return rec


class _NullRecorders(_Recorders):
    """Records nothing: ``with_trace_id`` alone is the traced wrapper with nothing to record."""

    def failed(self, exc: BaseException, elapsed_s: float) -> None:
        """Nothing to record."""

    def cancelled(self) -> None:
        """Nothing to record."""


class _NoInstruments:
    """The ``_Instruments`` interface the wrappers use, for ``with_trace_id`` alone."""

    def __init__(self) -> None:
        self.fixed: _Recorders | None = _NullRecorders("", "", _noop, _noop, None, None)
        self.by_class: dict[type, _Recorders] = {}

    def for_call(self, args: tuple[Any, ...]) -> _Recorders:
        """Never called: ``fixed`` is set."""
        assert self.fixed is not None
        return self.fixed


_UNINSTRUMENTED: Final = _NoInstruments()


def instrument_agent_method(
    latency_metric: str | None = None,
    counter_metric: str | None = None,
    *,
    agent: str | None = None,
    collector: MetricsCollector | None = None,
    otel_span: bool | None = None,
    record_span: bool = False,
) -> Callable[[F], F]:
    """Time and count every call of a sync or async function or method, and count its exceptions.

    Each finished call (returned or raised) observes its latency in ms on ``latency_metric`` and
    increments ``counter_metric``; an exception is also counted in
    ``ark_agent_errors_total{agent,method,exception}`` and re-raised as the same object; a cancelled call
    is counted in ``ark_agent_cancellations_total{agent,method}`` only, and the cancellation propagates.
    ``agent`` and ``method`` labels are filled where the metric has them: ``agent`` is the class name of
    ``self`` for a method (the defining class or the module otherwise) unless given; ``method`` is the
    function's name. Metrics not declared yet are declared with those two labels. Everything is
    resolved here, at decoration time, on ``collector`` (default ``get_collector()``).

    ``otel_span=True`` (default: the ``ARK_OBS_OTEL_SPANS`` environment variable, off) opens an
    OpenTelemetry span per call, named after the function, on the globally configured tracer provider
    (none configured: OpenTelemetry's no-op; give the provider a Resource whose ``service.name`` is the
    agent, which is what ``POST /v1/traces`` maps to the agent). The span joins the call's trace
    id (a given or bound one becomes its parent context), so Tempo and ``/traces/{id}`` name one trace;
    an exception marks it ERROR. ``record_span=True`` records the agent's continuity span for the call
    (start, duration, failed on an exception) in ``collector.traces``: no ``record_trace`` call needed.

    >>> class Joey:
    ...     @instrument_agent_method(latency_metric="joey_match_latency_ms")
    ...     def match(self, signal):
    ...         return []
    """
    for value in (latency_metric, counter_metric):
        if callable(value):
            raise TypeError(
                f"@instrument_agent_method needs parentheses: @instrument_agent_method(latency_metric=..., "
                f"counter_metric=...) over {_name(value)}"
            )
        if value is not None and not (isinstance(value, str) and value):
            raise TypeError(f"@instrument_agent_method: metric names are non-empty strings, got {value!r}")
    if latency_metric is not None and latency_metric == counter_metric:
        raise ValueError(
            f"@instrument_agent_method: latency_metric and counter_metric are both {latency_metric!r}; "
            "one metric cannot be a histogram and a counter"
        )
    if agent is not None and not (isinstance(agent, str) and agent):
        raise ValueError(f"@instrument_agent_method: agent must be a non-empty string, got {agent!r}")

    def decorate(func: F) -> F:
        given = {"latency_metric": latency_metric, "counter_metric": counter_metric}
        names = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        _check_decoratable(func, "instrument_agent_method", names)
        injector = getattr(func, _INJECTOR_ATTR, None)
        # right above @with_trace_id, fuse with it: one wrapper, the trace bound while the latency is observed
        if not (isinstance(injector, _TraceInjector) and injector.wrapper is func):
            injector = None
        target: Callable[..., Any] = func if injector is None else injector.func
        instruments = _Instruments(target, latency_metric, counter_metric, agent, collector or get_collector())
        if injector is None:
            wrapper = _plain_wrapper(target, instruments)
        else:
            wrapper = _traced_wrapper(target, instruments, injector.on(instruments.collector))
        if otel_span is None:
            open_span = os.environ.get(ENV_OTEL_SPANS, "").strip().lower() in ("1", "true", "yes", "on")
        else:
            open_span = otel_span
        if open_span or record_span:
            wrapper = _span_wrapper(wrapper, target, instruments, injector, otel=open_span, record=record_span)
        functools.update_wrapper(wrapper, func)
        return cast(F, wrapper)

    return decorate


def _span_wrapper(
    inner: Callable[..., Any],
    func: Callable[..., Any],
    ins: _Instruments,
    injector: _TraceInjector | None,
    *,
    otel: bool,
    record: bool,
) -> Callable[..., Any]:
    """Around the metrics wrapper: an OpenTelemetry span and/or a continuity span per call.

    The trace id is settled here, before the metrics wrapper runs: a given (``trace_id`` argument) or
    bound id becomes the OTel span's parent; without one the new span's own trace id is bound, so the
    exemplar, the continuity span and the OTel span all carry one id.
    """
    # The provider's own tracer, looked up again only when the global provider changes: the ProxyTracer
    # that get_tracer() hands out before a provider is set adds a second context-manager layer per call.
    tracers: dict[int, Any] = {}
    name = getattr(func, "__qualname__", ins.method)
    monitor = ins.collector.traces if record else None
    position = injector.position if injector is not None else -1
    fixed_agent = None if ins.per_class else ins.default_agent
    get_trace, set_trace, reset_trace = TRACE_ID.get, TRACE_ID.set, TRACE_ID.reset

    def given_id(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        tid = None
        if injector is not None:
            tid = kwargs.get(TRACE_ID_PARAM)
            if tid is None and position < len(args):
                tid = args[position]
        if tid is None:
            tid = get_trace()
            if tid is None:
                return None
        return w3c_trace_id(tid) if is_valid_trace_id(tid) else None

    def agent_of(args: tuple[Any, ...]) -> str:
        if fixed_agent is not None:
            return fixed_agent
        return type(args[0]).__name__ if args else ins.default_agent

    def open_span(tid: str | None) -> Any:
        if not otel:
            return contextlib.nullcontext()
        provider = otel_api.get_tracer_provider()
        tracer = tracers.get(id(provider))
        if tracer is None:
            tracers.clear()  # one provider at a time: never a stale id reused by a new object
            tracer = tracers[id(provider)] = provider.get_tracer("ark_obs")
        parent = None
        if tid is not None and otel_trace_id() != tid:
            remote = otel_api.SpanContext(
                int(tid, 16), int(new_parent_id(), 16), is_remote=True, trace_flags=otel_api.TraceFlags(1)
            )
            parent = otel_api.set_span_in_context(otel_api.NonRecordingSpan(remote))
        # no attributes: setting one costs ~35% of an SDK span; the resource's service.name names the agent
        return tracer.start_as_current_span(name, context=parent)

    def span_trace_id(span: Any) -> str | None:
        """The trace id of the span just opened (read from it, not from the context: cheaper)."""
        if span is None:
            return otel_trace_id()
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    if _is_async(func):

        async def spanned_async(*args: Any, **kwargs: Any) -> Any:
            tid = given_id(args, kwargs)
            with open_span(tid) as span:
                token = None
                if tid is None:
                    tid = span_trace_id(span) or new_trace_id()
                    token = set_trace(tid)
                if monitor is None:
                    try:
                        return await inner(*args, **kwargs)
                    finally:
                        if token is not None:
                            reset_trace(token)
                agent = agent_of(args)
                started, start = time.time(), perf_counter()
                try:
                    result = await inner(*args, **kwargs)
                except Exception:
                    monitor.record_span(tid, agent, at=started, duration_ms=(perf_counter() - start) * 1000.0, ok=False)
                    raise
                finally:
                    if token is not None:
                        reset_trace(token)
                monitor.record_span(tid, agent, at=started, duration_ms=(perf_counter() - start) * 1000.0)
                return result

        return spanned_async

    def spanned(*args: Any, **kwargs: Any) -> Any:
        tid = given_id(args, kwargs)
        with open_span(tid) as span:
            token = None
            if tid is None:
                tid = span_trace_id(span) or new_trace_id()
                token = set_trace(tid)
            if monitor is None:
                try:
                    return inner(*args, **kwargs)
                finally:
                    if token is not None:
                        reset_trace(token)
            agent = agent_of(args)
            started, start = time.time(), perf_counter()
            try:
                result = inner(*args, **kwargs)
            except Exception:
                monitor.record_span(tid, agent, at=started, duration_ms=(perf_counter() - start) * 1000.0, ok=False)
                raise
            finally:
                if token is not None:
                    reset_trace(token)
            monitor.record_span(tid, agent, at=started, duration_ms=(perf_counter() - start) * 1000.0)
            return result

    return spanned


# The wrappers below are the per-call hot path: everything they use is resolved into closure cells; a call
# costs a recorder lookup, two perf_counter() reads, one observe, one inc (and a ContextVar set/reset).
def _plain_wrapper(func: Callable[..., Any], ins: _Instruments) -> Callable[..., Any]:
    fixed, by_class, for_call = ins.fixed, ins.by_class, ins.for_call
    cancelled_error = _CancelledError

    if _is_async(func):

        async def instrumented_async(*args: Any, **kwargs: Any) -> Any:
            if fixed is None:
                try:
                    rec = by_class[type(args[0])]
                except (KeyError, IndexError):
                    rec = for_call(args)
            else:
                rec = fixed
            start = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except cancelled_error:
                rec.cancelled()
                raise
            except Exception as exc:
                rec.failed(exc, perf_counter() - start)
                raise
            rec.observe((perf_counter() - start) * 1000.0)
            rec.inc()
            return result

        return instrumented_async

    def instrumented(*args: Any, **kwargs: Any) -> Any:
        if fixed is None:
            try:
                rec = by_class[type(args[0])]
            except (KeyError, IndexError):
                rec = for_call(args)
        else:
            rec = fixed
        start = perf_counter()
        try:
            result = func(*args, **kwargs)
        except cancelled_error:
            rec.cancelled()
            raise
        except Exception as exc:
            rec.failed(exc, perf_counter() - start)
            raise
        rec.observe((perf_counter() - start) * 1000.0)
        rec.inc()
        return result

    return instrumented


def _traced_wrapper(
    func: Callable[..., Any], ins: _Instruments | _NoInstruments, injector: _TraceInjector
) -> Callable[..., Any]:
    fixed, by_class, for_call = ins.fixed, ins.by_class, ins.for_call
    pos, simple, resolve, ambient = injector.position, injector.simple, injector.resolve, injector.ambient
    get_trace, set_trace, reset_trace = TRACE_ID.get, TRACE_ID.set, TRACE_ID.reset
    mint, valid, otel = new_trace_id, is_valid_trace_id, otel_trace_id
    cancelled_error = _CancelledError

    # Trace id, inline for a call without keywords: the bound id is reused without binding it again;
    # otherwise a new one is bound. Keywords or a positional trace_id take the full rules (resolve).
    if _is_async(func):

        async def instrumented_async(*args: Any, **kwargs: Any) -> Any:
            if fixed is None:
                try:
                    rec = by_class[type(args[0])]
                except (KeyError, IndexError):
                    rec = for_call(args)
            else:
                rec = fixed
            tid: str | None
            if kwargs or len(args) > pos:
                args, tid = resolve(args, kwargs)
                token = set_trace(tid)
            else:
                tid = get_trace()
                if tid is None and simple:
                    tid = otel() or mint()
                    token = set_trace(tid)
                elif tid is not None and valid(tid):
                    token = None
                else:
                    tid = ambient(args, kwargs, None)
                    token = set_trace(tid)
                kwargs[TRACE_ID_PARAM] = tid
            start = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except cancelled_error:
                rec.cancelled()
                raise
            except Exception as exc:
                rec.failed(exc, perf_counter() - start)
                raise
            else:
                rec.observe((perf_counter() - start) * 1000.0)  # still bound: carries the exemplar
                rec.inc()
                return result
            finally:
                if token is not None:
                    reset_trace(token)

        return instrumented_async

    def instrumented(*args: Any, **kwargs: Any) -> Any:
        if fixed is None:
            try:
                rec = by_class[type(args[0])]
            except (KeyError, IndexError):
                rec = for_call(args)
        else:
            rec = fixed
        tid: str | None
        if kwargs or len(args) > pos:
            args, tid = resolve(args, kwargs)
            token = set_trace(tid)
        else:
            tid = get_trace()
            if tid is None and simple:
                tid = otel() or mint()
                token = set_trace(tid)
            elif tid is not None and valid(tid):
                token = None
            else:
                tid = ambient(args, kwargs, None)
                token = set_trace(tid)
            kwargs[TRACE_ID_PARAM] = tid
        start = perf_counter()
        try:
            result = func(*args, **kwargs)
        except cancelled_error:
            rec.cancelled()
            raise
        except Exception as exc:
            rec.failed(exc, perf_counter() - start)
            raise
        else:
            rec.observe((perf_counter() - start) * 1000.0)
            rec.inc()
            return result
        finally:
            if token is not None:
                reset_trace(token)

    return instrumented


# --- operations and state writes ---------------------------------------------------------------------
class MetricsContext:
    """Time a block as one operation of an agent, with its trace id bound; ``with`` or ``async with``.

    On exit the latency (ms) goes to ``ark_operation_latency_ms{operation,agent,outcome}`` with outcome
    ``success`` or ``error``; an exception is also counted in ``ark_agent_errors_total`` (``method`` =
    the operation) and propagates; a cancellation is counted in ``ark_agent_cancellations_total`` only.
    The trace id: the given one if valid, else the bound one, else a new one.

    >>> async def ingest(signal, trace_id):
    ...     async with MetricsContext(operation_name="kyle_signal_ingestion", agent_name="Kyle",
    ...                               trace_id=trace_id) as ctx:
    ...         ctx.set_result(await parse(signal))
    ...     return ctx.result
    """

    def __init__(
        self,
        operation_name: str,
        agent_name: str,
        trace_id: str | None = None,
        *,
        collector: MetricsCollector | None = None,
    ) -> None:
        for argument, value in (("operation_name", operation_name), ("agent_name", agent_name)):
            if not (isinstance(value, str) and value):
                raise ValueError(f"MetricsContext: {argument} must be a non-empty string, got {value!r}")
        self.operation_name = operation_name
        self.agent_name = agent_name
        self.collector = collector or get_collector()
        self._given = trace_id
        self._latency = self.collector.metric(catalog.ARK_OPERATION_LATENCY_MS.name)
        self.trace_id: str | None = None
        self.result: Any = None
        self.outcome: str | None = None
        self.latency_ms: float | None = None
        self._token: Any = None
        self._start = 0.0

    def set_result(self, result: Any) -> Any:
        """Keep the operation's result (``ctx.result``) and return it."""
        self.result = result
        return result

    def __enter__(self) -> MetricsContext:
        if self._token is not None:
            raise RuntimeError(f"MetricsContext {self.operation_name!r} is already entered")
        self.trace_id = _resolve_given(self._given, self.collector)
        self.result = self.outcome = self.latency_ms = None
        self._token = TRACE_ID.set(self.trace_id)
        self._start = perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed_ms = (perf_counter() - self._start) * 1000.0
        try:
            self._record(exc_type, elapsed_ms)
        except Exception:  # recording must never replace the block's own exception
            log.exception("ark-obs could not record operation %s of %s", self.operation_name, self.agent_name)
        finally:
            TRACE_ID.reset(self._token)
            self._token = None

    def _record(self, exc_type: type[BaseException] | None, elapsed_ms: float) -> None:
        op, agent = self.operation_name, self.agent_name
        if exc_type is None:
            self.outcome, self.latency_ms = "success", elapsed_ms
            self._latency.labels(op, agent, "success").observe(elapsed_ms)
        elif issubclass(exc_type, _CancelledError):
            self.outcome = "cancelled"
            self.collector.metric(catalog.ARK_AGENT_CANCELLATIONS_TOTAL.name).labels(agent, op).inc()
        elif issubclass(exc_type, Exception):
            self.outcome, self.latency_ms = "error", elapsed_ms
            self._latency.labels(op, agent, "error").observe(elapsed_ms)
            errors = self.collector.metric(catalog.ARK_AGENT_ERRORS_TOTAL.name)
            errors.labels(agent, op, exc_type.__name__).inc()
        # KeyboardInterrupt, SystemExit: the process is stopping, not the operation failing

    async def __aenter__(self) -> MetricsContext:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def track_state_operation(
    operation: str,
    agent: str,
    latency_ms: float,
    *,
    key: str | None = None,
    revision: int | None = None,
    collector: MetricsCollector | None = None,
) -> None:
    """Observe a Mutable Core state operation's latency on ``state_write_latency_ms{operation,agent}``.

    With ``key`` and ``revision`` (the key's revision number after the write), also check that the
    key's revisions are contiguous (``ark_obs.traces.revisions``): gaps, regressions and duplicates are
    counted in ``ark_state_revision_anomalies_total{agent,kind}`` and listed at ``GET /state/anomalies``.

    >>> track_state_operation("write", "Kenny", 3.2)
    >>> track_state_operation("write", "Kenny", 3.2, key="position:AAPL", revision=8)
    """
    c = collector or get_collector()
    c.metric(catalog.STATE_WRITE_LATENCY_MS.name).labels(operation, agent).observe(latency_ms)
    if key is None and revision is None:
        return
    if key is None or revision is None:
        raise TypeError("track_state_operation: key and revision go together (give both or neither)")
    c.revisions.observe(agent, key, revision)
