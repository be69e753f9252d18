"""ark-obs: the observability layer of ARK.

>>> from ark_obs import metrics
>>> metrics.increment_counter("graveyard_validations_total")
"""

import os

import prometheus_client

# ``*_created`` series double the series of every counter and histogram in the text format and carry
# nothing the ARK rules or dashboards read. prometheus_client switches them per process only (no
# per-registry option), and reads its environment variable at import: an explicit
# PROMETHEUS_DISABLE_CREATED_SERIES=false keeps them, anything else (unset included) drops them.
if "PROMETHEUS_DISABLE_CREATED_SERIES" not in os.environ:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

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
