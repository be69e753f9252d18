"""The loop in the background: feeding the service's own collector, or running in a thread of its own.

``ark-obs serve --synthetic`` and the tests use these. The service is known only by the protocol the
hook reads (its settings and collector), so this package never imports the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

from ark_obs.metrics import MetricsCollector
from ark_obs.synthetic.config import SyntheticConfig
from ark_obs.synthetic.loop import run_loop
from ark_obs.synthetic.report import SyntheticReport

__all__ = ["ServiceLike", "ServiceSettings", "SyntheticHandle", "background_hook", "service_urls", "start_background"]

log = logging.getLogger("ark_obs.synthetic")


class ServiceSettings(Protocol):
    """The service settings the background loop reads."""

    @property
    def heartbeat_interval_seconds(self) -> float:
        """How often the service expects a heartbeat from each agent."""
        ...

    @property
    def bind_url(self) -> str:
        """Where the service listens (the URLs the hook announces)."""
        ...


class ServiceLike(Protocol):
    """What a background hook gets from the service (``ark_obs.app.Service``): its settings and collector."""

    @property
    def settings(self) -> ServiceSettings:
        """The settings the service runs with."""
        ...

    @property
    def collector(self) -> MetricsCollector:
        """The collector the service serves; the loop records on it."""
        ...


def background_hook(
    config: SyntheticConfig | None = None, *, announce: Callable[[str], None] | None = None
) -> Callable[[ServiceLike], Awaitable[None]]:
    """A ``create_app(..., background=[...])`` hook feeding the service's own collector until shutdown.

    Without ``config``: the seed's loop (1 pass/s, 5% known-bad actions, no faults) at the service's
    heartbeat interval. Once the first pass is through, ``announce`` (default: print to stderr) gets
    the URLs of the status page, /metrics, /slos and that pass' trace.
    """

    async def synthetic_loop(service: ServiceLike) -> None:
        settings = service.settings
        cfg = config or SyntheticConfig(
            duration_seconds=None, heartbeat_interval_seconds=settings.heartbeat_interval_seconds
        )
        base = settings.bind_url

        def first(trace_id: str) -> None:
            (announce or _print_err)(service_urls(base, trace_id, cfg.rate))

        report = await run_loop(cfg, service.collector, on_first_pass=first)
        log.info(
            "synthetic loop ended: %d passes, failed criteria: %s", report.passes, ", ".join(report.failed) or "none"
        )

    return synthetic_loop


def service_urls(base: str, trace_id: str, rate: float = 1.0) -> str:
    """The lines ``make run`` prints: where to look."""
    return (
        f"ark-obs is up, fed by the synthetic loop ({rate:g} pass{'' if rate == 1 else 'es'}/s):\n"
        f"  status page    {base}/\n"
        f"  metrics        {base}/metrics\n"
        f"  SLOs           {base}/slos\n"
        f"  a trace        {base}/traces/{trace_id}\n"
        f"  stop with Ctrl-C"
    )


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SyntheticHandle:
    """A loop running in a thread of its own: ``stop()`` ends it and returns its report."""

    def __init__(self, collector: MetricsCollector, config: SyntheticConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.report: SyntheticReport | None = None
        self.error: BaseException | None = None
        self.first_trace_id: str | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(collector, config), name="ark-obs-synthetic", daemon=True
        )
        self._thread.start()
        self._started.wait()

    def _run(self, collector: MetricsCollector, config: SyntheticConfig) -> None:
        asyncio.set_event_loop(self._loop)

        def first(trace_id: str) -> None:
            self.first_trace_id = trace_id

        async def main() -> SyntheticReport:
            self._started.set()
            return await run_loop(config, collector, stop=self._stop, on_first_pass=first)

        try:
            self.report = self._loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self._started.set()
        finally:
            self._loop.close()

    @property
    def running(self) -> bool:
        """Whether the loop still runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> SyntheticReport | None:
        """Stop scheduling passes, let the ones in flight finish, and return the report."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        return self.report

    def join(self, timeout: float | None = None) -> SyntheticReport | None:
        """Wait for a run with a duration to end on its own."""
        self._thread.join(timeout)
        return self.report


def start_background(collector: MetricsCollector, config: SyntheticConfig) -> SyntheticHandle:
    """Start the loop in a daemon thread with its own event loop, recording on ``collector``."""
    return SyntheticHandle(collector, config)
