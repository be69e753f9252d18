"""Post-deploy validation as code: a plan of injections and expected reactions, and its verdict.

``ark-obs validate --synthetic`` runs the seed's checklist (``default_plan``) against the built-in
synthetic pipeline; ``ark-obs validate --plan FILE`` runs a TOML plan against a deployment. Modules:
``plan`` (the model and TOML loading), ``evidence`` (readers of ark-obs, Prometheus, Alertmanager),
``expectations`` (what each kind checks), ``inject``, ``runner``, ``report``, ``builtin`` (the
synthetic deployment) and ``command`` (the CLI).
"""

from ark_obs.validate.builtin import SyntheticDeployment
from ark_obs.validate.command import validate
from ark_obs.validate.evidence import AlertmanagerReader, ArkObsReader, EvidenceUnavailable, PrometheusReader
from ark_obs.validate.expectations import Readers
from ark_obs.validate.inject import InjectionFailed, Injector
from ark_obs.validate.plan import Plan, PlanError, Sources, Step, default_plan, load_plan
from ark_obs.validate.report import StepResult, ValidationReport, Verdict
from ark_obs.validate.runner import run_plan

__all__ = [
    "AlertmanagerReader",
    "ArkObsReader",
    "EvidenceUnavailable",
    "InjectionFailed",
    "Injector",
    "Plan",
    "PlanError",
    "PrometheusReader",
    "Readers",
    "Sources",
    "Step",
    "StepResult",
    "SyntheticDeployment",
    "ValidationReport",
    "Verdict",
    "default_plan",
    "load_plan",
    "run_plan",
    "validate",
]
