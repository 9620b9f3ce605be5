"""The audit: clean accuracy, each attack at each eps, the worst case, the gate."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from adversarial.evaluation import AttackConfig, EvaluationResult, evaluate
from service.database import session_scope
from service.datasets import repository as datasets
from service.jobs.results import AttackResult, AuditResult, WorstCaseResult, gate_for
from service.jobs.specs import AuditSpec
from service.models import repository as models
from service.settings import get_settings
from service.storage import get_store
from service.tables import Job
from worker.lease import Lease
from worker.loading import load_examples, load_user_model, select_device, subset


def attack_configs(spec: AuditSpec) -> list[AttackConfig]:
    """One engine configuration per attack and eps, in the order of the spec."""
    return [
        AttackConfig(name=attack.name, norm=attack.norm, eps=eps, params=attack.params())
        for attack in spec.attacks
        for eps in attack.eps
    ]


def audit_result(
    spec: AuditSpec, evaluation: EvaluationResult, *, device: str, seconds: float
) -> AuditResult:
    """The result document of an audit."""
    attacks = [
        AttackResult(
            name=o.config.name,
            norm=o.config.norm,
            eps=o.config.eps,
            params=dict(o.config.params),
            robust_accuracy=o.robust_accuracy,
            success_rate=o.success_rate,
            mean_wrong_confidence=o.mean_wrong_confidence,
            mean_perturbation_norm=o.mean_perturbation_norm,
            max_perturbation_norm=o.max_perturbation_norm,
            per_class_accuracy=o.per_class_accuracy,
            seconds=round(o.seconds, 4),
        )
        for o in evaluation.outcomes
    ]
    return AuditResult(
        model_id=spec.model_id,
        dataset_id=spec.dataset_id,
        split=spec.split,
        num_examples=evaluation.num_examples,
        seed=spec.seed,
        device=device,
        clean_accuracy=evaluation.clean_accuracy,
        per_class_clean_accuracy=evaluation.per_class_clean_accuracy,
        attacks=attacks,
        worst_case=[
            WorstCaseResult(
                norm=w.norm, eps=w.eps, attacks=w.attacks, robust_accuracy=w.robust_accuracy
            )
            for w in evaluation.worst_cases
        ],
        gate=gate_for(spec, evaluation.clean_accuracy, attacks),
        seconds=round(seconds, 4),
    )


class AuditRunner:
    """Runs an audit spec through :func:`adversarial.evaluation.evaluate`."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        settings = get_settings()
        store = get_store()
        spec = AuditSpec.model_validate(job.spec)
        with session_scope() as session:
            model_row = models.get_any(session, spec.model_id)
            dataset_row = None
            if not spec.dataset_id.startswith("builtin:"):
                dataset_row = datasets.get_any(session, spec.dataset_id)
        if model_row is None:
            raise LookupError(f"model {spec.model_id} is gone")

        lease.report(0.0, "loading", "loading model and data", force=True)
        device = select_device(settings.worker_device)
        model = load_user_model(model_row, store, settings).to(device)
        x, y = load_examples(spec.dataset_id, spec.split, dataset_row, store, settings)
        x, y, _ = subset(x, y, spec.limit, spec.seed)

        evaluation = evaluate(
            model,
            x,
            y,
            attack_configs(spec),
            num_classes=model_row.num_classes,
            input_range=(model_row.input_range[0], model_row.input_range[1]),
            batch_size=spec.batch_size or settings.eval_batch_size,
            device=device,
            seed=spec.seed,
            progress=lease.report,
        )
        result = audit_result(
            spec, evaluation, device=str(device), seconds=time.perf_counter() - started
        )
        return result.model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        return None

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
