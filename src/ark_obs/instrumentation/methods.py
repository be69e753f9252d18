"""The decorators: ``instrument_agent_method`` (latency, calls, errors, cancellations) and ``with_trace_id``.

One concept read top to bottom, and longer than most modules for it: the decorator picks one of three
wrappers (plain, traced, with an OpenTelemetry span), each written out in full rather than composed,
because on the hot path every extra call or closure costs what the raw Prometheus client costs
(bench/bench_instrumentation.py).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final, cast, overload

from opentelemetry import trace as otel_api

from ark_obs import catalog
from ark_obs.catalog import Kind, MetricSpec
from ark_obs.context import (
    TRACE_ID,
    is_valid_trace_id,
    new_parent_id,
    new_trace_id,
    otel_trace_id,
    w3c_trace_id,
)
from ark_obs.instrumentation._common import (
    _INJECTOR_ATTR,
    _MAX_CACHED_CLASSES,
    AGENT_LABEL,
    ENV_OTEL_SPANS,
    METHOD_LABEL,
    TRACE_ID_PARAM,
    F,
    _CancelledError,
    _check_decoratable,
    _is_async,
    _name,
    log,
)
from ark_obs.instrumentation.trace_ids import (
    _TraceInjector,
)
from ark_obs.metrics import MetricsCollector, get_collector
from ark_obs.registry import ArkObsError, LabelError, MetricTypeError


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
