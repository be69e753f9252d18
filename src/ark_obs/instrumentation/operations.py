"""Operations and state writes: ``MetricsContext`` for a block of work, ``track_state_operation`` for state."""

from __future__ import annotations

from time import perf_counter
from types import TracebackType
from typing import Any

from ark_obs import catalog
from ark_obs.context import (
    TRACE_ID,
)
from ark_obs.instrumentation._common import (
    _CancelledError,
    log,
)
from ark_obs.instrumentation.trace_ids import _resolve_given
from ark_obs.metrics import MetricsCollector, get_collector


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
