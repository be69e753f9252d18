"""deploy/ without ark-obs running: configs valid, rules lint-clean and unit-tested, alerts documented.

promtool, amtool and Alertmanager are the real Debian binaries; one test loads the shipped rules
into a real Prometheus (``prometheus_factory``). Missing binaries skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ark_obs import catalog
from ark_obs.settings import Settings
from plugins.ci import missing_dependency

if TYPE_CHECKING:
    from plugins.prometheus_server import PrometheusFactory

# Until tests/conftest.py registers it for the whole suite.

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "ark.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
README = DEPLOY / "README.md"

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
SLOS = ("availability", "decision_latency_p95", "hrm_eval_latency_p95")
# The only alert without a non-firing case: it must fire at every evaluation (tested at two times).
ALWAYS_FIRING = {"ArkDeadMansSwitch"}
APT = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


def binary(name: str) -> str:
    """Path of a system binary, or skip with the apt-get command (fail under CI=true)."""
    path = shutil.which(name)
    if path is None:
        hint = f"{name} not found: install it with `sudo apt-get install -y {APT[name]}`"
        missing_dependency(hint)
    return path


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    """Parse one YAML file."""
    return yaml.safe_load(path.read_text())


def all_rules() -> list[dict[str, Any]]:
    """Every rule of every shipped rule file, in order."""
    return [rule for f in RULE_FILES for group in load_yaml(f)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    """The shipped alerting rules."""
    return [r for r in all_rules() if "alert" in r]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for the headings of a markdown document."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def promql_metric_names(expr: str) -> set[str]:
    """Raw metric names an expression selects.

    Strings, label matchers and grouping label lists are removed first; what is left that is an
    identifier, not a function call, keyword or recording-rule name (with a colon), is a metric.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = re.findall(r"(?<![\w.:$])([a-zA-Z_][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    keywords = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
    return {w for w in words if w.lower() not in keywords and ":" not in w}


def catalogued_series() -> set[str]:
    """Every series name the catalogue produces (histograms expand to _bucket, _count, _sum)."""
    names = set()
    for spec in catalog.CATALOG:
        if spec.kind is catalog.Kind.HISTOGRAM:
            names |= {f"{spec.name}_bucket", f"{spec.name}_count", f"{spec.name}_sum"}
        else:
            names.add(spec.name)
    return names


# --- Prometheus ----------------------------------------------------------------------------------
def test_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts prometheus.yml and finds every rule file through rule_files."""
    result = run(binary("promtool"), "check", "config", str(PROM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, result.stdout


def test_prometheus_config_scrapes_ark_obs_and_alerts_alertmanager() -> None:
    """prometheus.yml scrapes job ark-obs at 127.0.0.1:9871, loads rules/*.yml and alerts 127.0.0.1:9093."""
    config = load_yaml(PROM_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ark-obs"]["static_configs"][0]["targets"] == ["127.0.0.1:9871"]
    assert config["rule_files"] == ["rules/*.yml"]
    am_targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == ["127.0.0.1:9093"]
    text = PROM_CONFIG.read_text()
    assert "track: canary" in text and "job_name: ark-agents" in text, "commented canary/agent examples"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_lint_clean(rule_file: Path) -> None:
    """`promtool check rules --lint=all --lint-fatal` passes with no warning."""
    result = run(binary("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "warning" not in output and "lint" not in output, output


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    """Every promtool unit test file (alerts firing and not firing, recording rule values) passes."""
    result = run(binary("promtool"), "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_seed_availability_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """Swapping in the seed's `1 - rate(...)*5/300` makes the availability unit tests fail."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, copy)
    rules = copy / "rules" / "ark-slo.rules.yml"
    ours = "expr: clamp_max(clamp_min(1 - ark:watchdog_quarantines:increase5m * 5 / 300, 0), 1)"
    seed = "expr: 1 - (sum(rate(watchdog_quarantines_total[5m])) * 5 / 300)"
    text = rules.read_text()
    assert ours in text
    rules.write_text(text.replace(ours, seed))
    result = run(binary("promtool"), "test", "rules", "tests/slo-recording.test.yml", cwd=copy)
    assert result.returncode != 0, result.stdout
    assert "ark:availability:ratio_5m" in result.stderr, result.stderr


def test_recording_rules_are_named_level_metric_operations() -> None:
    """Every recorded name has the level:metric:operations form."""
    for rule in all_rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_slo_series_exist_for_every_window_and_slo() -> None:
    """Availability, error ratio and burn rate are recorded for each SRE workbook window, per SLO."""
    recorded = {(r["record"], r.get("labels", {}).get("slo")) for r in all_rules() if "record" in r}
    for window in WINDOWS:
        assert (f"ark:availability:ratio_{window}", None) in recorded
        assert (f"ark:slo_burn_rate:ratio_rate{window}", None) in recorded
        for slo in SLOS:
            assert (f"ark:slo_errors:ratio_rate{window}", slo) in recorded, (window, slo)
    for slo in SLOS:
        assert ("ark:slo_objective:ratio", slo) in recorded


def test_latency_rules_select_the_bucket_prometheus_client_renders() -> None:
    """The le selectors in the rules match the le label prometheus_client writes for 400 and 120 ms."""
    registry = CollectorRegistry()
    Histogram("probe_ms", "probe", buckets=catalog.LATENCY_BUCKETS_MS, registry=registry)
    rendered = set(re.findall(r'le="([^"]+)"', generate_latest(registry).decode()))
    text = "\n".join(f.read_text() for f in RULE_FILES)
    selectors = set(re.findall(r'le=~"([^"]+)"', text))
    assert selectors == {r"400(\\.0)?", r"120(\\.0)?"}, selectors
    for threshold in ("400", "120"):
        pattern = re.compile(rf"{threshold}(\.0)?")
        matching = {le for le in rendered if pattern.fullmatch(le)}
        assert matching == {f"{threshold}.0"}, (threshold, rendered)


def test_rules_use_only_catalogued_metrics() -> None:
    """Every raw metric a rule selects is declared in ark_obs.catalog (or is Prometheus' own `up`)."""
    known = catalogued_series() | {"up"}
    for rule in all_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, (rule.get("record") or rule.get("alert"), unknown)


# --- Alerts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_labels_annotations_and_runbook(rule: dict[str, Any]) -> None:
    """Each alert has severity, a literal tier (page|ticket), summary, description and a runbook section."""
    labels, annotations = rule["labels"], rule["annotations"]
    assert labels["severity"] in {"critical", "warning", "none"}
    assert labels["tier"] in {"page", "ticket"}
    assert (labels["severity"] == "critical") == (labels["tier"] == "page") or rule["alert"] in ALWAYS_FIRING
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), key
    url = annotations["runbook_url"]
    base, _, anchor = url.partition("#")
    assert base == Settings.model_fields["runbook_url"].default == "http://127.0.0.1:9871/runbook", url
    assert anchor == rule["alert"].lower(), url


def test_every_runbook_url_anchor_is_a_section_of_the_served_runbook() -> None:
    """Every runbook_url in the rule files and their promtool tests names a section GET /runbook renders."""
    from ark_obs.service import runbook

    page = runbook.render()
    urls = [
        url
        for path in sorted((DEPLOY / "prometheus").rglob("*.yml"))
        for url in re.findall(r"runbook_url: (\S+)", path.read_text())
    ]
    assert len(urls) >= len(alert_rules())
    for url in urls:
        base, _, anchor = url.partition("#")
        assert base == "http://127.0.0.1:9871/runbook", url
        assert f'<h2 id="{anchor}">' in page, f"the runbook has no section #{anchor}"


def test_every_alert_has_a_firing_and_a_non_firing_unit_test() -> None:
    """promtool tests expect each alert to fire somewhere and not to fire somewhere else."""
    firing: set[str] = set()
    silent: set[str] = set()
    for test_file in RULE_TESTS:
        for case in load_yaml(test_file)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent - ALWAYS_FIRING == set(), "alerts never tested not firing"
    assert (firing | silent) - names == set(), "tests name alerts that do not exist"


def test_slo_alerts_carry_the_slo_label() -> None:
    """SLO and SLO-related alerts carry `slo`, which Alertmanager groups and inhibits on."""
    for rule in alert_rules():
        if rule["alert"].startswith("ArkSloBudgetBurn"):
            assert "by (slo" not in rule["expr"]  # the slo label comes from the recording rules
            assert "ark:slo_burn_rate:ratio_rate" in rule["expr"]
        elif rule["alert"] in {"ArkEthicsDrift", "ArkCanaryQuarantine", "ArkCanaryDecisionLatencyHigh"}:
            assert rule["labels"]["slo"] in {"ethics_drift", "availability", "decision_latency_p95"}


# --- Alertmanager --------------------------------------------------------------------------------
def test_alertmanager_config_is_valid() -> None:
    """`amtool check-config` accepts alertmanager.yml."""
    result = run(binary("amtool"), "check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_routes_to_its_receiver(rule: dict[str, Any]) -> None:
    """critical goes to `page`, warning to `ticket`, the dead man's switch to its own receiver."""
    labels = [f"alertname={rule['alert']}", *(f"{k}={v}" for k, v in rule["labels"].items())]
    result = run(binary("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = (
        "deadmansswitch"
        if rule["alert"] in ALWAYS_FIRING
        else {"critical": "page", "warning": "ticket"}[rule["labels"]["severity"]]
    )
    assert result.stdout.split() == [expected]


def test_alertmanager_groups_by_alertname_and_slo() -> None:
    """The root route groups notifications by alertname and slo."""
    assert load_yaml(AM_CONFIG)["route"]["group_by"] == ["alertname", "slo"]


def test_page_inhibits_ticket_of_the_same_slo_only(alertmanager: str) -> None:
    """While a page-tier alert of an SLO fires, only ticket-tier alerts of that SLO (and track) are muted."""
    now = datetime.now(UTC)
    window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}

    def alert(name: str, **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, **labels}, "annotations": {}, **window}

    alerts = [
        alert("ArkSloBudgetBurnPage", severity="critical", tier="page", slo="availability"),
        alert("ArkSloBudgetBurnTicket", severity="warning", tier="ticket", slo="availability"),
        alert("ArkCanaryQuarantine", severity="warning", tier="ticket", slo="availability", agent="Kenny"),
        alert("ArkSloBudgetBurnTicket", severity="warning", tier="ticket", slo="decision_latency_p95"),
        alert("ArkSloBudgetBurnTicket", severity="warning", tier="ticket", slo="availability", track="canary"),
        alert("ArkAgentSilent", severity="critical", tier="page", agent="Joey"),
        alert("ArkRedisStreamBacklog", severity="warning", tier="ticket", stream="ark:signals"),
    ]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()
    expected = {
        ("ArkSloBudgetBurnPage", "availability", None): False,
        ("ArkSloBudgetBurnTicket", "availability", None): True,
        ("ArkCanaryQuarantine", "availability", None): True,
        ("ArkSloBudgetBurnTicket", "decision_latency_p95", None): False,
        ("ArkSloBudgetBurnTicket", "availability", "canary"): False,
        ("ArkAgentSilent", None, None): False,
        ("ArkRedisStreamBacklog", None, None): False,
    }
    deadline = time.monotonic() + 10
    while True:
        got = {
            (a["labels"]["alertname"], a["labels"].get("slo"), a["labels"].get("track")): bool(
                a["status"]["inhibitedBy"]
            )
            for a in httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        }
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected


# --- Grafana -------------------------------------------------------------------------------------
def provisioned_datasource() -> dict[str, Any]:
    """The single provisioned Prometheus datasource."""
    (datasource,) = load_yaml(DATASOURCE)["datasources"]
    return dict(datasource)


def test_datasource_is_prometheus_with_trace_id_exemplar_links() -> None:
    """The datasource has uid ark-prometheus and links the `trace_id` exemplar label to ark-obs' trace report."""
    ds = provisioned_datasource()
    assert (ds["uid"], ds["type"], ds["access"]) == ("ark-prometheus", "prometheus", "proxy")
    (destination,) = ds["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"
    assert destination["url"] == "http://127.0.0.1:9871/traces/${__value.raw}"


def test_dashboard_provider_reads_files() -> None:
    """The dashboard provider is a file provider with a path."""
    (provider,) = load_yaml(DASHBOARD_PROVIDER)["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_provisionable(path: Path) -> None:
    """Dashboard JSON: schemaVersion, uid, unique panel ids, every datasource is the datasource variable,
    which defaults to the provisioned uid."""
    dashboard = json.loads(path.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == provisioned_datasource()["uid"]
    uid = "${" + variable["name"] + "}"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_overview_dashboard_shows_what_operators_need() -> None:
    """SLOs and budgets, latency p50/p95/p99 with exemplars, denials, quarantines, agents, streams, traces."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ark-overview.json").read_text())
    targets = [t for p in dashboard_panels(dashboard) for t in p.get("targets", [])]
    exprs = "\n".join(t["expr"] for t in targets)
    for needle in (
        "ark_slo_met",
        "ark_slo_error_budget_remaining_ratio",
        "ark:slo_burn_rate:ratio_rate",
        "sum by (rule_id, track) (rate(hrm_denials_total",
        "sum by (agent, reason, track) (increase(watchdog_quarantines_total",
        "ark_agent_up",
        "redis_stream_depth",
        "ark_traces_complete_total",
        "sum by (missing_agent, track) (rate(ark_traces_incomplete_total",
    ):
        assert needle in exprs, needle
    latency = [t for t in targets if "ark_pass_latency_ms_bucket" in t["expr"]]
    quantiles = {float(q) for t in latency for q in re.findall(r"histogram_quantile\(([\d.]+)", t["expr"])}
    assert quantiles == {0.5, 0.95, 0.99}
    assert all(t["exemplar"] for t in latency)
    known = catalogued_series() | {"up"}
    for target in targets:
        unknown = promql_metric_names(target["expr"]) - known
        assert not unknown, (target["expr"], unknown)


# --- README --------------------------------------------------------------------------------------
def test_readme_documents_the_command_line_and_the_corrections() -> None:
    """deploy/README.md shows the exemplar-storage command line, the availability fix and le=".0"."""
    text = README.read_text()
    assert "--enable-feature=exemplar-storage" in text
    assert "rate(watchdog_quarantines_total[5m]) * 5 / 300" in text
    assert 'le="400.0"' in text
    assert "zero traffic" in text.lower()


# --- A real Prometheus ---------------------------------------------------------------------------
def test_shipped_rules_load_and_evaluate_in_prometheus(prometheus_factory: PrometheusFactory) -> None:
    """A real Prometheus loads every shipped rule and evaluates each one without error."""
    prom = prometheus_factory()
    shipped = {r.get("record") or r["alert"] for r in all_rules()}
    never = "0001-01-01T00:00:00Z"

    def evaluations() -> dict[str, str]:
        return {g["name"]: g["lastEvaluation"] for g in prom.rules()}

    def evaluated_once() -> dict[str, str] | None:
        seen = evaluations()
        return seen if seen and never not in seen.values() else None

    first = prom.wait_until(evaluated_once, timeout=10, what="a first evaluation of every group")
    prom.wait_until(
        lambda: all(last != first[name] for name, last in evaluations().items()),
        timeout=10,
        what="a second evaluation of every group",
    )
    rules = [rule for group in prom.rules() for rule in group["rules"]]
    assert {r["name"] for r in rules} == shipped
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert unhealthy == {}
    # Evaluations really ran: the dead man's switch fires, and with no ark-obs target at all the
    # absent() branch of ArkObsDown is pending (it fires after its 1m `for`).
    alerts = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
    assert alerts.get("ArkDeadMansSwitch") == "firing"
    assert alerts.get("ArkObsDown") == "pending"
