"""The fleet's numbers for the status page: the shipped recording rules, read from Prometheus.

>>> source = FleetSource("http://127.0.0.1:9090")     # ARK_OBS_PROMETHEUS_URL  # doctest: +SKIP
>>> out = await source.read()                          # FleetOut, never raises  # doctest: +SKIP

HRM denials and Watchdog quarantines are counters in the agents' processes, which Prometheus scrapes and
this service does not see; availability and SLO burn across replicas are the rules' job. With a
Prometheus configured, those tiles come from the same series Grafana and the alerts read, each naming
its rule; an unreachable Prometheus is a state of its own (``reachable`` false, with why), never a blank
or a stale number. Each read is one round of instant queries, bounded by ``timeout`` seconds, shared by
every page refresh within ``cache_seconds`` (1 s), so viewers do not multiply the load on Prometheus.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Final

from pydantic import BaseModel, Field

from ark_obs._redact import redact_url
from ark_obs.canary.prometheus import PrometheusClient, PrometheusError

__all__ = ["QUERIES", "FleetOut", "FleetSource"]

TIMEOUT_SECONDS: Final = 2.0
CACHE_SECONDS: Final = 1.0  # every viewer's refresh within this long shares one round of queries

# tile -> (PromQL over the shipped recording rules, what the tile says it shows)
QUERIES: Final = {
    "quarantines": ("sum(ark:watchdog_quarantines:increase5m)", "ark:watchdog_quarantines:increase5m"),
    "denials": ("sum(ark:hrm_denials:rate1m)", "ark:hrm_denials:rate1m"),
    "availability": ("min(ark:availability:ratio_5m)", "ark:availability:ratio_5m"),
    "burn_5m": ("max by (slo) (ark:slo_burn_rate:ratio_rate5m)", "ark:slo_burn_rate:ratio_rate5m"),
    "burn_1h": ("max by (slo) (ark:slo_burn_rate:ratio_rate1h)", "ark:slo_burn_rate:ratio_rate1h"),
}


class FleetOut(BaseModel):
    """What the recording rules say now; None: the rule returned no series (no data, or ark-obs not scraped)."""

    prometheus: str = Field(description="the Prometheus asked (no credential)")
    reachable: bool
    error: str | None = Field(description="why the numbers are missing, when they are")
    since: float | None = Field(description="Unix time (s) Prometheus stopped answering, while unreachable")
    quarantines: int | None = Field(description="Watchdog quarantines in the last 5 min, every process")
    denials_per_second: float | None = Field(description="HRM denials per second over the last minute, every process")
    availability: float | None = Field(description="availability over 5 min (the lowest track)")
    burn_rates: dict[str, dict[str, float]] = Field(description="slo -> window -> burn rate (the highest track)")
    sources: dict[str, str] = Field(description="tile -> where its number comes from")


class FleetSource:
    """Reads the fleet's numbers from the Prometheus at ``url``; remembers since when it fails."""

    def __init__(self, url: str, timeout: float = TIMEOUT_SECONDS, cache_seconds: float = CACHE_SECONDS) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._down_since: float | None = None
        self._last: tuple[float, FleetOut] | None = None
        self._lock = asyncio.Lock()

    async def read(self) -> FleetOut:
        """The numbers now, or as read less than ``cache_seconds`` ago (concurrent readers share one round)."""
        async with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.cache_seconds:
                return self._last[1]
            out = await self._query()
            self._last = (time.monotonic(), out)
            return out

    async def _query(self) -> FleetOut:
        shown = redact_url(self.url)
        where = f"Prometheus {shown}"
        sources = {
            "denials": f"{where}: {QUERIES['denials'][1]}",
            "quarantines": f"{where}: {QUERIES['quarantines'][1]}",
            "availability": f"{where}: {QUERIES['availability'][1]}",
            "burn": f"{where}: {QUERIES['burn_5m'][1]}, {QUERIES['burn_1h'][1]}",
        }
        try:
            async with PrometheusClient(self.url, self.timeout) as client:
                answers = await asyncio.wait_for(
                    asyncio.gather(*(client.query(q) for q, _ in QUERIES.values())), self.timeout * 2
                )
        except (PrometheusError, TimeoutError) as exc:
            if self._down_since is None:
                self._down_since = time.time()
            why = str(exc) or f"no answer within {self.timeout * 2:g} s"
            return FleetOut(
                prometheus=shown, reachable=False, error=why, since=self._down_since, quarantines=None,
                denials_per_second=None, availability=None, burn_rates={}, sources=sources,
            )  # fmt: skip
        self._down_since = None
        got = dict(zip(QUERIES, answers, strict=True))

        def one(name: str) -> float | None:
            values = [v for _, v in got[name] if math.isfinite(v)]
            return values[0] if values else None

        burns: dict[str, dict[str, float]] = {}
        for window in ("5m", "1h"):
            for labels, value in got[f"burn_{window}"]:
                if math.isfinite(value):
                    burns.setdefault(labels.get("slo", ""), {})[window] = value
        quarantines = one("quarantines")
        return FleetOut(
            prometheus=shown,
            reachable=True,
            error=None,
            since=None,
            quarantines=None if quarantines is None else round(max(quarantines, 0.0)),
            denials_per_second=one("denials"),
            availability=one("availability"),
            burn_rates=burns,
            sources=sources,
        )
