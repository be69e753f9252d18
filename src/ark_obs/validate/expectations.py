"""What each expectation kind reads, and when it has passed or failed.

A ``Check`` is polled by the runner until it decides or its step's deadline comes: ``look`` returns a
decided ``Observation`` (pass or fail now) or an undecided one (keep looking); ``at_deadline`` says
what the last look means when time is up (a rise that never came fails, a counter that stayed put
passes). ``EvidenceUnavailable`` from a read makes the step inconclusive unless a later read decides.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol

from ark_obs.canary import Verdict
from ark_obs.validate.evidence import AlertmanagerReader, ArkObsReader, EvidenceUnavailable, PrometheusReader
from ark_obs.validate.plan import (
    AgentSilent,
    AlertFiring,
    AlertReceived,
    CounterIncrease,
    Expectation,
    PromQL,
    SlosMet,
    TraceState,
)

__all__ = ["Check", "Observation", "Readers", "check_for", "substitute"]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(text: str, variables: dict[str, str]) -> str:
    """``${name}`` replaced by the injection's variable; an unknown name is left as it is."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True, slots=True)
class Observation:
    """What a look saw; ``verdict`` None means not decided yet."""

    verdict: Verdict | None
    observed: str
    evidence: str


@dataclass(frozen=True, slots=True)
class Readers:
    """The evidence sources of a run (Prometheus and Alertmanager only when configured)."""

    ark_obs: ArkObsReader
    prometheus: PrometheusReader | None = None
    alertmanager: AlertmanagerReader | None = None
    heartbeat_interval_seconds: float | None = None


class Check(Protocol):
    """One expectation being checked."""

    expected: str
    poll_seconds: float

    async def start(self) -> None:
        """Read the baseline, before the injection."""

    def injected(self) -> None:
        """The injection is done: time limits count from now."""

    async def look(self) -> Observation:
        """Read the evidence once."""
        ...

    def at_deadline(self, last: Observation) -> Observation:
        """The verdict when time is up, from the last successful look."""
        ...


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


class CounterCheck:
    """``counter_increase``: rises by at_least (passes at once), or stays within at_most (passes at the deadline)."""

    poll_seconds = 0.1

    def __init__(self, expect: CounterIncrease, readers: Readers) -> None:
        self.e = expect
        self.reader = readers.ark_obs
        self.series = f"{expect.metric}{_labels(expect.labels)}"
        bound = f"+{expect.at_least:g} or more" if expect.at_least is not None else f"at most +{expect.at_most:g}"
        self.expected = f"{self.series} {bound}"
        self.before = 0.0

    async def start(self) -> None:
        self.before = await self.reader.counter(self.e.metric, self.e.labels)

    def injected(self) -> None:
        return None

    async def look(self) -> Observation:
        now = await self.reader.counter(self.e.metric, self.e.labels)
        rise = now - self.before
        seen = Observation(None, f"+{rise:g}", f"{self.reader.base_url}/metrics: {self.before:g} -> {now:g}")
        if self.e.at_least is not None and rise >= self.e.at_least:
            return Observation(Verdict.PASS, seen.observed, seen.evidence)
        if self.e.at_most is not None and rise > self.e.at_most:
            return Observation(Verdict.FAIL, seen.observed, seen.evidence)
        return seen

    def at_deadline(self, last: Observation) -> Observation:
        verdict = Verdict.PASS if self.e.at_most is not None else Verdict.FAIL
        return Observation(verdict, last.observed, last.evidence)


class TraceCheck:
    """``trace``: GET /traces/{id} reports the trace complete, or incomplete missing an agent."""

    poll_seconds = 0.2

    def __init__(self, expect: TraceState, readers: Readers, variables: dict[str, str]) -> None:
        self.e = expect
        self.reader = readers.ark_obs
        self.trace_id = substitute(expect.trace_id, variables)
        missing = f" missing {expect.missing}" if expect.missing else ""
        self.variables = variables  # filled by the injection, read at each look
        self.expected = f"trace {expect.trace_id} {expect.state}{missing}"

    async def start(self) -> None:
        return None

    def injected(self) -> None:
        self.trace_id = substitute(self.e.trace_id, self.variables)
        missing = f" missing {self.e.missing}" if self.e.missing else ""
        self.expected = f"trace {self.trace_id} {self.e.state}{missing}"

    async def look(self) -> Observation:
        body = await self.reader.trace(self.trace_id)
        status, missing = body.get("status"), list(body.get("missing_agents") or [])
        observed = f"{status}" + (f", missing {', '.join(missing)}" if missing else "")
        evidence = f"{self.reader.base_url}/traces/{self.trace_id}"
        if status == "unavailable":
            raise EvidenceUnavailable(f"{evidence}: the trace store is unavailable")
        final = "complete" if status == "failed" else status  # failed at an agent: complete for continuity
        if final == self.e.state and (self.e.missing is None or self.e.missing in missing):
            return Observation(Verdict.PASS, observed, evidence)
        if final in ("complete", "incomplete"):  # final: it will not change any more
            return Observation(Verdict.FAIL, observed, evidence)
        return Observation(None, observed, evidence)

    def at_deadline(self, last: Observation) -> Observation:
        return Observation(Verdict.FAIL, last.observed, last.evidence)


class SilentCheck:
    """``agent_silent``: ark_agent_up{agent} turns 0 within N heartbeat intervals of the injection."""

    def __init__(self, expect: AgentSilent, readers: Readers) -> None:
        self.e = expect
        self.reader = readers.ark_obs
        self.interval = readers.heartbeat_interval_seconds
        self.poll_seconds = 0.05
        self.limit = 0.0
        self.expected = f"{expect.agent} reported down within {expect.within_heartbeats:g} heartbeats"
        self.since = time.monotonic()

    async def start(self) -> None:
        if self.interval is None:
            self.interval = await self.reader.heartbeat_interval()
        self.poll_seconds = self.interval / 20
        self.limit = self.e.within_heartbeats * self.interval
        self.expected = (
            f"{self.e.agent} reported down within {self.e.within_heartbeats:g} heartbeats ({self.limit:g} s)"
        )
        if await self.reader.agent_up(self.e.agent) is not True:
            raise EvidenceUnavailable(f"{self.e.agent} is not reported up before the injection: nothing to prove")

    def injected(self) -> None:
        self.since = time.monotonic()

    async def look(self) -> Observation:
        up = await self.reader.agent_up(self.e.agent)
        after = time.monotonic() - self.since
        evidence = f'{self.reader.base_url}/metrics: ark_agent_up{{agent="{self.e.agent}"}}'
        if up is False:
            verdict = Verdict.PASS if after <= self.limit else Verdict.FAIL
            return Observation(verdict, f"down after {after:.2f} s", evidence)
        if after > self.limit:
            return Observation(Verdict.FAIL, f"still up after {after:.2f} s", evidence)
        return Observation(None, f"up after {after:.2f} s", evidence)

    def at_deadline(self, last: Observation) -> Observation:
        return Observation(Verdict.FAIL, last.observed, last.evidence)


class SlosCheck:
    """``slos_met``: no SLO violated at any look over the duration (no data is not a violation)."""

    def __init__(self, expect: SlosMet, readers: Readers) -> None:
        self.e = expect
        self.reader = readers.ark_obs
        self.poll_seconds = expect.poll
        names = ", ".join(expect.slos) if expect.slos else "every SLO"
        self.expected = f"{names} met for {expect.duration:g} s"
        self.looks = 0
        self.with_data: set[str] = set()

        self.since = time.monotonic()

    async def start(self) -> None:
        return None

    def injected(self) -> None:
        self.since = time.monotonic()

    async def look(self) -> Observation:
        slos = [s for s in await self.reader.slos() if not self.e.slos or s.get("name") in self.e.slos]
        self.looks += 1
        evidence = f"{self.reader.base_url}/slos, {self.looks} looks"
        unknown = set(self.e.slos) - {s.get("name") for s in slos}
        if unknown:
            return Observation(Verdict.FAIL, f"no such SLO: {', '.join(sorted(unknown))}", evidence)
        violated = [s for s in slos if s.get("status") == "violated"]
        self.with_data |= {str(s.get("name")) for s in slos if s.get("status") != "no_data"}
        elapsed = time.monotonic() - self.since
        if violated:
            detail = ", ".join(f"{s['name']} = {s.get('value')} (objective {s.get('objective')})" for s in violated)
            return Observation(Verdict.FAIL, f"violated after {elapsed:.1f} s: {detail}", evidence)
        observed = f"{len(slos)} SLOs met or without data for {elapsed:.1f} s ({len(self.with_data)} with data)"
        if elapsed >= self.e.duration:
            return Observation(Verdict.PASS, observed, evidence)
        return Observation(None, observed, evidence)

    def at_deadline(self, last: Observation) -> Observation:
        return Observation(Verdict.FAIL, f"watch not finished: {last.observed}", last.evidence)


class PromQLCheck:
    """``promql``: the query returns at least one series."""

    poll_seconds = 1.0

    def __init__(self, expect: PromQL, reader: PrometheusReader) -> None:
        self.e = expect
        self.reader = reader
        self.expected = f"{expect.query} returns a series"

    async def start(self) -> None:
        return None

    def injected(self) -> None:
        return None

    async def look(self) -> Observation:
        result = await self.reader.query(self.e.query)
        evidence = f"{self.reader.base_url}/api/v1/query"
        if result:
            first = result[0]
            return Observation(
                Verdict.PASS, f"{len(result)} series, e.g. {first.get('metric')} = {first.get('value')}", evidence
            )
        return Observation(None, "no series", evidence)

    def at_deadline(self, last: Observation) -> Observation:
        return Observation(Verdict.FAIL, last.observed, last.evidence)


class AlertCheck:
    """``alert_firing`` (Prometheus) or ``alert_received`` (Alertmanager)."""

    poll_seconds = 0.5

    def __init__(self, expect: AlertFiring | AlertReceived, readers: Readers) -> None:
        self.e = expect
        self.readers = readers
        where = "firing in Prometheus" if isinstance(expect, AlertFiring) else "received by Alertmanager"
        self.expected = f"{expect.alertname}{_labels(expect.labels)} {where}"

    async def start(self) -> None:
        return None

    def injected(self) -> None:
        return None

    async def look(self) -> Observation:
        if isinstance(self.e, AlertFiring):
            assert self.readers.prometheus is not None  # the plan refuses the step without the source
            state = await self.readers.prometheus.alert_state(self.e.alertname, self.e.labels)
            evidence = f"{self.readers.prometheus.base_url}/api/v1/alerts"
            verdict = Verdict.PASS if state == "firing" else None
            return Observation(verdict, state or "absent", evidence)
        assert self.readers.alertmanager is not None
        alert = await self.readers.alertmanager.received(self.e.alertname, self.e.labels)
        evidence = f"{self.readers.alertmanager.base_url}/api/v2/alerts"
        if alert is None:
            return Observation(None, "not received", evidence)
        return Observation(Verdict.PASS, f"active since {alert.get('startsAt')}", evidence)

    def at_deadline(self, last: Observation) -> Observation:
        return Observation(Verdict.FAIL, last.observed, last.evidence)


def check_for(expect: Expectation, readers: Readers, variables: dict[str, str]) -> Check:
    """The check of one expectation."""
    if isinstance(expect, CounterIncrease):
        return CounterCheck(expect, readers)
    if isinstance(expect, TraceState):
        return TraceCheck(expect, readers, variables)
    if isinstance(expect, AgentSilent):
        return SilentCheck(expect, readers)
    if isinstance(expect, SlosMet):
        return SlosCheck(expect, readers)
    if isinstance(expect, PromQL):
        if readers.prometheus is None:
            raise EvidenceUnavailable("no Prometheus configured")
        return PromQLCheck(expect, readers.prometheus)
    return AlertCheck(expect, readers)
