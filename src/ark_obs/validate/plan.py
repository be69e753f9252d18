"""A validation plan: steps, each an optional injection and one expectation with a deadline; TOML loading.

    [sources]
    ark_obs = "http://127.0.0.1:9871"
    prometheus = "http://127.0.0.1:9090"         # optional: promql and alert_firing steps need it
    alertmanager = "http://127.0.0.1:9093"       # optional: alert_received steps need it

    [[steps]]
    name = "known-bad actions denied"
    deadline = "30s"
    inject = { http = { method = "POST", url = "http://hrm.internal/propose", json = { qty = 1e9 } } }
    expect = { kind = "counter_increase", metric = "hrm_denials_total", at_least = 1 }

Injections: ``http`` (a request; a JSON object answer's top-level fields become ``${name}`` variables),
``command`` (argv; ``KEY=VALUE`` lines of its output become variables) or ``synthetic`` (only with
``ark-obs validate --synthetic``: ``bad-actions``, ``kenny-errors``, ``kill:AGENT``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ark_obs.slo import parse_duration

__all__ = [
    "AgentSilent",
    "AlertFiring",
    "AlertReceived",
    "CommandInject",
    "CounterIncrease",
    "Expectation",
    "HttpInject",
    "Injection",
    "Plan",
    "PlanError",
    "PromQL",
    "SlosMet",
    "Sources",
    "Step",
    "SyntheticInject",
    "TraceState",
    "default_plan",
    "load_plan",
]

DEFAULT_ARK_OBS_URL: Final = "http://127.0.0.1:9871"
DEFAULT_DEADLINE_SECONDS: Final = 30.0
DEFAULT_WATCH_SECONDS: Final = 1800.0  # the seed's Task 7: monitor SLOs for 30 minutes
MAX_STEPS: Final = 100
# a deadline, watch or timeout longer than a week is a typo (10^23 days was accepted once)
MAX_SECONDS: Final = 7 * 86400.0
SYNTHETIC_ACTIONS: Final = ("bad-actions", "kenny-errors", "kill")


class PlanError(ValueError):
    """A plan file that cannot be used; the message names every problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
# a counter bound: finite, not negative
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _seconds(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


# --- injections ------------------------------------------------------------------------------------
class HttpRequest(_Frozen):
    """An HTTP request that provokes something in the deployment."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(pattern=r"^https?://")
    json_body: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Seconds = 10.0


class HttpInject(_Frozen):
    """``inject = { http = {...} }``."""

    http: HttpRequest


class CommandInject(_Frozen):
    """``inject = { command = ["kubectl", "delete", "pod", "-l", "app=joey"] }`` (argv, no shell)."""

    command: tuple[str, ...] = Field(min_length=1)
    timeout: Seconds = 60.0


class SyntheticInject(_Frozen):
    """``inject = { synthetic = "kill:Joey" }``: provided by the built-in pipeline of ``--synthetic``."""

    synthetic: str
    count: int = Field(default=5, ge=1, le=10_000, description="bad-actions: how many")

    @field_validator("synthetic")
    @classmethod
    def _known(cls, value: str) -> str:
        action, _, arg = value.partition(":")
        if action not in SYNTHETIC_ACTIONS or (action == "kill") != bool(arg):
            raise ValueError(f"{value!r}: expected bad-actions, kenny-errors or kill:AGENT")
        return value


Injection = HttpInject | CommandInject | SyntheticInject


# --- expectations ----------------------------------------------------------------------------------
class CounterIncrease(_Frozen):
    """A counter on ark-obs' /metrics rises by ``at_least`` before the deadline, or stays within ``at_most`` until it.

    ``labels`` select series (a subset match); matching series are summed.
    """

    kind: Literal["counter_increase"]
    metric: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    labels: dict[str, str] = Field(default_factory=dict)
    at_least: Amount | None = None
    at_most: Amount | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> CounterIncrease:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("give exactly one of at_least (rises by) or at_most (stays within)")
        return self


class TraceState(_Frozen):
    """A trace is complete, or incomplete with ``missing`` among its missing agents (GET /traces/{id})."""

    kind: Literal["trace"]
    trace_id: str = Field(min_length=1, description="may be ${trace_id} from the injection")
    state: Literal["complete", "incomplete"]
    missing: str | None = None


class AgentSilent(_Frozen):
    """ark-obs reports ``agent`` down (``ark_agent_up == 0``) within N heartbeat intervals of the injection."""

    kind: Literal["agent_silent"]
    agent: str
    within_heartbeats: float = Field(default=2.0, gt=0, le=1000, allow_inf_nan=False)


class SlosMet(_Frozen):
    """Every SLO (or those named) is met at every look over ``duration`` (GET /slos); no data is not a violation."""

    kind: Literal["slos_met"]
    duration: Seconds = DEFAULT_WATCH_SECONDS
    slos: tuple[str, ...] = ()
    poll: Seconds = 1.0

    @field_validator("duration", "poll", mode="before")
    @classmethod
    def _durations(cls, value: object) -> object:
        return _seconds(value)


class PromQL(_Frozen):
    """A PromQL expression returns at least one series on the configured Prometheus (like an alert's expr)."""

    kind: Literal["promql"]
    query: str = Field(min_length=1)


class AlertFiring(_Frozen):
    """Prometheus reports alert ``alertname`` firing (``/api/v1/alerts``), with ``labels`` among its labels."""

    kind: Literal["alert_firing"]
    alertname: str
    labels: dict[str, str] = Field(default_factory=dict)


class AlertReceived(_Frozen):
    """Alertmanager holds alert ``alertname`` active (``/api/v2/alerts``), with ``labels`` among its labels."""

    kind: Literal["alert_received"]
    alertname: str
    labels: dict[str, str] = Field(default_factory=dict)


Expectation = Annotated[
    CounterIncrease | TraceState | AgentSilent | SlosMet | PromQL | AlertFiring | AlertReceived,
    Field(discriminator="kind"),
]


class Step(_Frozen):
    """One check: inject (optional), then wait up to ``deadline`` for the expectation."""

    name: str = Field(min_length=1, max_length=120)
    inject: Injection | None = None
    expect: Expectation
    deadline: Seconds = DEFAULT_DEADLINE_SECONDS

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: object) -> object:
        return _seconds(value)


class Sources(_Frozen):
    """Where evidence is read: ark-obs always; Prometheus and Alertmanager when steps need them."""

    ark_obs: str = Field(default=DEFAULT_ARK_OBS_URL, pattern=r"^https?://")
    prometheus: str | None = Field(default=None, pattern=r"^https?://")
    alertmanager: str | None = Field(default=None, pattern=r"^https?://")
    timeout: Seconds = 5.0
    heartbeat_interval_seconds: Seconds | None = Field(
        default=None, description="agents' heartbeat interval; unset: read from ark-obs' /metrics"
    )


class Plan(_Frozen):
    """The steps, run in order, and where their evidence comes from."""

    sources: Sources = Field(default_factory=Sources)
    steps: tuple[Step, ...] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _unique_names(self) -> Plan:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique: {', '.join(dupes)}")
        for step in self.steps:
            if isinstance(step.expect, PromQL | AlertFiring) and self.sources.prometheus is None:
                raise ValueError(f"step {step.name!r} reads Prometheus: set [sources] prometheus")
            if isinstance(step.expect, AlertReceived) and self.sources.alertmanager is None:
                raise ValueError(f"step {step.name!r} reads Alertmanager: set [sources] alertmanager")
        return self

    @property
    def synthetic(self) -> bool:
        """Whether a step needs the built-in pipeline's injections."""
        return any(isinstance(s.inject, SyntheticInject) for s in self.steps)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_plan(path: Path) -> Plan:
    """Read a TOML plan; ``PlanError`` lists every problem with its location, on one line.

    Whatever the file holds (not UTF-8, not TOML, nested thousands deep, numbers out of range) the
    answer is a PlanError, never another exception.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(_one_line(f"{path}: {exc}")) from exc
    except RecursionError:
        raise PlanError(f"{path}: arrays or tables nested too deeply to read") from None
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(plan)'}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise PlanError(_one_line(f"{path}: {problems}")) from exc
    except RecursionError:
        raise PlanError(f"{path}: a value nested too deeply to check") from None


def default_plan(
    *, watch_seconds: float = DEFAULT_WATCH_SECONDS, killed_agent: str = "Joey", sources: Sources | None = None
) -> Plan:
    """The seed's post-deploy checklist (Tasks 6 and 7), injected by the built-in synthetic pipeline.

    The SLOs are watched first: the injections spend error budget on purpose (a quarantine counts as
    5 s of downtime against availability's 1.5 s budget in 5 min), so watching after them would fail
    a healthy deployment. The revisions are watched before Kenny's errors too: a quarantined Kenny
    writes no state, so a window during his quarantine would prove nothing.
    """
    return Plan(
        sources=sources or Sources(),
        steps=(
            Step(
                name="every SLO met",
                expect=SlosMet(kind="slos_met", duration=watch_seconds),
                deadline=watch_seconds + DEFAULT_DEADLINE_SECONDS,
            ),
            Step(
                name="state revisions contiguous",
                expect=CounterIncrease(kind="counter_increase", metric="ark_state_revision_anomalies_total", at_most=0),
                deadline=5.0,
            ),
            Step(
                name="known-bad actions denied",
                inject=SyntheticInject(synthetic="bad-actions", count=5),
                expect=CounterIncrease(kind="counter_increase", metric="hrm_denials_total", at_least=5),
                deadline=10.0,
            ),
            Step(
                name="Kenny's errors quarantine Kenny",
                inject=SyntheticInject(synthetic="kenny-errors"),
                expect=CounterIncrease(
                    kind="counter_increase", metric="watchdog_quarantines_total", labels={"agent": "Kenny"}, at_least=1
                ),
                deadline=10.0,
            ),
            Step(
                name=f"killed {killed_agent} alerted within 2 heartbeats",
                inject=SyntheticInject(synthetic=f"kill:{killed_agent}"),
                expect=AgentSilent(kind="agent_silent", agent=killed_agent, within_heartbeats=2.0),
                deadline=DEFAULT_DEADLINE_SECONDS,
            ),
        ),
    )
