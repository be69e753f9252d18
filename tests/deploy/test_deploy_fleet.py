"""Metrics for a fleet: recording rules aggregate across replicas, and the fleet Prometheus examples load.

The two-replica check is generated, so it covers every recording rule: each promtool test of
slo-recording.test.yml is replayed twice in one run, once as a single ark-obs (``track="single"``,
counters = the sum of both replicas') and once as two replicas (``track="fleet"``, the second seeing the
same traffic 3 steps later). A rule
whose ``by``/``without`` keeps ``instance`` or drops a label it needs, or that takes a max instead of a
sum, gives the two tracks different values; promtool fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy_static import PROM_DIR, binary, run

RULE_FILES = [PROM_DIR / "rules" / "ark-slo.rules.yml", PROM_DIR / "rules" / "ark-canary.rules.yml"]
SOURCE_TESTS = PROM_DIR / "tests" / "slo-recording.test.yml"
FLEET_EXAMPLES = PROM_DIR / "fleet"
COUNTER = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(_total|_bucket|_count|_sum)\{")


def _expand(values: str) -> list[float | None]:
    """A promtool series values string as one value per step (None: missing)."""
    out: list[float | None] = []
    for token in values.split():
        if token.startswith("_"):
            out += [None] * (int(token[2:]) if token.startswith("_x") else 1)
            continue
        m = re.fullmatch(r"(-?[\d.e+]+?)(?:([+-])([\d.]+))?(?:x(\d+))?", token)
        assert m, f"unexpected series token {token!r}"
        start, sign, step, times = m.groups()
        delta = (float(step) if sign == "+" else -float(step)) if sign else 0.0
        out += [float(start) + i * delta for i in range(int(times) + 1 if times else 1)]
    return out


def _join(values: list[float | None]) -> str:
    return " ".join("_" if v is None else f"{v:g}" for v in values)


def _split(values: str, lag: int = 3) -> tuple[str, str, str]:
    """(one replica's counter, the other's, their sum): the second replica sees the same traffic ``lag``
    steps later, so the two are not proportional and a rule that takes one replica's value differs."""
    a = _expand(values)
    b = [a[0]] * lag + a[:-lag] if len(a) > lag else list(a)
    # one process holding both: the series exists while either replica's does
    total = [None if x is None and y is None else (x or 0.0) + (y or 0.0) for x, y in zip(a, b, strict=True)]
    return _join(a), _join(b), _join(total)


def _relabel(series: str, **labels: str) -> str:
    name, _, rest = series.partition("{")
    body = rest.rstrip("}")
    kept = [p for p in re.findall(r'\w+="(?:[^"\\]|\\.)*"', body) if p.split("=")[0] not in labels]
    return name + "{" + ", ".join(kept + [f'{k}="{v}"' for k, v in labels.items()]) + "}"


def _record_names() -> list[str]:
    names: list[str] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule and rule["record"] not in names:
                    names.append(rule["record"])
    return names


def _fleet_tests() -> dict[str, Any]:
    source = yaml.safe_load(SOURCE_TESTS.read_text())
    records = _record_names()
    tests = []
    for test in source["tests"]:
        inputs = []
        for s in test["input_series"]:
            if COUNTER.match(s["series"]):
                a, b, total = _split(s["values"])
            else:
                a = b = total = s["values"]  # up and gauges: each replica reports the same
            inputs.append({"series": _relabel(s["series"], track="single", instance="single:9871"), "values": total})
            for replica, values in (("a", a), ("b", b)):
                inputs.append({"series": _relabel(s["series"], track="fleet", instance=f"{replica}:9871"),
                               "values": values})  # fmt: skip
        times = sorted({t["eval_time"] for t in test.get("promql_expr_test", [])})
        checks = []
        for record in records:
            single, fleet = f'round({record}{{track="single"}}, 1e-6)', f'round({record}{{track="fleet"}}, 1e-6)'
            # NaN (a quantile of no traffic) equals NaN here: x == x drops NaN samples
            differs = (
                f"(({fleet} != ignoring(track) {single}) and ignoring(track) ({fleet} == {fleet})) "
                f"or ({single} unless ignoring(track) {fleet}) or ({fleet} unless ignoring(track) {single}) "
                f"or (({fleet} == {fleet}) unless ignoring(track) ({single} == {single})) "
                f"or (({single} == {single}) unless ignoring(track) ({fleet} == {fleet}))"
            )
            checks += [{"expr": differs, "eval_time": t, "exp_samples": []} for t in times]
        tests.append({"name": f"fleet: {test['name']}", "interval": test["interval"], "input_series": inputs,
                      "promql_expr_test": checks})  # fmt: skip
    return {
        "rule_files": [str(p) for p in RULE_FILES],
        "evaluation_interval": source.get("evaluation_interval", "1m"),
        "group_eval_order": source.get("group_eval_order", []),
        "tests": tests,
    }


def test_every_recording_rule_sums_two_replicas_like_one(tmp_path: Path) -> None:
    """Two replicas splitting the counters give every recording rule the value one replica holding their sum
    gives (so no rule's by/without keeps instance or takes one replica's value)."""
    spec = _fleet_tests()
    assert len(spec["tests"]) >= 5 and len(_record_names()) >= 30
    # the comparison is not vacuous: the single track has samples for the rules the source tests check
    probe = spec["tests"][0]
    probe["promql_expr_test"].append({
        "expr": 'count(ark:availability:ratio_5m{track="single"}) + count(ark:availability:ratio_5m{track="fleet"})',
        "eval_time": "15m", "exp_samples": [{"labels": "{}", "value": 2}],
    })  # fmt: skip
    path = tmp_path / "fleet.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run(binary("promtool"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_a_max_instead_of_a_sum_is_caught(tmp_path: Path) -> None:
    """The generated check fails for rules that take one replica's value (max by track) instead of a sum."""
    broken = tmp_path / "broken.rules.yml"
    text = RULE_FILES[0].read_text()
    assert "sum by (track) (" in text
    broken.write_text(text.replace("sum by (track) (", "max by (track) ("))
    spec = _fleet_tests()
    spec["rule_files"] = [str(broken), str(RULE_FILES[1])]
    path = tmp_path / "fleet.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run(binary("promtool"), "test", "rules", str(path))
    assert result.returncode != 0


@pytest.mark.parametrize("config", sorted(FLEET_EXAMPLES.glob("prometheus-*.yml")), ids=lambda p: p.name)
def test_fleet_prometheus_examples_pass_promtool_check_config(config: Path) -> None:
    """The fleet examples (file_sd discovery, remote_write to a long-term store) are valid Prometheus configs."""
    result = run(binary("promtool"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_fleet_examples_discover_replicas_and_write_remotely() -> None:
    """file_sd targets list several ark-obs replicas; the remote_write example names a receiver URL."""
    targets = yaml.safe_load((FLEET_EXAMPLES / "targets" / "ark-obs.yml").read_text())
    assert sum(len(group["targets"]) for group in targets) >= 3
    remote = yaml.safe_load((FLEET_EXAMPLES / "prometheus-remote-write.yml").read_text())
    assert remote["remote_write"][0]["url"].startswith("http")
