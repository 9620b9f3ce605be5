"""The audit runner: reads the rows, hands the model, the examples and the config to the jail
(which runs :func:`adversarial.audit.audit`), and writes the result.

The pipeline is the engine's and the model runs only in the jail; this module moves rows
and files and adds to the engine's numbers what the request says (the gate's verdict, the
notes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from adversarial.audit import AuditConfig
from adversarial.evaluation import AttackConfig
from service.database import session_scope
from service.datasets import repository as datasets
from service.engine import engine_version
from service.jobs.results import (
    ArtifactRef,
    AttackResult,
    AuditResult,
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
from worker.jail import JailError, run_in_jail
from worker.jail.config import jail_limits, jail_mode, jail_pool
from worker.jail.errors import SANDBOX_VIOLATION
from worker.lease import Lease
from worker.loading import load_examples, stored_file, subset, write_examples
from worker.runners.base import jailed_model, lease_stopper, record_artifacts


def attack_configs(spec: AuditSpec) -> list[AttackConfig]:
    """One engine configuration per attack and eps: attacks in the order of the spec, each
    one's eps ascending (a curve; ensembles carry fooled examples to larger eps)."""
    return [
        AttackConfig(name=attack.name, norm=attack.norm, eps=eps, params=attack.params())
        for attack in spec.resolved_attacks()
        for eps in sorted(attack.radii())
    ]


def audit_result(
    spec: AuditSpec, measured: dict[str, Any], *, seconds: float, artifacts: list[ArtifactRef]
) -> AuditResult:
    """The result document: the engine's numbers (``outcome_document``), the request's
    identity, the gate's verdict and the notes."""
    attacks = [AttackResult.model_validate(a) for a in measured["attacks"]]
    worst_case = [WorstCaseResult.model_validate(w) for w in measured["worst_case"]]
    warnings = [Warning_.model_validate(w) for w in measured["warnings"]]
    gate = gate_for(
        spec,
        measured["clean_accuracy"],
        attacks,
        worst_case,
        warnings,
        measured.get("corruption_accuracy"),
    )
    strength = attack_strength(spec.resolved_attacks())
    return AuditResult.model_validate(
        {
            **measured,
            "model_id": spec.model_id,
            "dataset_id": spec.dataset_id,
            "split": spec.split,
            "seed": spec.seed,
            "checks": spec.checks,
            "attack_strength": strength,
            "notes": audit_notes(spec, strength, gate),
            "gate": gate,
            "artifacts": artifacts,
            "engine_version": engine_version(),
            "seconds": round(seconds, 4),
        }
    )


def store_artifact(store: ArtifactStore, name: str, data: bytes, content_type: str) -> ArtifactRef:
    """Put bytes in the store; the row is written with the job's result (``on_success``)."""
    sha256, size = store.put_bytes(data)
    return ArtifactRef(name=name, sha256=sha256, size=size, content_type=content_type)


class AuditRunner:
    """Runs an audit spec through :func:`adversarial.audit.audit`, in the model's jail."""

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

        lease.report(0.0, "loading", "loading the data", force=True)
        x, y = load_examples(spec.dataset_id, spec.split, dataset_row, store, settings)
        x, y, indices = subset(x, y, spec.limit, spec.seed)
        config = AuditConfig(
            attacks=attack_configs(spec),
            num_classes=model_row.num_classes,
            input_range=(model_row.input_range[0], model_row.input_range[1]),
            seed=spec.seed,
            batch_size=spec.batch_size or settings.eval_batch_size,
            checks=spec.checks,
            corruptions=spec.runs_corruptions(),
        )
        payload = {**jailed_model(model_row, settings), "config": config.to_json()}
        with (
            tempfile.TemporaryDirectory(prefix="gauntlet-audit-") as folder,
            stored_file(store, model_row.file_sha256) as model_path,
        ):
            examples = write_examples(
                Path(folder) / "examples.npz", x, y, torch.from_numpy(indices)
            )
            outputs = Path(folder) / "outputs"
            measured = run_in_jail(
                "audit",
                payload,
                {"model": model_path, "examples": examples},
                limits=jail_limits(settings),
                mode=jail_mode(settings),
                on_progress=lease.report,
                should_stop=lease_stopper(lease),
                output_dir=outputs,
                pool=jail_pool(settings),
            )
            per_sample = outputs / PER_SAMPLE_ARTIFACT
            if not per_sample.is_file():
                raise JailError(SANDBOX_VIOLATION, "The jail's audit wrote no per-sample export.")
            artifacts = [
                store_artifact(
                    store, PER_SAMPLE_ARTIFACT, per_sample.read_bytes(), "application/octet-stream"
                )
            ]
        try:
            result = audit_result(
                spec, measured, seconds=time.perf_counter() - started, artifacts=artifacts
            )
        except (ValueError, KeyError, TypeError) as error:
            raise JailError(
                SANDBOX_VIOLATION, f"The jail's audit result is malformed: {error}"[:500]
            ) from None
        return result.model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        record_artifacts(session, job, result.get("artifacts", []))

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
