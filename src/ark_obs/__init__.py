"""ark-obs: the observability layer of ARK.

>>> from ark_obs import metrics
>>> metrics.increment_counter("graveyard_validations_total")
"""

from ark_obs import metrics
from ark_obs.context import bind_trace_id, current_trace_id
from ark_obs.instrumentation import MetricsContext, instrument_agent_method, with_trace_id
from ark_obs.metrics import MetricsCollector, get_collector

__all__ = [
    "MetricsCollector",
    "MetricsContext",
    "bind_trace_id",
    "current_trace_id",
    "get_collector",
    "instrument_agent_method",
    "metrics",
    "with_trace_id",
]
__version__ = "0.1.0"
