"""The synthetic validation loop: simulated ARK agents, instrumented for real, driving the whole pipeline.

    ark-obs synthetic                                  # the seed's loop: 1 pass/s for 30 s
    ark-obs synthetic --rate 50 --duration 10 --bad-share 0.1
    ark-obs synthetic --fault kenny-errors --fault silence:Joey --json
    ark-obs synthetic --target http://127.0.0.1:9871   # feed a running ark-obs over HTTP

Each pass is one signal through Kyle -> Joey -> HRM -> Kenny -> Aletheia. Every agent method is wrapped
with the library's own ``instrument_agent_method`` + ``with_trace_id`` (the pass itself too: its
decorator mints the trace id, binds it and observes ``ark_pass_latency_ms`` with the id as exemplar),
every agent records its span with ``record_trace_span`` and heartbeats once per interval. HRM evaluates
every action against the (immutable) Graveyard rules; its decorator records ``hrm_eval_latency_ms`` and
``graveyard_validations_total``, and each violation is counted in ``hrm_denials_total{rule_id,agent}``.
Kyle sets ``kyle_ingest_rate``, Joey ``joey_pattern_confidence_avg``, Kenny ``kenny_exec_success_rate``,
HRM ``ark_ethics_drift``; a simulated Watchdog counts ``watchdog_quarantines_total{agent,reason}``.

Faults (``--fault``, repeatable) and what the report then expects:

- ``kenny-errors``: Kenny's executions raise ``InjectedFault``. The Watchdog quarantines Kenny after 3
  consecutive errors for 5 s (the seed's downtime heuristic); while quarantined Kenny is skipped, so
  those traces stop at Kenny. These errors and incomplete traces are *expected*: they do not fail
  "zero unexpected errors" or "every trace complete", and an extra criterion requires at least one
  quarantine of Kenny. Anything else that raises is unexpected.
- ``silence:AGENT``: AGENT stops heartbeating at its third heartbeat tick (it keeps processing). An
  extra criterion requires the heartbeat monitor to report it down within 2 intervals of its first
  missed heartbeat.
- ``drop:AGENT``: AGENT's span is lost for ``--drop-share`` of the passes (default 0.1): those traces
  must be reported incomplete with exactly AGENT missing, and every other trace complete.
- ``skip-revision``: Kenny's state manager skips a revision on every ``SKIP_REVISION_EVERY``-th write
  (Kenny writes ``position:SYMBOL`` after each execution, with ``track_state_operation(..., key=,
  revision=)``). Without it every key's revisions must be contiguous; with it the revision checker must
  have counted a gap.

The report judges the run against the seed's validation criteria, plus one per injected fault:

- throughput >= the asked rate: completed passes over the time their starts took (each start owns a
  1/rate slot; the scheduler is open-loop, so slow passes do not lower it, a loop that falls behind
  by more than 0.1 s does, and failed passes are not counted);
- zero unexpected errors (injected ones are counted apart);
- p95 <= 400 ms over the passes (the most recent 200,000 in an endless run);
- every injected violation denied, and no valid action denied;
- every trace complete: each pass' trace is checked with the trace monitor right after it ends, and
  must miss exactly the agents the injected faults explain (none without faults).

A live progress display (rich, on stderr) shows passes, achieved rate, p95, denials, quarantines,
incomplete traces; the report is a table, or JSON with ``--json``; exit status 1 names what failed.

Targets: ``in-process`` (default) records everything on the given collector. ``http://host:port`` sends
spans (``POST /spans`` batches) and heartbeats (``POST /heartbeats/{agent}``) to a running ark-obs and
asks it for trace continuity (``GET /traces/{id}``, as soon as the spans are posted: the service forgets
a finished trace one TTL later; at most 200 checks/s, a random sample beyond) and heartbeat status
(``ark_agent_up`` on its ``/metrics``); the agents' metrics
(decorator latencies, denials, gauges, quarantines) then stay in this process' own collector and never
reach that service's ``/metrics`` - exactly as for an agent process that does not expose them.

The package, one concept per module (each imports only the ones above it):

- ``config``: the run's options, latency models, faults (``SyntheticConfig``, ``Fault``, ``PIPELINE``);
- ``domain``: what flows through the pipeline (``Signal`` ... ``Execution``) and the Graveyard rules;
- ``state``: the run's bookkeeping (``RunState``), written by passes, read by display and report;
- ``targets``: where spans and heartbeats go (``InProcessTarget``, ``HttpTarget``);
- ``agents``: Kyle, Joey, HRM, Kenny, Aletheia, the Watchdog, and the switches they read;
- ``report``: the criteria and the ``SyntheticReport`` built from a run;
- ``loop``: one pass (``Pipeline``) and the scheduler, heartbeats and checks (``run_loop``);
- ``background``: the loop in the service (``background_hook``) or in a thread (``start_background``);
- ``cli``: the ``ark-obs synthetic`` command.
"""

from ark_obs.synthetic.agents import AgentContext, PipelineControls
from ark_obs.synthetic.background import SyntheticHandle, background_hook, service_urls, start_background
from ark_obs.synthetic.cli import ARGUMENTS, HELP, add_arguments, build_parser, config_from_args, main
from ark_obs.synthetic.config import DEFAULT_LATENCIES, PIPELINE, Fault, InjectedFault, LatencyModel, SyntheticConfig
from ark_obs.synthetic.domain import GRAVEYARD
from ark_obs.synthetic.loop import Pipeline, in_process_collector, run_loop
from ark_obs.synthetic.report import Criterion, SilenceResult, SyntheticReport
from ark_obs.synthetic.state import RunState
from ark_obs.synthetic.targets import InProcessTarget

__all__ = [
    "ARGUMENTS",
    "DEFAULT_LATENCIES",
    "GRAVEYARD",
    "HELP",
    "PIPELINE",
    "AgentContext",
    "Criterion",
    "Fault",
    "InProcessTarget",
    "InjectedFault",
    "LatencyModel",
    "Pipeline",
    "PipelineControls",
    "RunState",
    "SilenceResult",
    "SyntheticConfig",
    "SyntheticHandle",
    "SyntheticReport",
    "add_arguments",
    "background_hook",
    "build_parser",
    "config_from_args",
    "in_process_collector",
    "main",
    "run_loop",
    "service_urls",
    "start_background",
]
