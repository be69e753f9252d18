"""The built-in deployment of ``ark-obs validate --synthetic``: the synthetic pipeline behind an in-process ark-obs.

The five simulated agents (``ark_obs.synthetic``) process valid signals at ``rate`` passes/s and
heartbeat every interval; the ark-obs app serving their collector is reached over ASGI, so the plan's
evidence is read from the same endpoints as in a real deployment. It provides the default plan's
injections:

- ``bad-actions`` (``count``): that many known-bad actions go through HRM now; ``${trace_id}`` is the last one's;
- ``kenny-errors``: Kenny's executions fail until the step ends;
- ``kill:AGENT``: AGENT stops heartbeating until the step ends (its work goes on, as a hung process' might).

``faults`` break one safeguard each, to prove that validation notices (tests use them):
``hrm-allows`` (HRM approves everything), ``watchdog-off`` (no quarantine ever), ``kill-unnoticed``
(a killed agent keeps heartbeating), ``skip-revision`` (Kenny's state writes skip revisions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from types import TracebackType
from typing import Final

import httpx

from ark_obs.app import create_app
from ark_obs.metrics import MetricsCollector
from ark_obs.settings import Settings
from ark_obs.synthetic import (
    AgentContext,
    InProcessTarget,
    Pipeline,
    PipelineControls,
    RunState,
    SyntheticConfig,
    in_process_collector,
)
from ark_obs.validate.inject import InjectionFailed
from ark_obs.validate.plan import SyntheticInject

__all__ = ["BASE_URL", "FAULTS", "SyntheticDeployment"]

log = logging.getLogger("ark_obs.validate")

FAULTS: Final = ("hrm-allows", "watchdog-off", "kill-unnoticed", "skip-revision")
BASE_URL: Final = "http://synthetic.ark-obs"


class SyntheticDeployment:
    """The synthetic pipeline running in the background, served by an in-process ark-obs app.

    >>> async with SyntheticDeployment(rate=20) as deployment:  # doctest: +SKIP
    ...     async with deployment.client() as client: ...
    """

    name = "synthetic"

    def __init__(
        self,
        *,
        rate: float = 10.0,
        heartbeat_interval_seconds: float = 1.0,
        latency_scale: float = 1.0,
        faults: tuple[str, ...] = (),
        seed: int | None = None,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(unknown)}; faults: {', '.join(FAULTS)}")
        config = SyntheticConfig(
            rate=rate,
            duration_seconds=None,
            bad_share=0.0,  # denials come from the injections only, so each one is accounted for
            latency_scale=latency_scale,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            seed=seed,
            validate_traces=False,
        )
        self.config = config
        self.collector: MetricsCollector = in_process_collector(config)
        self.controls = PipelineControls(
            skip_revision="skip-revision" in faults,
            hrm_allows="hrm-allows" in faults,
            watchdog_off="watchdog-off" in faults,
        )
        self.kill_unnoticed = "kill-unnoticed" in faults
        self.state = RunState()
        ctx = AgentContext(self.collector, config, InProcessTarget(self.collector), random.Random(seed), self.controls)
        self.pipeline = Pipeline(ctx, self.state)
        self.agents = tuple(a.name for a in self.pipeline.agents)
        self.killed: set[str] = set()
        self.app = create_app(Settings(heartbeat_interval_seconds=heartbeat_interval_seconds), self.collector)
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._passes: set[asyncio.Task[str | None]] = set()

    def client(self, timeout: float = 5.0) -> httpx.AsyncClient:
        """An HTTP client of the in-process ark-obs (base URL ``BASE_URL``)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL, timeout=timeout)

    # running ---------------------------------------------------------------------------------------------
    async def __aenter__(self) -> SyntheticDeployment:
        self._beat()  # every agent up before the first step looks
        self._tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._traffic())]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in (*self._tasks, *self._passes):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._passes, return_exceptions=True)
        self.collector.heartbeats.close()
        self.collector.traces.close()

    def _beat(self) -> None:
        for agent in self.agents:
            if agent not in self.killed:
                self.collector.record_heartbeat(agent)
        self.pipeline.hrm.check_drift()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_seconds)
            self._beat()

    async def _pass(self, bad: bool) -> str | None:
        seq = self._seq
        self._seq += 1
        try:
            outcome = await self.pipeline.run_pass(seq, bad)
        except Exception:  # the decorators counted it; the pipeline keeps running
            log.exception("ark-obs validate: a synthetic pass failed")
            return None
        return outcome.trace_id

    async def _traffic(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            n += 1
            task = asyncio.create_task(self._pass(False))
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)
            await asyncio.sleep(max(0.0, start + n / self.config.rate - loop.time()))

    # injections --------------------------------------------------------------------------------------------
    async def inject(self, action: SyntheticInject) -> dict[str, str]:
        """Carry out a synthetic injection; variables for the expectation."""
        kind, _, agent = action.synthetic.partition(":")
        if kind == "bad-actions":
            trace_ids = await asyncio.gather(*(self._pass(True) for _ in range(action.count)))
            done = [t for t in trace_ids if t is not None]
            return {"count": str(len(done)), **({"trace_id": done[-1]} if done else {})}
        if kind == "kenny-errors":
            self.controls.kenny_errors = True
            return {}
        if agent not in self.agents:
            raise InjectionFailed(f"kill:{agent}: no such agent; agents: {', '.join(self.agents)}")
        if not self.kill_unnoticed:
            self.killed.add(agent)
        return {"agent": agent}

    def restore(self) -> None:
        """Kenny healthy again, killed agents back."""
        self.controls.kenny_errors = False
        if self.killed:
            self.killed.clear()
            with contextlib.suppress(Exception):
                self._beat()
