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

Modules: ``methods`` (``instrument_agent_method``, ``with_trace_id``), ``trace_ids`` (where a call's
trace id comes from), ``operations``
(``MetricsContext``, ``track_state_operation``), ``_common`` (what they share). The trace context
helpers re-exported here live in ``ark_obs.context``.
"""

from ark_obs.context import (
    bind_trace_id,
    current_trace_id,
    current_traceparent,
    format_traceparent,
    in_current_context,
    new_trace_id,
    parse_traceparent,
    run_in_executor,
)
from ark_obs.instrumentation.methods import instrument_agent_method, with_trace_id
from ark_obs.instrumentation.operations import MetricsContext, track_state_operation

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
