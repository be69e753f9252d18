"""deploy/alertmanager/templates: every shipped alert rendered with `amtool template render` (the real Alertmanager
template engine) carries its summary, what is failing (description and the labels that locate it) and an absolute
runbook link `{ARK_OBS_RUNBOOK_URL}#{alertname lowercased}`; alertmanager.yml loads the templates. The annotations
are given as the rules write them (Prometheus expands their `{{ $labels... }}` before Alertmanager sees them)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ark_obs.settings import Settings
from plugins.ci import missing_dependency

ROOT = Path(__file__).resolve().parents[2]
AM_DIR = ROOT / "deploy" / "alertmanager"
TEMPLATES = AM_DIR / "templates"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
# the shared decision (HELPERS): ARK_OBS_RUNBOOK_URL's default; the settings field once it is on this branch
DEFAULT_RUNBOOK = "http://127.0.0.1:9871/runbook"
SAMPLE_LABELS = {"slo": "availability", "agent": "Joey", "track": "canary", "instance": "10.0.0.7:9871"}


def amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        missing_dependency("amtool not found: sudo apt-get install -y prometheus-alertmanager")
    return path


def runbook_base() -> str:
    field = Settings.model_fields.get("runbook_url")
    return str(field.default) if field is not None else DEFAULT_RUNBOOK


def alert_rules() -> list[dict[str, Any]]:
    return [r for path in RULES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r]


def alert(rule: dict[str, Any], **annotations: str) -> dict[str, Any]:
    labels = {"alertname": rule["alert"], **rule["labels"], **SAMPLE_LABELS}
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {**rule["annotations"], **annotations},
        "startsAt": "2026-12-06T08:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
        "fingerprint": "0123456789abcdef",
    }


def render(tmp_path: Path, template: str, alerts: list[dict[str, Any]], each: bool = False) -> str:
    """``template`` rendered by amtool for a group of ``alerts`` (``each``: a per-alert template, for every alert)."""
    text = f'{{{{ template "{template}" . }}}}'
    if each:
        text = f"{{{{ range .Alerts }}}}{text}{{{{ end }}}}"
    common = {k: v for k, v in alerts[0]["labels"].items() if all(a["labels"].get(k) == v for a in alerts)}
    data = {
        "receiver": "page",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": common.get("alertname", "")},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    done = subprocess.run(
        [amtool(), "template", "render", f"--template.glob={TEMPLATES}/*.tmpl",
         f"--template.text={text}", f"--template.data={path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_alertmanager_config_loads_the_templates() -> None:
    config = yaml.safe_load((AM_DIR / "alertmanager.yml").read_text())
    assert config["templates"] == ["templates/*.tmpl"]
    assert sorted(TEMPLATES.glob("*.tmpl"))
    done = subprocess.run([amtool(), "check-config", str(AM_DIR / "alertmanager.yml")], capture_output=True, text=True)
    assert done.returncode == 0 and " - 1 templates" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_renders_summary_failure_and_absolute_runbook(rule: dict[str, Any], tmp_path: Path) -> None:
    text = render(tmp_path, "ark.text", [alert(rule)])
    name = rule["alert"]
    assert text.startswith(f"FIRING {name} ({rule['labels']['severity']}, tier {rule['labels']['tier']})")
    assert f"Summary: {rule['annotations']['summary']}" in text
    assert "What is failing: slo=availability agent=Joey track=canary instance=10.0.0.7:9871" in text
    assert rule["annotations"]["description"].strip() in text
    assert "Since: 2026-12-06 08:00:00 UTC" in text
    assert f"Runbook: {runbook_base()}#{name.lower()}\n" in text
    assert "<no value>" not in text


def test_an_absolute_runbook_annotation_is_used_as_it_is(tmp_path: Path) -> None:
    """Rules written with ARK_OBS_RUNBOOK_URL set carry the absolute link: the template keeps it."""
    rule = alert_rules()[0]
    link = f"https://runbooks.example.org/ark#{rule['alert'].lower()}"
    runbook = render(tmp_path, "ark.runbook", [alert(rule, runbook_url=link)], each=True)
    assert runbook == link
    text = render(tmp_path, "ark.text", [alert(rule, runbook_url=link)])
    assert f"Runbook: {link}\n" in text


def test_title_and_summary_of_a_group(tmp_path: Path) -> None:
    rules = [r for r in alert_rules() if r["alert"] == "ArkAgentSilent"]
    alerts = [alert(rules[0]), {**alert(rules[0]), "labels": {**alert(rules[0])["labels"], "agent": "Kenny"}}]
    title = render(tmp_path, "ark.title", alerts)
    assert title == "[FIRING:2] ArkAgentSilent slo=availability track=canary (page)"
    summary = render(tmp_path, "ark.summary", alerts).splitlines()
    assert [line.split(":")[0] for line in summary] == ["ArkAgentSilent", "ArkAgentSilent"]
    assert "agent=Joey" in summary[0] and "agent=Kenny" in summary[1]
