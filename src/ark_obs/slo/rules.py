"""Prometheus recording rules, burn-rate alerts and their promtool tests, generated from SLO specs.

``render_rules(specs)`` writes the rule file (``deploy/prometheus/rules/ark-slo.rules.yml`` is its output
for the default SLOs), ``render_tests(specs)`` the promtool unit tests of every generated alert, and
``prometheus_rule(text)`` wraps any rule file in a ``PrometheusRule`` object for the Prometheus Operator.

Per SLO with a window (availability, latency, ratio), for the SRE workbook's windows (5m, 30m, 1h, 2h,
6h, 1d, 3d), the SLO's own window and its alerts' windows:

- ``ark:slo_objective:ratio{slo}`` and ``ark:slo_error_budget:ratio{slo}`` (1 - objective, written as
  the exact decimal: ``0.05``, not ``1 - 0.95`` = 0.050000000000000044);
- ``ark:slo_errors:ratio_rate{W}{slo}``: bad events / events (no sample without events);
- ``ark:slo_burn_rate:ratio_rate{W}{slo}``: error ratio / budget, rounded to 1e-10 so the ~1e-15 float
  noise of Prometheus' extrapolated increases cannot put a burn exactly at the objective above 1;
- over the SLO's window: ``ark:slo_good:ratio_rate{W}`` (compliance), ``ark:slo_met:bool`` (the verdict)
  and ``ark:slo_error_budget_remaining:ratio`` (1 - burn rate), as ``/slos`` reports them;
- availability also keeps ``ark:watchdog_quarantines:increase{W}`` and ``ark:availability:ratio_{W}``
  (restart-proof per-boot counting, see deploy/README.md), latency ``ark:<metric>:p<q>_rate{W}``.

Gauge SLOs get ``ark:slo_value:<aggregation>{slo}``, ``ark:slo_objective:value{slo}``, ``ark:slo_met:bool``
and an alert (the spec's ``alert`` name) while the objective does not hold.

Alerts: one rule per SLO and leg (``ArkSloBudgetBurnPage`` / ``ArkSloBudgetBurnTicket``, labels ``slo``,
``long_window``, ``short_window``), firing while the burn rate exceeds the leg's factor over both windows.
Everything is driven by the spec: a new SLI source for a kind only changes the kind's error-ratio expression.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import yaml

from ark_obs.catalog import WATCHDOG_QUARANTINES_TOTAL
from ark_obs.slo.spec import (
    DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS,
    AvailabilitySlo,
    BurnAlert,
    GaugeSlo,
    LatencySlo,
    Operator,
    RatioSlo,
    SloSpec,
    burn_alerts,
    format_duration,
    spec_windows,
)

__all__ = [
    "DEFAULT_RUNBOOK_URL",
    "WORKBOOK_WINDOWS",
    "RuleOptions",
    "burn_alert_name",
    "prometheus_rule",
    "render_rules",
    "render_tests",
    "rule_groups",
    "rule_windows",
]

DEFAULT_RUNBOOK_URL: Final = "http://127.0.0.1:9871/runbook"
# The SRE workbook's multi-window multi-burn-rate windows, recorded for every SLO with a window.
WORKBOOK_WINDOWS: Final[tuple[float, ...]] = (300.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 259200.0)
RECORDING_GROUP: Final = "ark-slo"
ALERT_GROUP: Final = "ark-slo-alerts"
# Burn rates are rounded to this (PromQL round() divides by 1/x: 1e10 is exact, 1e9 is not): far below
# one event in any realistic window, far above the float noise of extrapolated increases.
BURN_ROUNDING: Final = "1e-10"
_BUDGET_PERIOD_SECONDS: Final = 30 * 86400  # the workbook's factors are for a 30-day budget
_UP: Final = 'group by (track) (up{job="ark-obs"} == 1)'
_NEGATED: Final = {
    Operator.GE: "<",
    Operator.GT: "<=",
    Operator.LE: ">",
    Operator.LT: ">=",
    Operator.EQ: "!=",
    Operator.NE: "==",
}


@dataclass(frozen=True)
class RuleOptions:
    """What the generated rules depend on besides the specs (``ark-obs rules`` reads them from settings)."""

    runbook_url: str = DEFAULT_RUNBOOK_URL
    downtime_per_event_seconds: float = DEFAULT_DOWNTIME_PER_QUARANTINE_SECONDS


def burn_alert_name(alert: BurnAlert) -> str:
    """The alert name of a burn-rate leg: one name per tier, so Alertmanager routes and inhibits by tier."""
    return "ArkSloBudgetBurnPage" if alert.tier == "page" else "ArkSloBudgetBurnTicket"


def rule_windows(spec: SloSpec) -> tuple[float, ...]:
    """Every window the rules record for an SLO, ascending (none for a gauge)."""
    if isinstance(spec, GaugeSlo):
        return ()
    return tuple(sorted({*WORKBOOK_WINDOWS, *spec_windows(spec)}))


# --- PromQL pieces -----------------------------------------------------------------------------------
def _num(x: Decimal | float) -> str:
    """A number as PromQL reads it back exactly: Decimal as written, a float in its shortest form."""
    if isinstance(x, Decimal):
        text = format(x.normalize(), "f")
        return text
    return f"{x:g}" if float(x).is_integer() or abs(x) >= 1e-4 else repr(x)


def _seconds(w: float) -> str:
    return str(int(w)) if float(w).is_integer() else repr(w)


def _selector(name: str, labels: Mapping[str, str], extra: str = "") -> str:
    matchers = [f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())]
    if extra:
        matchers.append(extra)
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def le_matcher(threshold: float) -> str:
    """The ``le`` matcher of a threshold bucket, as prometheus_client (``400.0``) and Go (``400``) render it."""
    if float(threshold).is_integer():
        return f'le=~"{int(threshold)}(\\\\.0)?"'
    return f"le={json.dumps(repr(float(threshold)))}"


def le_label(threshold: float) -> str:
    """The ``le`` label value prometheus_client writes for a bucket bound."""
    return repr(float(threshold))


def _compliance(spec: SloSpec) -> Decimal:
    if isinstance(spec, LatencySlo):
        return spec.quantile
    assert not isinstance(spec, GaugeSlo)
    return spec.objective


def budget(spec: SloSpec) -> Decimal:
    """1 - compliance objective, exactly."""
    return Decimal(1) - _compliance(spec)


def _latency_sources(spec: LatencySlo) -> list[tuple[str, Mapping[str, str]]]:
    """The histogram a latency SLO judges, then its fallback (``fallback_metric``) if it has one."""
    sources: list[tuple[str, Mapping[str, str]]] = [(spec.metric, spec.labels)]
    if spec.fallback_metric is not None:
        sources.append((spec.fallback_metric, spec.fallback_labels))
    return sources


def _first_of(exprs: list[str]) -> str:
    """``a or b``: per track, the first expression with a sample (``/slos`` does the same per window)."""
    if len(exprs) == 1:
        return exprs[0]
    parts = ["(\n" + textwrap.indent(e.rstrip("\n"), "    ") + "\n)" for e in exprs]
    return "\nor\n".join(parts) + "\n"


def _fallback_note(spec: LatencySlo) -> str:
    if spec.fallback_metric is None:
        return ""
    labels = _selector(spec.fallback_metric, spec.fallback_labels)
    return (
        f"\nWhere {spec.metric} has no event in the window (agents that only send spans), {labels} is judged "
        "instead:\none source per window and track, never both."
    )


def _events_gate(spec: LatencySlo | RatioSlo) -> str:
    return "> 0" if spec.min_events is None else f">= {spec.min_events}"


def _legacy_availability(spec: AvailabilitySlo) -> bool:
    """Counts Watchdog quarantines without a selector: the per-boot, restart-proof series apply."""
    return spec.metric == WATCHDOG_QUARANTINES_TOTAL.name and not spec.labels


def _quarantines_expr(w: float) -> str:
    """Watchdog quarantines in a window across restarts of the exporting process (deploy/README.md)."""
    r = format_duration(w)
    return f"""(
    sum by (track) (
        max_over_time(ark_watchdog_quarantines_process_total[{r}])
      - (
            (
                last_over_time(ark_watchdog_quarantines_process_total[5m] offset {r})
              or
                min_over_time(ark_watchdog_quarantines_process_total[{r}])
            )
          * (max_over_time(ark_obs_start_time_seconds[{r}]) < bool (time() - {_seconds(w)}))
        )
    )
  or
    sum by (track) (
        (max_over_time(watchdog_quarantines_total[{r}]) unless watchdog_quarantines_total offset {r})
      or
        increase(watchdog_quarantines_total[{r}])
    )
  or
    0 * {_UP}
)
and on (track)
{_UP}
"""


def _events_expr(selector: str, w: float) -> str:
    """Increase of a counter in a window, a label set born inside the window counted by its value."""
    r = format_duration(w)
    return f"""(
    sum by (track) (
        (max_over_time({selector}[{r}]) unless {selector} offset {r})
      or
        increase({selector}[{r}])
    )
  or
    0 * {_UP}
)
and on (track)
{_UP}
"""


# --- rules -------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """Rules with the comment above each, in order."""

    name: str
    rules: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add(self, rule: dict[str, Any], comment: str = "") -> None:
        self.rules.append((comment, rule))


def _rec(name: str, expr: str, slo: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"record": name}
    if slo is not None:
        rule["labels"] = {"slo": slo}
    rule["expr"] = expr
    return rule


def rule_groups(specs: Sequence[SloSpec], options: RuleOptions | None = None) -> list[_Group]:
    """The generated groups: recording rules (in dependency order), then alerts."""
    options = options or RuleOptions()
    rec = _Group(RECORDING_GROUP)
    alerts = _Group(ALERT_GROUP)
    windowed = [s for s in specs if not isinstance(s, GaugeSlo)]
    for spec in windowed:
        rec.add(
            _rec("ark:slo_objective:ratio", f"vector({_num(_compliance(spec))})", spec.id),
            f"{spec.id} ({spec.kind}): {spec.description}".strip().removesuffix(":"),
        )
        rec.add(_rec("ark:slo_error_budget:ratio", f"vector({_num(budget(spec))})", spec.id))
    legacy_windows: set[float] = set()
    legacy_ratio_windows: set[float] = set()
    for spec in windowed:
        _error_rules(rec, spec, options, legacy_windows, legacy_ratio_windows)
    windows = sorted({w for s in windowed for w in rule_windows(s)})
    for i, w in enumerate(windows):
        r = format_duration(w)
        rec.add(
            _rec(
                f"ark:slo_burn_rate:ratio_rate{r}",
                f"round(ark:slo_errors:ratio_rate{r} / on (slo) group_left () ark:slo_error_budget:ratio, "
                f"{BURN_ROUNDING})",
            ),
            ""
            if i
            else "Burn rate = error ratio / error budget: 1 spends exactly the budget over the SLO period.\n"
            f"Rounded to {BURN_ROUNDING}: an error ratio exactly at the objective reads exactly 1 whatever "
            "the float\nnoise of increase()'s extrapolation (~1e-15), so a `> 1` leg is never decided by "
            "rounding.",
        )
    for spec in windowed:
        _window_verdict_rules(rec, spec)
    for gauge in specs:
        if isinstance(gauge, GaugeSlo):
            _gauge_rules(rec, alerts, gauge, options)
    for spec in windowed:
        for alert in burn_alerts(spec):
            alerts.add(_burn_alert(spec, alert, options))
    return [rec, alerts]


def _error_rules(
    rec: _Group,
    spec: AvailabilitySlo | LatencySlo | RatioSlo,
    options: RuleOptions,
    legacy_windows: set[float],
    legacy_ratio_windows: set[float],
) -> None:
    for i, w in enumerate(rule_windows(spec)):
        r = format_duration(w)
        if isinstance(spec, AvailabilitySlo):
            per_event = _num(spec.downtime_per_event_seconds or options.downtime_per_event_seconds)
            if _legacy_availability(spec):
                events = f"ark:watchdog_quarantines:increase{r}"
                if w not in legacy_windows:
                    legacy_windows.add(w)
                    rec.add(
                        _rec(events, _quarantines_expr(w)),
                        ""
                        if i
                        else "Watchdog quarantines per window, counted so that restarts of the exporting "
                        "process lose none\n(per-boot series ark_watchdog_quarantines_process_total{boot}; "
                        "see deploy/README.md).\nOnly while an ark-obs target of the track is up; 0 when "
                        "it is up and nothing was quarantined.",
                    )
                if w not in legacy_ratio_windows:
                    legacy_ratio_windows.add(w)
                    rec.add(
                        _rec(
                            f"ark:availability:ratio_{r}",
                            f"clamp_max(clamp_min(1 - {events} * {per_event} / {_seconds(w)}, 0), 1)",
                        ),
                        ""
                        if i
                        else f"Availability = 1 - downtime / window, downtime = quarantines x {per_event} s "
                        "(not the seed's\nrate() * 5 / 300, which divides by the window twice).",
                    )
            else:
                events = f'ark:slo_downtime_events:increase{r}{{slo="{spec.id}"}}'
                rec.add(
                    _rec(
                        f"ark:slo_downtime_events:increase{r}",
                        _events_expr(_selector(spec.metric, spec.labels), w),
                        spec.id,
                    ),
                    "" if i else f"{spec.id}: downtime events of {spec.metric} per window.",
                )
            expr = f"clamp_max(clamp_min({events} * {per_event} / {_seconds(w)}, 0), 1)"
            note = f"{spec.id}: error ratio = downtime / window (no traffic denominator)."
        elif isinstance(spec, LatencySlo):
            exprs = []
            for metric, labels in _latency_sources(spec):
                count = _selector(f"{metric}_count", labels)
                bucket = _selector(f"{metric}_bucket", labels, le_matcher(spec.threshold))
                exprs.append(f"""(
    sum by (track) (increase({count}[{r}]))
  - sum by (track) (increase({bucket}[{r}]))
)
/ (sum by (track) (increase({count}[{r}])) {_events_gate(spec)})
""")
            expr = _first_of(exprs)
            note = (
                f"{spec.id}: events slower than {spec.threshold:g} over all events, from the bucket at the "
                f'threshold\n(prometheus_client renders it le="{le_label(spec.threshold)}"). No events: '
                "no sample, not NaN." + _fallback_note(spec)
            )
        else:
            good = _selector(spec.good_metric, spec.good_labels)
            total = _selector(spec.total_metric, spec.total_labels)
            expr = f"""clamp_min(
    sum by (track) (increase({total}[{r}]))
  - sum by (track) (increase({good}[{r}])),
  0
)
/ (sum by (track) (increase({total}[{r}])) {_events_gate(spec)})
"""
            note = f"{spec.id}: bad events (total - good) over all events. No events: no sample, not NaN."
        rec.add(_rec(f"ark:slo_errors:ratio_rate{r}", expr, spec.id), "" if i else note)


def _window_verdict_rules(rec: _Group, spec: AvailabilitySlo | LatencySlo | RatioSlo) -> None:
    r = format_duration(spec.window)
    sel = f'{{slo="{spec.id}"}}'
    if isinstance(spec, LatencySlo):
        goods = []
        for metric, labels in _latency_sources(spec):
            count = _selector(f"{metric}_count", labels)
            bucket = _selector(f"{metric}_bucket", labels, le_matcher(spec.threshold))
            goods.append(f"""sum by (track) (increase({bucket}[{r}]))
/ (sum by (track) (increase({count}[{r}])) {_events_gate(spec)})
""")
        good = _first_of(goods)
    elif isinstance(spec, RatioSlo):
        g = _selector(spec.good_metric, spec.good_labels)
        t = _selector(spec.total_metric, spec.total_labels)
        good = f"""clamp_max(
    sum by (track) (increase({g}[{r}]))
  /
    (sum by (track) (increase({t}[{r}])) {_events_gate(spec)}),
  1
)
"""
    else:
        good = f"1 - ark:slo_errors:ratio_rate{r}{sel}"
    rec.add(
        _rec(f"ark:slo_good:ratio_rate{r}", good, spec.id),
        f"{spec.id} over its window ({r}): compliance, verdict and budget left, as /slos reports them.",
    )
    rec.add(_rec("ark:slo_met:bool", f"ark:slo_burn_rate:ratio_rate{r}{sel} <= bool 1", spec.id))
    rec.add(_rec("ark:slo_error_budget_remaining:ratio", f"1 - ark:slo_burn_rate:ratio_rate{r}{sel}", spec.id))
    if isinstance(spec, LatencySlo):
        q = format(spec.quantile * 100, "f").rstrip("0").rstrip(".").replace(".", "_")
        quantiles = []
        for metric, labels in _latency_sources(spec):
            bucket_all = _selector(f"{metric}_bucket", labels)
            count = _selector(f"{metric}_count", labels)
            quantiles.append(f"""histogram_quantile({_num(spec.quantile)}, sum by (track, le) (rate({bucket_all}[{r}])))
and on (track)
(sum by (track) (rate({count}[{r}])) > 0)
""")
        rule = _rec(f"ark:{spec.metric}:p{q}_rate{r}", _first_of(quantiles), spec.id if spec.labels else None)
        rec.add(rule, f"p{q} of {spec.metric} for humans, interpolated within buckets (the SLO is the ratio).")


def _gauge_rules(rec: _Group, alerts: _Group, spec: GaugeSlo, options: RuleOptions) -> None:
    value = f"ark:slo_value:{spec.aggregation}"
    sel = f'{{slo="{spec.id}"}}'
    rec.add(
        _rec(value, f"{spec.aggregation} by (track) ({_selector(spec.metric, spec.labels)})", spec.id),
        f"{spec.id} (gauge): {spec.description} {spec.metric} {spec.operator} {_num(spec.objective)}; "
        "no window, no budget.",
    )
    rec.add(_rec("ark:slo_objective:value", f"vector({_num(spec.objective)})", spec.id))
    rec.add(_rec("ark:slo_met:bool", f"{value}{sel} {spec.operator} bool {_num(spec.objective)}", spec.id))
    alerts.add(
        {
            "alert": spec.alert,
            "expr": f"{value}{sel} {_NEGATED[spec.operator]} {_num(spec.objective)}",
            "labels": {"severity": "critical", "tier": "page", "slo": spec.id},
            "annotations": {
                "summary": f"SLO {spec.id} is violated: {spec.metric} {spec.operator} {_num(spec.objective)} "
                "does not hold",
                "description": f"{spec.metric} ({spec.aggregation}){{{{ with $labels.track }}}} on track "
                f"{{{{ . }}}}{{{{ end }}}} is {{{{ $value }}}}; the SLO {spec.id} needs "
                f"{spec.operator} {_num(spec.objective)}. {spec.description}".strip(),
                "runbook_url": f"{options.runbook_url}#{spec.alert.lower()}",
            },
        },
        f"{spec.id}: no window and no budget, so it pages at once while {spec.operator} "
        f"{_num(spec.objective)} does not hold.",
    )


def _share(alert: BurnAlert) -> str:
    share = float(alert.factor) * alert.long / _BUDGET_PERIOD_SECONDS * 100
    return f"{share:.3g}%"


def _description(spec: SloSpec, alert: BurnAlert, value: str, track: str) -> str:
    long, short = format_duration(alert.long), format_duration(alert.short)
    b = budget(spec)
    return (
        f"{spec.id}{track} is burning its error budget ({_num(b * 100)}% of events, objective "
        f"{_num(_compliance(spec) * 100)}%) at {value}x the sustainable rate over the last {long} "
        f"(long window: the burn is significant; at {_num(alert.factor)}x, {_share(alert)} of a 30-day "
        f"budget goes in {long}) and still above {_num(alert.factor)}x over the last {short} "
        f"(short window: it is still going on, so the alert resolves within {short} of a fix)."
    )


def _burn_alert(spec: SloSpec, alert: BurnAlert, options: RuleOptions) -> dict[str, Any]:
    name = burn_alert_name(alert)
    long, short = format_duration(alert.long), format_duration(alert.short)
    sel = f'{{slo="{spec.id}"}}'
    factor = _num(alert.factor)
    speed = "fast" if alert.tier == "page" else "steadily"
    return {
        "alert": name,
        "expr": f"ark:slo_burn_rate:ratio_rate{long}{sel} > {factor}\nand\n"
        f"ark:slo_burn_rate:ratio_rate{short}{sel} > {factor}\n",
        **({"for": format_duration(alert.for_)} if alert.for_ else {}),
        "labels": {
            "severity": "critical" if alert.tier == "page" else "warning",
            "tier": alert.tier,
            "slo": spec.id,
            "long_window": long,
            "short_window": short,
        },
        "annotations": {
            "summary": f"SLO {spec.id} is burning its error budget {speed} ({factor}x over {long} and {short})",
            "description": _description(
                spec, alert, '{{ printf "%.2f" $value }}', "{{ with $labels.track }} (track {{ . }}){{ end }}"
            ),
            "runbook_url": f"{options.runbook_url}#{name.lower()}",
        },
    }


# --- rendering ---------------------------------------------------------------------------------------
_PLAIN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/()# -]*$")


def _scalar(value: object) -> str:
    text = str(value)
    if (
        _PLAIN.fullmatch(text)
        and ": " not in text
        and " #" not in text
        and text.lower()
        not in {
            "true",
            "false",
            "null",
            "yes",
            "no",
            "on",
            "off",
        }
    ):
        return text
    return json.dumps(text, ensure_ascii=False)


def _block(key: str, text: str, indent: str) -> list[str]:
    if "\n" not in text.strip() and not re.search(r'[{}"#]|: ', text) and not text.startswith(("(", "[")):
        return [f"{indent}{key}: {text.strip()}"]
    body = text.rstrip("\n").split("\n")
    return [f"{indent}{key}: |", *(f"{indent}  {line}".rstrip() for line in body)]


def _render_rule(rule: Mapping[str, Any]) -> list[str]:
    kind = "record" if "record" in rule else "alert"
    out = [f"      - {kind}: {rule[kind]}"]
    if kind == "record" and "labels" in rule:
        out += ["        labels:", *(f"          {k}: {_scalar(v)}" for k, v in rule["labels"].items())]
    out += _block("expr", rule["expr"], "        ")
    if "for" in rule:
        out.append(f"        for: {rule['for']}")
    if kind == "alert":
        out += ["        labels:", *(f"          {k}: {_scalar(v)}" for k, v in rule["labels"].items())]
        out += ["        annotations:", *(f"          {k}: {_scalar(v)}" for k, v in rule["annotations"].items())]
    return out


def render_rules(specs: Sequence[SloSpec], options: RuleOptions | None = None, source: str = "") -> str:
    """The rule file for ``specs`` (what ``ark-obs rules`` writes)."""
    groups = rule_groups(specs, options)
    lines = [
        f"# Generated by `ark-obs rules` from {source or 'the SLO specs'}: do not edit, regenerate.",
        '# ark_obs.slo.rules documents every series; deploy/README.md, "Recording rules", explains them.',
        "# Every series is aggregated `by (track)`; ratios are ratios of summed increases (event-weighted);",
        "# no events in a window gives no sample (never NaN, never a made-up 0 or 1), so no-data never",
        "# fires a burn-rate alert. Recording rules sit in one group in dependency order.",
        "groups:",
    ]
    for group in groups:
        if not group.rules:
            continue
        lines += [f"  - name: {group.name}", "    rules:"]
        for comment, rule in group.rules:
            if comment:
                lines.append("")
                lines += [f"      # {c}".rstrip() for c in comment.split("\n")]
            lines += _render_rule(rule)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def prometheus_rule(
    rule_file_text: str,
    name: str = "ark-slo",
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A Prometheus rule file (its text) wrapped in a ``PrometheusRule`` object for the Prometheus Operator.

    ``labels`` are the object's metadata labels (what the Operator's ``ruleSelector`` matches).
    """
    groups = yaml.safe_load(rule_file_text)["groups"]
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels or {"app.kubernetes.io/name": "ark-obs", "role": "alert-rules"})
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": groups},
    }
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


# --- promtool tests ----------------------------------------------------------------------------------
def _gcd(values: Iterable[float]) -> int:
    out = 0
    for v in values:
        out = math.gcd(out, int(v))
    return max(out, 1)


@dataclass(frozen=True)
class _Burn:
    """Input series that burn one SLO's budget at ``burn`` (exactly, as a fraction) in every window."""

    series: list[tuple[str, str]]
    burn: Fraction


def _input(
    spec: SloSpec,
    burn: Fraction,
    interval: int,
    steps: int,
    options: RuleOptions,
    track: str | None = None,
    history: int = 0,
) -> _Burn | None:
    """Series of one SLO with a constant error ratio of ``burn`` x its budget; None if impossible.

    ``history``: event counters start at that many intervals' worth of events, so a window longer than
    the samples is extrapolated by increase() (numerator and denominator each by a float factor).
    """
    error = burn * Fraction(budget(spec))
    if error > 1 or error < 0:
        return None
    base = {"job": "ark-obs", "instance": "127.0.0.1:9871", **({"track": track} if track else {})}

    def sel(name: str, labels: Mapping[str, str], **extra: str) -> str:
        return _selector(name, {**base, **labels, **extra})

    if isinstance(spec, AvailabilitySlo):
        per_event = Fraction(spec.downtime_per_event_seconds or options.downtime_per_event_seconds)
        q = error * interval / per_event  # quarantines per interval
        extra = {"agent": "Kenny", "reason": "exec_error"} if _legacy_availability(spec) else {}
        return _Burn(
            [
                (_selector("up", base), f"1x{steps}"),
                (sel(spec.metric, spec.labels, **extra), f"0+{_dec(q)}x{steps}"),
            ],
            burn,
        )
    total, bad = _counts(error)
    if isinstance(spec, LatencySlo):
        return _Burn(
            [
                (
                    sel(f"{spec.metric}_bucket", spec.labels, le=le_label(spec.threshold)),
                    f"{history * (total - bad)}+{total - bad}x{steps}",
                ),
                (sel(f"{spec.metric}_count", spec.labels), f"{history * total}+{total}x{steps}"),
            ],
            Fraction(bad, total) / Fraction(budget(spec)),
        )
    assert isinstance(spec, RatioSlo)
    return _Burn(
        [
            (sel(spec.good_metric, spec.good_labels), f"{history * (total - bad)}+{total - bad}x{steps}"),
            (sel(spec.total_metric, spec.total_labels), f"{history * total}+{total}x{steps}"),
        ],
        Fraction(bad, total) / Fraction(budget(spec)),
    )


def _counts(error: Fraction) -> tuple[int, int]:
    """(total, bad) events per interval with bad / total == error exactly, total a power of ten."""
    total = 1000
    while (error * total).denominator != 1 and total < 10**15:
        total *= 10
    return total, round(error * total)


def _dec(x: Fraction) -> str:
    text = format(Decimal(x.numerator) / Decimal(x.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _near(factor: Decimal, spec: SloSpec, above: bool) -> Fraction:
    """A burn just above (or below) ``factor``: one event per interval more (fewer), or 1e-4 for time."""
    error = Fraction(factor) * Fraction(budget(spec))
    if isinstance(spec, AvailabilitySlo):
        return Fraction(factor) * (1 + Fraction(1, 10_000) * (1 if above else -1))
    total, bad = _counts(error)
    return Fraction(bad + (1 if above else -1), total) / Fraction(budget(spec))


def _legs(specs: Sequence[SloSpec]) -> list[BurnAlert]:
    out: list[BurnAlert] = []
    for spec in specs:
        for alert in burn_alerts(spec):
            if alert not in out:
                out.append(alert)
    return out


def render_tests(
    specs: Sequence[SloSpec], options: RuleOptions | None = None, rule_file: str = "ark-slo.rules.yml"
) -> str:
    """promtool unit tests of every generated alert: fires just above its factor, silent just below and at
    it, never on no data; and burn rates exactly 1 at the objective in every window."""
    options = options or RuleOptions()
    windowed = [s for s in specs if not isinstance(s, GaugeSlo)]
    windows = {w for s in windowed for w in rule_windows(s)}
    windows |= {a.for_ for s in windowed for a in burn_alerts(s) if a.for_}
    eval_every = _gcd(windows) if windows else 60
    tests: list[dict[str, Any]] = []
    for i, leg in enumerate(_legs(windowed)):
        owners = [s for s in windowed if leg in burn_alerts(s)]
        steps = int(_fires_at(leg) // eval_every) + 1
        for above in (True, False):
            tracks = i == 0 and above
            tests.append(_leg_case(leg, owners, windowed, above, eval_every, steps, options, tracks))
    if windowed:
        tests.append(_objective_case(windowed, eval_every, options))
        tests.append(_no_data_case(windowed, eval_every))
    for spec in specs:
        if isinstance(spec, GaugeSlo):
            tests.extend(_gauge_cases(spec, options))
    doc = {
        "rule_files": [rule_file],
        "evaluation_interval": format_duration(eval_every),
        "group_eval_order": [RECORDING_GROUP, ALERT_GROUP],
        "tests": tests,
    }
    header = (
        "# Generated by `ark-obs rules --tests` with the rule file it tests: do not edit, regenerate.\n"
        "# Each burn-rate leg: a burn one event per interval above its factor (1e-4 above for availability)\n"
        "# fires it at the end of its long window (plus its for:, pending one evaluation before); one\n"
        "# below does not (legs with a lower factor do); the first leg fires on the canary track only;\n"
        "# no data fires nothing; at exactly the objective every burn rate is exactly 1 and nothing fires.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def _burn_at(spec: SloSpec, burn: Fraction, window: float, at: float) -> Fraction:
    """The burn rate a window reads at time ``at`` of a constant burn that started at 0.

    Event SLOs: the same ratio in every window. Availability is time-based: the time before the first
    sample counts as up, so a window longer than the data is diluted.
    """
    if isinstance(spec, AvailabilitySlo):
        return burn * Fraction(min(window, at)) / Fraction(window)
    return burn


def _fires(spec: SloSpec, burn: Fraction, alert: BurnAlert, at: float, every: int) -> bool:
    """Whether a leg fires at ``at`` under a constant burn from 0, evaluated every ``every`` seconds: its
    condition held at every evaluation from ``at - for`` on (at the first with two samples, event SLOs)."""

    start = _holds_from(spec, burn, alert, at, every)
    return start is not None and at - start >= (alert.for_ or 0.0)


def _holds_from(spec: SloSpec, burn: Fraction, alert: BurnAlert, until: float, every: int) -> int | None:
    """The first evaluation (a multiple of ``every``, up to ``until``) at which a leg's condition holds."""

    def holds(t: float) -> bool:
        factor = Fraction(alert.factor)
        return min(_burn_at(spec, burn, alert.long, t), _burn_at(spec, burn, alert.short, t)) > factor

    return next((t for t in range(every, int(until) + 1, every) if holds(t)), None)


def _expected_burn_alerts(
    specs: Sequence[SloSpec],
    burns: Mapping[str, Fraction],
    tier: str,
    options: RuleOptions,
    at: float,
    every: int,
    track: str | None = None,
) -> list[dict[str, Any]]:
    out = []
    for spec in specs:
        burn = burns.get(spec.id)
        if burn is None:
            continue
        for alert in burn_alerts(spec):
            if alert.tier != tier or not _fires(spec, burn, alert, at, every):
                continue
            long_burn = _burn_at(spec, burn, alert.long, at)
            rule = _burn_alert(spec, alert, options)
            value = format(float(long_burn), ".2f")
            out.append(
                {
                    "exp_labels": {**rule["labels"], **({"track": track} if track else {})},
                    "exp_annotations": {
                        **rule["annotations"],
                        "description": _description(spec, alert, value, f" (track {track})" if track else ""),
                    },
                }
            )
    return out


def _fires_at(leg: BurnAlert) -> float:
    """When a constant burn that started at 0 fires a leg: its long window full (a time-based SLI reaches
    the burn only then), plus its ``for``."""
    return leg.long + (leg.for_ or 0.0)


def _leg_case(
    leg: BurnAlert,
    owners: Sequence[SloSpec],
    windowed: Sequence[SloSpec],
    above: bool,
    eval_every: int,
    steps: int,
    options: RuleOptions,
    tracks: bool = False,
) -> dict[str, Any]:
    """One leg at a burn just above (below) its factor. With ``tracks`` the burn is on track "canary" while
    track "stable" has no bad event: the alerts are per track."""
    series: list[dict[str, str]] = []
    burns: dict[str, Fraction] = {}
    track = "canary" if tracks else None
    for spec in owners:
        made = _input(spec, _near(leg.factor, spec, above), eval_every, steps, options, track)
        if made is None:
            continue
        burns[spec.id] = made.burn
        if tracks:
            clean = _input(spec, Fraction(0), eval_every, steps, options, "stable")
            assert clean is not None
            made.series.extend(clean.series)
        series += [{"series": s, "values": v} for s, v in made.series if {"series": s, "values": v} not in series]
    long, short = format_duration(leg.long), format_duration(leg.short)
    name = burn_alert_name(leg)
    where = "just above" if above else "just below"
    checks = [
        {
            "eval_time": format_duration(_fires_at(leg)),
            "alertname": name,
            "exp_alerts": _expected_burn_alerts(windowed, burns, leg.tier, options, _fires_at(leg), eval_every, track),
        }
    ]
    case: dict[str, Any] = {
        "name": f"{name} {long}/{short} at {where} {_num(leg.factor)}x "
        f"({'fires' if above else 'silent'}; {', '.join(burns) or 'no SLO can burn that fast'})"
        + (" on the canary track only" if tracks else ""),
        "interval": format_duration(eval_every),
        "input_series": series,
        "alert_rule_test": checks,
    }
    if above and leg.for_:
        # one evaluation before the condition has held for `for:`, the leg is only pending
        owners_by_id = {spec.id: spec for spec in owners}
        starts = {_holds_from(owners_by_id[i], b, leg, _fires_at(leg), eval_every) for i, b in burns.items()}
        for start in sorted(t for t in starts if t is not None):
            early = start + leg.for_ - eval_every
            if early >= eval_every:
                checks.append(
                    {
                        "eval_time": format_duration(early),
                        "alertname": name,
                        "exp_alerts": _expected_burn_alerts(
                            windowed, burns, leg.tier, options, early, eval_every, track
                        ),
                    }
                )
    if not above:
        # the other tier's alert at the same time: only its legs below this burn fire
        other = "ticket" if leg.tier == "page" else "page"
        other_name = "ArkSloBudgetBurnTicket" if other == "ticket" else "ArkSloBudgetBurnPage"
        checks.append(
            {
                "eval_time": format_duration(_fires_at(leg)),
                "alertname": other_name,
                "exp_alerts": _expected_burn_alerts(windowed, burns, other, options, _fires_at(leg), eval_every),
            }
        )
    return case


def _objective_case(windowed: Sequence[SloSpec], eval_every: int, options: RuleOptions) -> dict[str, Any]:
    """Every SLO exactly at its objective: burn rate exactly 1 in every window, met, budget left 0."""
    at = max(s.window for s in windowed if not isinstance(s, GaugeSlo))
    at = max(at, 3600.0)
    at = math.ceil(at / eval_every) * eval_every
    steps = int(at // eval_every) + 1
    series: list[dict[str, str]] = []
    exprs: list[dict[str, Any]] = []
    for spec in windowed:
        # counters with history: windows longer than the samples are extrapolated, so the float noise
        # of increase() is really there (without the rounding, 2h..3d read 0.9999999999999999)
        made = _input(spec, Fraction(1), eval_every, steps, options, history=7)
        assert made is not None
        series += [{"series": s, "values": v} for s, v in made.series if {"series": s, "values": v} not in series]
        sel = f'{{slo="{spec.id}"}}'
        for w in rule_windows(spec):
            if isinstance(spec, AvailabilitySlo) and w > at:
                continue  # time-based: the time before the first sample counts as up
            exprs.append(
                {
                    "expr": f"ark:slo_burn_rate:ratio_rate{format_duration(w)}{sel}",
                    "eval_time": format_duration(at),
                    "exp_samples": [{"labels": f"ark:slo_burn_rate:ratio_rate{format_duration(w)}{sel}", "value": 1}],
                }
            )
        exprs.append(
            {
                "expr": f"ark:slo_met:bool{sel}",
                "eval_time": format_duration(at),
                "exp_samples": [{"labels": f"ark:slo_met:bool{sel}", "value": 1}],
            }
        )
    return {
        "name": "every SLO exactly at its objective: burn rate exactly 1 in every window, met, no alert",
        "interval": format_duration(eval_every),
        "input_series": series,
        "promql_expr_test": exprs,
        "alert_rule_test": [
            {"eval_time": format_duration(at), "alertname": n, "exp_alerts": []}
            for n in ("ArkSloBudgetBurnPage", "ArkSloBudgetBurnTicket")
        ],
    }


def _no_data_case(windowed: Sequence[SloSpec], eval_every: int) -> dict[str, Any]:
    """ark-obs up with no events (and no quarantine): no error ratio for event SLOs, no alert."""
    # past every short window: every window the alerts read is empty of events (longer ones stay empty too)
    shorts = [a.short for s in windowed for a in burn_alerts(s)]
    at = math.ceil(2 * max(shorts, default=1800.0) / eval_every) * eval_every
    steps = int(at // eval_every) + 1
    exprs = [
        {
            "expr": f'ark:slo_burn_rate:ratio_rate{format_duration(s.window)}{{slo="{s.id}"}}',  # type: ignore[union-attr]
            "eval_time": format_duration(at),
            "exp_samples": [],
        }
        for s in windowed
        if not isinstance(s, AvailabilitySlo)
    ]
    return {
        "name": "no data (ark-obs up, no event, no quarantine) fires no burn-rate alert",
        "interval": format_duration(eval_every),
        "input_series": [{"series": 'up{instance="127.0.0.1:9871", job="ark-obs"}', "values": f"1x{steps}"}],
        "promql_expr_test": exprs,
        "alert_rule_test": [
            {"eval_time": format_duration(t), "alertname": n, "exp_alerts": []}
            for t in sorted({a.long for s in windowed for a in burn_alerts(s) if a.long <= at} | {at})
            for n in ("ArkSloBudgetBurnPage", "ArkSloBudgetBurnTicket")
        ],
    }


def _gauge_cases(spec: GaugeSlo, options: RuleOptions) -> list[dict[str, Any]]:
    selector = _selector(spec.metric, {"job": "ark-obs", "instance": "127.0.0.1:9871", **spec.labels})
    candidates = [spec.objective, spec.objective + 1, spec.objective - 1]
    good = next(Fraction(c) for c in candidates if spec.operator.holds(c, spec.objective))
    bad = next(Fraction(c) for c in candidates if not spec.operator.holds(c, spec.objective))
    rule = next(r for _, r in _gauge_only(spec, options))
    fired = {
        "exp_labels": dict(rule["labels"]),
        "exp_annotations": {
            **rule["annotations"],
            "description": str(rule["annotations"]["description"])
            .replace("{{ with $labels.track }} on track {{ . }}{{ end }}", "")
            .replace("{{ $value }}", _dec(bad)),
        },
    }
    return [
        {
            "name": f"{spec.alert} fires as soon as {spec.id} does not hold",
            "interval": "1m",
            "input_series": [{"series": selector, "values": f"{_dec(good)}x4 {_dec(bad)}x5"}],
            "alert_rule_test": [
                {"eval_time": "0m", "alertname": spec.alert, "exp_alerts": []},
                {"eval_time": "5m", "alertname": spec.alert, "exp_alerts": [fired]},
            ],
        },
        {
            "name": f"{spec.alert} stays silent while {spec.id} holds, and on no data",
            "interval": "1m",
            "input_series": [{"series": selector, "values": f"{_dec(good)}x10"}],
            "alert_rule_test": [{"eval_time": "10m", "alertname": spec.alert, "exp_alerts": []}],
        },
    ]


def _gauge_only(spec: GaugeSlo, options: RuleOptions) -> list[tuple[str, dict[str, Any]]]:
    rec, alerts = _Group(RECORDING_GROUP), _Group(ALERT_GROUP)
    _gauge_rules(rec, alerts, spec, options)
    return alerts.rules
