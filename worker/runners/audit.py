"""The audit: clean accuracy, each attack at each eps, validity checks, the gate, artifacts."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from adversarial.checks import Finding, large_eps_check, model_checks, result_checks
from adversarial.evaluation import AttackConfig, EvaluationResult, evaluate
from service.database import session_scope
from service.datasets import repository as datasets
from service.jobs import repository as jobs
from service.jobs.results import (
    ArtifactRef,
    AttackResult,
    AuditResult,
    ComponentResult,
    Curve,
    NoiseResult,
    Warning_,
    WorstCaseResult,
    gate_for,
)
from service.jobs.service import PER_SAMPLE_ARTIFACT
from service.jobs.specs import AuditSpec
from service.models import repository as models
from service.settings import get_settings
from service.storage import ArtifactStore, get_store
from service.tables import Artifact, Job, new_id
from worker.lease import Lease
from worker.loading import load_examples, load_user_model, select_device, subset


def attack_configs(spec: AuditSpec) -> list[AttackConfig]:
    """One engine configuration per attack and eps: attacks in the order of the spec, each
    one's eps ascending (a curve; ensembles carry fooled examples to larger eps)."""
    return [
        AttackConfig(name=attack.name, norm=attack.norm, eps=eps, params=attack.params())
        for attack in spec.resolved_attacks()
        for eps in sorted(attack.eps)
    ]


def curves(evaluation: EvaluationResult) -> list[Curve]:
    """Robust accuracy against eps, one curve per attack family."""
    families: dict[tuple[str, str, str], Curve] = {}
    for outcome in evaluation.outcomes:
        curve = families.setdefault(
            outcome.config.family,
            Curve(attack=outcome.config.name, norm=outcome.config.norm, eps=[], robust_accuracy=[]),
        )
        curve.eps.append(outcome.config.eps)
        curve.robust_accuracy.append(outcome.robust_accuracy)
    return list(families.values())


def per_sample_npz(
    evaluation: EvaluationResult, indices: np.ndarray, x: np.ndarray, y: np.ndarray
) -> bytes:
    """The per-example export: dataset indices, clean inputs, labels, clean predictions and,
    per norm, the smallest eps at which each example fell, that adversarial input and its
    prediction."""
    arrays: dict[str, np.ndarray] = {
        "indices": indices.astype(np.int64),
        "clean_inputs": x.astype(np.float32),
        "labels": y.astype(np.int64),
        "clean_predictions": evaluation.clean_predictions.numpy(),
        "clean_confidences": evaluation.clean_confidences.numpy(),
    }
    for summary in evaluation.per_sample:
        arrays[f"fell_at_{summary.norm}"] = summary.fell_at.numpy()
        arrays[f"adversarial_{summary.norm}"] = summary.adversarial_inputs.numpy()
        arrays[f"predictions_{summary.norm}"] = summary.adversarial_predictions.numpy()
        arrays[f"confidences_{summary.norm}"] = summary.adversarial_confidences.numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def audit_result(
    spec: AuditSpec,
    evaluation: EvaluationResult,
    *,
    device: str,
    seconds: float,
    findings: list[Finding],
    large_eps_accuracy: float | None,
    artifacts: list[ArtifactRef],
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
            confusion=o.confusion,
            components=[
                ComponentResult(
                    name=c.name, robust_accuracy=c.robust_accuracy, seconds=round(c.seconds, 4)
                )
                for c in o.components
            ],
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
        curves=curves(evaluation),
        worst_case=[
            WorstCaseResult(
                norm=w.norm, eps=w.eps, attacks=w.attacks, robust_accuracy=w.robust_accuracy
            )
            for w in evaluation.worst_cases
        ],
        noise_baseline=[
            NoiseResult(norm=n.norm, eps=n.eps, accuracy=n.accuracy) for n in evaluation.noise
        ],
        large_eps_accuracy=large_eps_accuracy,
        warnings=[Warning_(code=f.code, message=f.message) for f in findings],
        gate=gate_for(spec, evaluation.clean_accuracy, attacks),
        artifacts=artifacts,
        seconds=round(seconds, 4),
    )


def store_artifact(store: ArtifactStore, name: str, data: bytes, content_type: str) -> ArtifactRef:
    """Put bytes in the store; the row is written with the job's result (``on_success``)."""
    sha256, size = store.put_bytes(data)
    return ArtifactRef(name=name, sha256=sha256, size=size, content_type=content_type)


class AuditRunner:
    """Runs an audit spec through :func:`adversarial.evaluation.evaluate` and the checks."""

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
        x, y, indices = subset(x, y, spec.limit, spec.seed)
        input_range = (model_row.input_range[0], model_row.input_range[1])

        findings: list[Finding] = []
        if spec.checks:
            lease.report(0.0, "checks", "checking the model's outputs and gradients", force=True)
            findings += model_checks(model, x, y, device=device)

        evaluation = evaluate(
            model,
            x,
            y,
            attack_configs(spec),
            num_classes=model_row.num_classes,
            input_range=input_range,
            batch_size=spec.batch_size or settings.eval_batch_size,
            device=device,
            seed=spec.seed,
            progress=lease.report,
        )
        large_eps_accuracy = None
        if spec.checks:
            lease.report(1.0, "checks", "checking the attacks' results", force=True)
            findings += result_checks(evaluation)
            correct = evaluation.clean_correct
            if correct.any():
                large_eps_accuracy, large_eps_findings = large_eps_check(
                    model,
                    x[correct],
                    y[correct],
                    input_range=input_range,
                    device=device,
                    seed=spec.seed,
                )
                findings += large_eps_findings

        artifacts = [
            store_artifact(
                store,
                PER_SAMPLE_ARTIFACT,
                per_sample_npz(evaluation, indices, x.numpy(), y.numpy()),
                "application/octet-stream",
            )
        ]
        result = audit_result(
            spec,
            evaluation,
            device=str(device),
            seconds=time.perf_counter() - started,
            findings=findings,
            large_eps_accuracy=large_eps_accuracy,
            artifacts=artifacts,
        )
        return result.model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        for artifact in result.get("artifacts", []):
            jobs.add_artifact(
                session,
                Artifact(
                    id=new_id("a"),
                    tenant_id=job.tenant_id,
                    job_id=job.id,
                    name=artifact["name"],
                    sha256=artifact["sha256"],
                    size=artifact["size"],
                    content_type=artifact["content_type"],
                ),
            )

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
