"""The audit runner: reads the rows, runs :func:`adversarial.audit.audit`, writes the result.

The pipeline itself is the engine's; this module only moves rows and files and turns the
engine's outcome into the result document (with the gate's verdict).
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from adversarial.audit import AuditConfig, AuditOutcome, audit
from adversarial.evaluation import AttackConfig
from service.database import session_scope
from service.datasets import repository as datasets
from service.engine import engine_version
from service.jobs.results import (
    ArtifactRef,
    AttackResult,
    AuditResult,
    ComponentResult,
    Curve,
    NoiseResult,
    Warning_,
    WorstCaseResult,
    audit_notes,
    gate_for,
)
from service.jobs.service import PER_SAMPLE_ARTIFACT
from service.jobs.specs import AuditSpec, attack_strength
from service.models import repository as models
from service.settings import get_settings
from service.storage import ArtifactStore, get_store
from service.tables import Dataset, Job, Model
from worker.lease import Lease
from worker.loading import load_examples, load_user_model, select_device, subset
from worker.runners.base import record_artifacts


def attack_configs(spec: AuditSpec) -> list[AttackConfig]:
    """One engine configuration per attack and eps: attacks in the order of the spec, each
    one's eps ascending (a curve; ensembles carry fooled examples to larger eps)."""
    return [
        AttackConfig(name=attack.name, norm=attack.norm, eps=eps, params=attack.params())
        for attack in spec.resolved_attacks()
        for eps in sorted(attack.radii())
    ]


def curves(outcome: AuditOutcome) -> list[Curve]:
    """Robust accuracy against eps, one curve per attack family."""
    families: dict[tuple[str, str, str], Curve] = {}
    for attack in outcome.evaluation.outcomes:
        curve = families.setdefault(
            attack.config.family,
            Curve(attack=attack.config.name, norm=attack.config.norm, eps=[], robust_accuracy=[]),
        )
        curve.eps.append(attack.config.eps)
        curve.robust_accuracy.append(attack.robust_accuracy)
    return list(families.values())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays as a compressed ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def audit_result(
    spec: AuditSpec,
    outcome: AuditOutcome,
    *,
    device: str,
    seconds: float,
    artifacts: list[ArtifactRef],
) -> AuditResult:
    """The result document of an audit, with the gate's verdict."""
    evaluation = outcome.evaluation
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
    worst_case = [
        WorstCaseResult(
            norm=w.norm, eps=w.eps, attacks=w.attacks, robust_accuracy=w.robust_accuracy
        )
        for w in evaluation.worst_cases
    ]
    warnings = [Warning_(code=f.code, message=f.message) for f in outcome.findings]
    gate = gate_for(spec, evaluation.clean_accuracy, attacks, worst_case, warnings)
    strength = attack_strength(spec.resolved_attacks())
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
        curves=curves(outcome),
        worst_case=worst_case,
        noise_baseline=[
            NoiseResult(norm=n.norm, eps=n.eps, accuracy=n.accuracy) for n in evaluation.noise
        ],
        large_eps_accuracy=outcome.large_eps_accuracy,
        warnings=warnings,
        checks=spec.checks,
        attack_strength=strength,
        notes=audit_notes(spec, strength, gate),
        gate=gate,
        artifacts=artifacts,
        engine_version=engine_version(),
        batch_size=evaluation.batch_size,
        final_batch_size=evaluation.final_batch_size,
        seconds=round(seconds, 4),
        verification_seconds=round(evaluation.verification_seconds, 4),
    )


def store_artifact(store: ArtifactStore, name: str, data: bytes, content_type: str) -> ArtifactRef:
    """Put bytes in the store; the row is written with the job's result (``on_success``)."""
    sha256, size = store.put_bytes(data)
    return ArtifactRef(name=name, sha256=sha256, size=size, content_type=content_type)


class AuditRunner:
    """Runs an audit spec through :func:`adversarial.audit.audit`."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        settings = get_settings()
        store = get_store()
        spec = AuditSpec.model_validate(job.spec)

        def rows() -> tuple[Model | None, Dataset | None]:
            with session_scope() as session:
                dataset = None
                if not spec.dataset_id.startswith("builtin:"):
                    dataset = datasets.get_any(session, spec.dataset_id)
                return models.get_any(session, spec.model_id), dataset

        model_row, dataset_row = lease.retry(rows)
        if model_row is None:
            raise LookupError(f"model {spec.model_id} is gone")

        lease.report(0.0, "loading", "loading model and data", force=True)
        device = select_device(settings.worker_device)
        model = load_user_model(model_row, store, settings).to(device)
        x, y = load_examples(spec.dataset_id, spec.split, dataset_row, store, settings)
        x, y, indices = subset(x, y, spec.limit, spec.seed)
        config = AuditConfig(
            attacks=attack_configs(spec),
            num_classes=model_row.num_classes,
            input_range=(model_row.input_range[0], model_row.input_range[1]),
            seed=spec.seed,
            batch_size=spec.batch_size or settings.eval_batch_size,
            checks=spec.checks,
        )
        outcome = audit(
            model,
            x,
            y,
            config,
            device=device,
            example_ids=torch.from_numpy(indices),
            progress=lease.report,
        )
        artifacts = [
            store_artifact(
                store,
                PER_SAMPLE_ARTIFACT,
                npz_bytes(outcome.per_sample),
                "application/octet-stream",
            )
        ]
        result = audit_result(
            spec,
            outcome,
            device=str(device),
            seconds=time.perf_counter() - started,
            artifacts=artifacts,
        )
        return result.model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        record_artifacts(session, job, result.get("artifacts", []))

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
