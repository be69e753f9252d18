"""deploy/kubernetes, offline: every object against the Kubernetes schemas `kubernetes-validate` ships (strict:
unknown fields fail), the Prometheus Operator objects against their CRDs' openAPIV3Schema (vendored in
tests/deploy/crds from prometheus-operator v0.93.0, unknown fields failing as with kubectl's strict field
validation), the objects' references to each other, the generated objects equal to their sources, the
Deployment's hardening and sizing, the validation Job's RBAC against the plan's kubectl steps, and what
check-config says about the shipped settings. Nothing here needs a cluster."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ark_obs.canary import CanaryConfig
from ark_obs.cli import build_parser
from ark_obs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
CRDS = Path(__file__).parent / "crds"
PLAN = ROOT / "deploy" / "rollouts" / "validate" / "post-deploy.toml"
KUBE_VERSIONS = ("1.29.0", "1.33.0")  # the oldest and a recent supported minor; schemas ship with the package
OPERATOR_CRDS = {
    "ServiceMonitor": CRDS / "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": CRDS / "monitoring.coreos.com_prometheusrules.yaml",
}
ARK_OBS = Path(sys.executable).with_name("ark-obs")


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def ids(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever the CRD lists its properties (kubectl's strict mode)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validator(kind: str) -> tuple[jsonschema.Draft7Validator, dict[str, Any]]:
    crd = yaml.safe_load(OPERATOR_CRDS[kind].read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema), crd


# --- schemas ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [o for o in objects() if o["kind"] not in OPERATOR_CRDS], ids=ids)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_object_is_valid_kubernetes(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)
    assert obj["metadata"]["namespace"] == "ark"


def test_kubernetes_validate_refuses_an_unknown_field() -> None:
    """The check above has teeth: a misspelt field fails."""
    bad = copy.deepcopy(find("Deployment", "ark-obs"))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kind", sorted(OPERATOR_CRDS))
def test_operator_object_is_valid_against_its_crd(kind: str) -> None:
    validator, crd = crd_validator(kind)
    (obj,) = [o for o in objects() if o["kind"] == kind]
    assert obj["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    assert not errors, errors


def test_crd_check_refuses_an_unknown_field() -> None:
    validator, _ = crd_validator("ServiceMonitor")
    bad = copy.deepcopy(find("ServiceMonitor", "ark-obs"))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in e.message for e in validator.iter_errors(bad))


def test_kustomization_lists_every_object_but_the_one_off_job_and_the_placeholder_secret() -> None:
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    left_out = {"validate-job.yaml", "secret.yaml"}
    assert sorted(listed) == sorted(p.name for p in manifest_files() if p.name not in left_out)


# --- generated objects -------------------------------------------------------------------------------------------
def test_generated_objects_equal_their_sources() -> None:
    done = subprocess.run([sys.executable, "scripts/gen_kubernetes.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_prometheus_rule_groups_are_the_rule_files_groups() -> None:
    """What the Operator loads is what Prometheus loads from deploy/prometheus/rules/*.yml, group for group."""
    shipped = [group for path in RULES for group in yaml.safe_load(path.read_text())["groups"]]
    assert find("PrometheusRule", "ark-obs")["spec"]["groups"] == shipped


def test_slo_and_plan_config_maps_are_the_files() -> None:
    slos = ROOT / "src" / "ark_obs" / "slo" / "defaults.toml"
    assert find("ConfigMap", "ark-obs-slos")["data"] == {"slos.toml": slos.read_text()}
    assert find("ConfigMap", "ark-obs-post-deploy-plan")["data"] == {"post-deploy.toml": PLAN.read_text()}


# --- the Deployment and what it refers to ---------------------------------------------------------------------------
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = find("Deployment", "ark-obs")["spec"]["template"]
    return spec


def test_deployment_probes_hardening_and_resources() -> None:
    spec = pod()["spec"]
    (container,) = spec["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    # sized from bench/RESULTS.md: the memory limit covers the measured RSS with 100,000 traces in flight
    rss = re.search(
        r"\| RSS, 100,000 traces in flight .*?\| [\d.]+ → ([\d.]+) MiB", (ROOT / "bench/RESULTS.md").read_text()
    )
    assert rss, "bench/RESULTS.md lost its RSS row, which the Deployment's sizing cites"
    limit = int(container["resources"]["limits"]["memory"].removesuffix("Mi"))
    request = int(container["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert float(rss.group(1)) * 1.3 <= request <= limit
    header = (KUBE / "deployment.yaml").read_text()
    assert rss.group(1) in header and "bench_service" in header


def test_objects_refer_to_each_other() -> None:
    deployment = find("Deployment", "ark-obs")
    labels = pod()["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    spec = pod()["spec"]
    find("ServiceAccount", spec["serviceAccountName"])
    (container,) = spec["containers"]
    for source in container["envFrom"]:
        if "configMapRef" in source:
            find("ConfigMap", source["configMapRef"]["name"])
        else:
            find("Secret", source["secretRef"]["name"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    slos = find("ConfigMap", volumes["slos"]["configMap"]["name"])
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "slos")
    env = find("ConfigMap", "ark-obs-env")["data"]
    assert env["ARK_OBS_SLO_FILE"] in {f"{mount}/{key}" for key in slos["data"]}
    service = find("Service", "ark-obs")
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        obj = find(kind, "ark-obs")
        key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
        assert obj["spec"][key]["matchLabels"].items() <= labels.items(), kind
    assert find("PodDisruptionBudget", "ark-obs")["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    monitor = find("ServiceMonitor", "ark-obs")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "ark-obs"  # job="ark-obs", as the rules need
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["podTargetLabels"] == ["track"] and "track" in labels


def test_shipped_settings_need_the_secret_replaced(tmp_path: Path) -> None:
    """The ConfigMap's settings with the placeholder token are refused; with a real token check-config passes."""
    env = dict(find("ConfigMap", "ark-obs-env")["data"])
    slo_file = tmp_path / "slos.toml"
    slo_file.write_text(find("ConfigMap", "ark-obs-slos")["data"]["slos.toml"])
    env["ARK_OBS_SLO_FILE"] = str(slo_file)
    # every value parses, the URLs too; their servers are not reachable here, so the combination is checked below
    # with the memory store and the default Prometheus
    canary_url = env.pop("ARK_OBS_CANARY_PROMETHEUS_URL")
    assert CanaryConfig(prometheus_url=canary_url).prometheus_url == canary_url
    Settings(**{k.removeprefix("ARK_OBS_").lower(): v for k, v in env.items()})
    env["ARK_OBS_TRACE_STORE"] = "memory"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARK_OBS_")}

    def check(token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ARK_OBS), "check-config"], cwd=tmp_path, capture_output=True, text=True,
                              env={**clean, **env, "ARK_OBS_INGEST_TOKEN": token})  # fmt: skip

    placeholder = find("Secret", "ark-obs-token")["stringData"]["ARK_OBS_INGEST_TOKEN"]
    refused = check(placeholder)
    assert refused.returncode == 2 and "ARK_OBS_INGEST_TOKEN" in refused.stderr
    assert check("0123456789abcdef0123456789abcdef").returncode == 0


# --- the post-deploy validation Job --------------------------------------------------------------------------------
KUBECTL_VERBS = {"delete": {"list", "delete"}, "get": {"get", "list"}, "rollout": {"get", "list", "patch"}}


def test_validation_job_may_run_every_kubectl_step_of_the_plan() -> None:
    job = find("Job", "ark-obs-post-deploy-validate")["spec"]["template"]["spec"]
    binding = find("RoleBinding", "ark-obs-validate")
    assert {"kind": "ServiceAccount", "name": job["serviceAccountName"], "namespace": "ark"} in binding["subjects"]
    role = find("Role", binding["roleRef"]["name"])
    allowed = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    steps = tomllib.loads(PLAN.read_text())["steps"]
    commands = [s["inject"]["command"] for s in steps if "command" in s.get("inject", {})]
    assert commands, "the plan has kubectl steps: the Role exists for them"
    for argv in commands:
        assert argv[0] == "kubectl"
        namespace = argv[argv.index("-n") + 1]
        assert namespace == role["metadata"]["namespace"]
        verb, resource = [a for a in argv[1:] if not a.startswith("-") and a != namespace][:2]
        plural = resource if resource.endswith("s") else resource + "s"
        for needed in KUBECTL_VERBS[verb]:
            assert (plural, needed) in allowed, (argv, needed)
    # nothing more than that: no wildcard, no other resource
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])


def test_validation_job_runs_the_plan_from_its_config_map() -> None:
    job = find("Job", "ark-obs-post-deploy-validate")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    argv = container["command"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "validate" and args.json
    volumes = {v["name"]: v for v in job["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    plan_dir, key = str(args.plan.parent), args.plan.name
    config_map = find("ConfigMap", volumes[mounts[plan_dir]]["configMap"]["name"])
    assert key in config_map["data"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["restartPolicy"] == "Never"


# --- one name for the track label ------------------------------------------------------------------------------
def deploy_texts() -> dict[Path, str]:
    suffixes = {".md", ".yml", ".yaml", ".json", ".toml"}
    return {p: p.read_text() for p in (ROOT / "deploy").rglob("*") if p.is_file() and p.suffix in suffixes}


def test_one_track_label_name_across_deploy() -> None:
    """`track` everywhere: the Argo Rollout's pod label, the Deployment's, every relabelling from a pod label, the
    ServiceMonitor, the target label the rules aggregate by. (deploy/README once said pod_label_ark_track, the
    rollouts README pod_label_track: copied together, the canary selector matched nothing.)"""
    relabels = 0
    for path, text in deploy_texts().items():
        for name in re.findall(r"__meta_kubernetes_pod_label_(\w+)", text):
            assert "track" not in name or name == "track", (path, name)
        assert not re.search(r"\bark[_.-]track\b", text), path
        for target in re.findall(r"__meta_kubernetes_pod_label_track\]\s*,?\s*target_label:\s*(\w+)", text):
            assert target == "track", path
            relabels += 1
    assert relabels >= 2  # deploy/README.md and deploy/rollouts/README.md
    rollouts = [
        doc
        for path in (ROOT / "deploy" / "rollouts").rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "Rollout"
    ]
    metadata = [
        r["spec"]["strategy"]["canary"] for r in rollouts if "canaryMetadata" in r["spec"]["strategy"]["canary"]
    ]
    assert metadata
    for canary in metadata:
        assert set(canary["canaryMetadata"]["labels"]) == set(canary["stableMetadata"]["labels"]) == {"track"}
    assert "track" in pod()["metadata"]["labels"]
    assert find("ServiceMonitor", "ark-obs")["spec"]["podTargetLabels"] == ["track"]
    for rule in (r for path in RULES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]):
        for by in re.findall(r"by \(([^)]*)\)", rule["expr"]):
            assert not re.search(r"\b\w+_track\b|\btrack_\w+\b", by), rule


def test_argo_validation_job_runs_as_the_job_in_deploy_kubernetes() -> None:
    """The Argo post-promotion Job and validate-job.yaml: one service account, one image, one plan ConfigMap."""
    path = ROOT / "deploy" / "rollouts" / "validate" / "argo-post-promotion.yaml"
    (template,) = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "AnalysisTemplate"]
    argo = template["spec"]["metrics"][0]["provider"]["job"]["spec"]["template"]["spec"]
    job = find("Job", "ark-obs-post-deploy-validate")["spec"]["template"]["spec"]
    assert argo["serviceAccountName"] == job["serviceAccountName"]
    assert argo["containers"][0]["image"] == job["containers"][0]["image"]
    assert argo["volumes"][0]["configMap"] == job["volumes"][0]["configMap"]
