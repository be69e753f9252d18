"""Canary analysis: the seed's tripwires as a pass / fail / inconclusive verdict from a real Prometheus.

    ark-obs canary-check --prometheus http://127.0.0.1:9090                  # table, exit 0 / 1 / 2
    ark-obs canary-check --prometheus URL --canary canary --baseline stable --json
    curl -s 127.0.0.1:9871/canary/analysis                                   # the same verdict as JSON

ark-obs does not route traffic: it tells the rollout controller (Argo Rollouts, Flagger) what the
metrics say. Canary and baseline are told apart by a ``track`` label that Prometheus attaches to each
scrape target (see ``deploy/rollouts/README.md``); every ARK recording rule keeps it (``by (track)``),
so the checks below read the same recording rules as the ``ArkCanary*`` and burn-rate alerts.

Checks (each one pass, fail or inconclusive):

- ``hrm_denials_spike``: the canary's HRM denials per decision over the last minute
  (``ark:hrm_denials:rate1m`` over the decision rate) against the baseline's last hour of the same
  ratio: fail above ``mean + 3 sigma`` (statistics and limits: ``spike_threshold``).
- ``quarantine``: any Watchdog quarantine of the canary in the last 10 minutes (the ArkCanaryQuarantine
  expression, first quarantine of a new series included).
- ``decision_latency``: ``ark:ark_pass_latency_ms:p95_rate1m`` above 400 ms at every step of the last
  3 minutes (ArkCanaryDecisionLatencyHigh's ``for: 3m``).
- ``burn_rate_<slo>``: the canary's ``ark:slo_burn_rate:ratio_rate*`` for every SLO of
  ``ark:slo_objective:ratio``, failing on ArkSloBudgetBurnPage's condition (14.4x over 1h and 5m, or
  6x over 6h and 30m).
- ``ethics_drift``: ``ark_ethics_drift`` of the canary above 0.

The overall verdict is fail if any check fails, else inconclusive if any is inconclusive, else pass.
Inconclusive is never a pass and never a fail: too few decisions, a baseline too short, no data, an
unreachable or slow Prometheus, a query that returns nothing, a selector that matches no target, or
rules that are not loaded. Each inconclusive check says why.

The package, one concept per module (each imports only the ones above it):

- ``config``: durations, track selectors and the settings (``CanaryConfig``, ``ARK_OBS_CANARY_*``);
- ``results``: the ``Verdict``, ``CheckResult`` and ``CanaryAnalysis``, and the CLI's ``EXIT_STATUS``;
- ``stats``: the 3-sigma denial spike rule (``spike_threshold``, ``baseline_stats``) and ``sustained_breach``;
- ``prometheus``: the async Prometheus query client (``PrometheusClient``, ``PrometheusError``);
- ``analysis``: the queries on the ARK recording rules and each check's verdict (``analyze``);
- ``http``: ``GET`` / ``POST /canary/analysis`` (``router``): Flagger's webhook, the cache and the cap;
- ``cli``: the ``ark-obs canary-check`` command.
"""

from ark_obs.canary.analysis import PAGE_BURNS, analyze
from ark_obs.canary.cli import ARGUMENTS, HELP, config_from_args, main, print_table
from ark_obs.canary.config import (
    SELECTOR_PATTERN,
    CanaryConfig,
    SelectorError,
    env_name,
    human_duration,
    parse_duration,
    parse_selector,
    promql_duration,
)
from ark_obs.canary.http import FlaggerMetadata, FlaggerWebhook, router
from ark_obs.canary.prometheus import PrometheusClient, PrometheusError
from ark_obs.canary.results import EXIT_STATUS, CanaryAnalysis, CheckResult, Verdict
from ark_obs.canary.stats import BaselineStats, Breach, baseline_stats, spike_threshold, sustained_breach

__all__ = [
    "ARGUMENTS",
    "EXIT_STATUS",
    "HELP",
    "PAGE_BURNS",
    "SELECTOR_PATTERN",
    "BaselineStats",
    "Breach",
    "CanaryAnalysis",
    "CanaryConfig",
    "CheckResult",
    "FlaggerMetadata",
    "FlaggerWebhook",
    "PrometheusClient",
    "PrometheusError",
    "SelectorError",
    "Verdict",
    "analyze",
    "baseline_stats",
    "config_from_args",
    "env_name",
    "human_duration",
    "main",
    "parse_duration",
    "parse_selector",
    "print_table",
    "promql_duration",
    "router",
    "spike_threshold",
    "sustained_breach",
]
