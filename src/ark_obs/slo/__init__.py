"""SLOs as data, evaluated from the registry's own sliding window.

>>> from ark_obs.metrics import MetricsCollector
>>> report = MetricsCollector(ticker=False).check_slos()
>>> report.total, report.met + report.violated + report.no_data
(4, 4)

Four kinds of SLO, each a pydantic model (the seed's four are the defaults, in ``slo/defaults.toml``;
``load_slo_file`` reads a TOML or YAML file with the same fields and reports every mistake at once):

- ``latency``: a histogram and a ``threshold`` that must be one of its bucket boundaries; the SLO holds
  when at least ``quantile`` (0.95) of the window's events are at or under the threshold. Compliance
  is counted exactly from the buckets (an event of exactly 400.0 ms is good); the p95 shown as
  ``value`` is interpolated inside its bucket, which always agrees with the verdict because the
  threshold is a boundary.
- ``availability``: (window - downtime) / window, clamped to [0, 1], downtime = increase of
  ``watchdog_quarantines_total`` over the window x 5 s (the seed's heuristic; configurable).
- ``gauge``: a gauge compared with an objective (ethics drift: ``ark_ethics_drift == 0``), no window.
- ``ratio``: good events / total events over the window, from two counters.

Every windowed value comes from ``MetricsCollector.increase()`` (Prometheus ``increase()`` semantics,
counter resets included), so one process and multiprocess mode give the same answer, and memory and
cost do not depend on the number of observations.

The seed's recording rule ``1 - (rate(watchdog_quarantines_total[5m]) * 5 / 300)`` is dimensionally
wrong: ``rate()`` is already per second, so dividing by the 300 s window again divides by the window
twice (one quarantine in 5 min gives 0.99994 instead of 0.98333). The right form, which this module
computes in-process and the shipped rules use, is ``1 - increase(watchdog_quarantines_total[5m]) * 5 / 300``
(equivalently ``1 - rate(...[5m]) * 5``), summed over agents and clamped to [0, 1].

``no_data`` semantics (never ``met``, never NaN):

- latency and ratio: fewer than ``min_events`` events in the window (default 1, so an empty window;
  raise it per SLO for low-traffic services). ``value``, the event counts and the compliance are still
  reported when there are some events; the error budget and burn rates are not, and ``ark_slo_met``
  is absent. A short burn-rate window with fewer than ``min_events`` events has no burn rate.
- availability: never ``no_data``, because time passes without traffic. The denominator is always the
  full window, as in the Prometheus rule, so both agree; the time before the process started counts
  as up (the quarantine counter starts with the process, so no quarantine it could see is missed).
  With the default objective a single quarantine in 5 min (5/300 = 1.7% downtime) violates it.
- gauge: ``no_data`` when the gauge has no series matching the SLO's labels. ``ark_ethics_drift`` is
  unlabelled, so it exists at 0 from the start: "no drift reported" is met, as Prometheus sees it too.

Error budget remaining = 1 - burn rate over the SLO window (negative once overspent); burn rate =
error ratio / (1 - compliance objective), for the 5m, 30m and 1h windows and the SLO's
burn-rate alert windows (``burn_alerts``) that fit in the retention.

Modules: ``spec`` (the SLO kinds, durations, loading and validating SLO files), ``report`` (what an
evaluation returns: ``SloReport``, ``SloStatus``), ``engine`` (``SloEngine``: evaluation on a
``MetricSource``), ``collector`` (the scrape-time families), ``rules`` (the Prometheus recording rules,
burn-rate alerts and promtool tests generated from the specs: ``ark-obs rules``), ``defaults.toml`` (the
seed's four SLOs).
"""

from ark_obs.slo.collector import FAMILIES, PROCESS_TOTALS, ProcessQuarantines, ProcessTotals, SloCollector
from ark_obs.slo.engine import SloEngine
from ark_obs.slo.report import SloReport, SloStatus
from ark_obs.slo.spec import (
    BURN_WINDOWS,
    DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS,
    DEFAULT_MIN_EVENTS,
    AvailabilitySlo,
    GaugeSlo,
    LatencySlo,
    Operator,
    RatioSlo,
    SloConfigError,
    SloSpec,
    Status,
    default_slos,
    format_duration,
    load_slo_file,
    parse_duration,
    parse_slos,
    validate_specs,
)

__all__ = [
    "BURN_WINDOWS",
    "DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS",
    "DEFAULT_MIN_EVENTS",
    "FAMILIES",
    "PROCESS_TOTALS",
    "AvailabilitySlo",
    "GaugeSlo",
    "LatencySlo",
    "Operator",
    "ProcessQuarantines",
    "ProcessTotals",
    "RatioSlo",
    "SloCollector",
    "SloConfigError",
    "SloEngine",
    "SloReport",
    "SloSpec",
    "SloStatus",
    "Status",
    "default_slos",
    "format_duration",
    "load_slo_file",
    "parse_duration",
    "parse_slos",
    "validate_specs",
]
