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
from adversarial.errors import EngineInputError
from adversarial.evaluation import AttackConfig
from service.database import session_scope
from service.datasets import repository as datasets
from service.engine import engine_version
from service.jobs import repository
from service.jobs.results import (
    ArtifactRef,
    AttackResult,
    AuditResult,
    AuditShardResult,
    Warning_,
    WorstCaseResult,
    audit_notes,
    gate_for,
)
from service.jobs.service import PER_SAMPLE_ARTIFACT
from service.jobs.specs import AuditShardSpec, AuditSpec, attack_strength
from service.models import repository as models
from service.settings import get_settings
from service.storage import ArtifactStore, get_store
from service.tables import Dataset, Job, JobStatus, Model
from worker.jail import JailError, run_in_jail
from worker.jail.config import jail_limits, jail_mode, jail_pool
from worker.jail.errors import SANDBOX_VIOLATION
from worker.lease import Lease
from worker.loading import load_examples, subset, write_examples
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


class _Prepared:
    """What every audit runner (whole, part, merge) reads before the jail: the spec, the
    model row, the subset of examples and the engine config."""

    def __init__(self, spec: AuditSpec, lease: Lease) -> None:
        settings = get_settings()
        self.spec = spec
        self.settings = settings
        self.store = get_store()

        def rows() -> tuple[Model | None, Dataset | None]:
            with session_scope() as session:
                dataset = None
                if not spec.dataset_id.startswith("builtin:"):
                    dataset = datasets.get_any(session, spec.dataset_id)
                return models.get_any(session, spec.model_id), dataset

        model_row, dataset_row = lease.retry(rows)
        if model_row is None:
            raise LookupError(f"model {spec.model_id} is gone")
        if model_row.black_box:
            # Score-based attacks only, as admitted (service.jobs.admission.admit_audit).
            spec = spec.for_black_box()
            self.spec = spec
        self.model_row = model_row
        lease.report(0.0, "loading", "loading the data", force=True)
        x, y = load_examples(spec.dataset_id, spec.split, dataset_row, self.store, settings)
        self.x, self.y, indices = subset(x, y, spec.limit, spec.seed)
        self.ids = torch.from_numpy(indices)
        self.config = AuditConfig(
            attacks=attack_configs(spec),
            num_classes=model_row.num_classes,
            input_range=(model_row.input_range[0], model_row.input_range[1]),
            seed=spec.seed,
            batch_size=spec.batch_size or settings.eval_batch_size,
            checks=spec.checks,
            corruptions=spec.runs_corruptions(),
        )

    def jail(
        self,
        lease: Lease,
        task: str,
        folder: Path,
        *,
        examples: slice = slice(None),
        extra_inputs: dict[str, Path] | None = None,
        extra_payload: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Path]:
        """Run ``task`` on the model and the examples ``examples`` in the jail; returns its
        result and the folder its output files are in."""
        payload = {
            **jailed_model(self.model_row, self.settings),
            "config": self.config.to_json(),
            **(extra_payload or {}),
        }
        examples_path = write_examples(
            folder / "examples.npz", self.x[examples], self.y[examples], self.ids[examples]
        )
        outputs = folder / "outputs"
        with self.store.local_file(self.model_row.file_sha256) as model_path:
            result = run_in_jail(
                task,
                payload,
                {"model": model_path, "examples": examples_path, **(extra_inputs or {})},
                limits=jail_limits(self.settings),
                mode=jail_mode(self.settings),
                on_progress=lease.report,
                should_stop=lease_stopper(lease),
                output_dir=outputs,
                pool=jail_pool(self.settings),
            )
        return result, outputs

    def result(
        self, measured: dict[str, Any], outputs: Path, started: float, shards: int | None = None
    ) -> dict[str, Any]:
        """The result document from the jail's numbers and its per-sample export."""
        per_sample = outputs / PER_SAMPLE_ARTIFACT
        if not per_sample.is_file():
            raise JailError(SANDBOX_VIOLATION, "The jail's audit wrote no per-sample export.")
        artifacts = [
            store_artifact(
                self.store,
                PER_SAMPLE_ARTIFACT,
                per_sample.read_bytes(),
                "application/octet-stream",
            )
        ]
        try:
            result = audit_result(
                self.spec,
                {**measured, "shards": shards},
                seconds=time.perf_counter() - started,
                artifacts=artifacts,
            )
        except (ValueError, KeyError, TypeError) as error:
            raise JailError(
                SANDBOX_VIOLATION, f"The jail's audit result is malformed: {error}"[:500]
            ) from None
        return result.model_dump(mode="json")


class AuditRunner:
    """Runs an audit spec through :func:`adversarial.audit.audit`, in the model's jail; a
    sharded audit, whose parts have all finished, is merged from them instead
    (:func:`adversarial.shards.merged_audit`)."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        spec = AuditSpec.model_validate(job.spec)

        def parts() -> list[Job]:
            with session_scope() as session:
                return repository.children(session, job.id)

        shards = lease.retry(parts)
        prepared = _Prepared(spec, lease)
        with tempfile.TemporaryDirectory(prefix="gauntlet-audit-") as name:
            folder = Path(name)
            if not shards:
                measured, outputs = prepared.jail(lease, "audit", folder)
                return prepared.result(measured, outputs, started)
            inputs = {}
            for index, part in enumerate(sorted(shards, key=lambda p: p.spec["start"])):
                if part.status != JobStatus.SUCCEEDED or part.result is None:
                    error = part.error or {}
                    raise EngineInputError(
                        "part_failed",
                        f"part {part.id} (examples {part.spec['start']} to "
                        f"{part.spec['stop']}) {part.status}: "
                        f"[{error.get('code')}] {error.get('message')}",
                    )
                path = folder / f"part{index}.npz"
                path.write_bytes(prepared.store.read_bytes(part.result["part"]["sha256"]))
                inputs[f"part{index}"] = path
            measured, outputs = prepared.jail(
                lease,
                "audit_merge",
                folder,
                extra_inputs=inputs,
                extra_payload={"parts": len(inputs)},
            )
            return prepared.result(measured, outputs, started, shards=len(inputs))

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        record_artifacts(session, job, result.get("artifacts", []))

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None


class AuditShardRunner:
    """Runs one part of a sharded audit (its examples' attacks) in the jail; the part's
    numbers go to the store for the merge."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        spec = AuditShardSpec.model_validate(job.spec)
        prepared = _Prepared(spec.audit, lease)
        with tempfile.TemporaryDirectory(prefix="gauntlet-part-") as name:
            _, outputs = prepared.jail(
                lease, "audit_part", Path(name), examples=slice(spec.start, spec.stop)
            )
            part = outputs / "part.npz"
            if not part.is_file():
                raise JailError(SANDBOX_VIOLATION, "The jail's audit part wrote no part file.")
            reference = store_artifact(
                prepared.store, "part.npz", part.read_bytes(), "application/octet-stream"
            )
        return AuditShardResult(
            start=spec.start,
            stop=spec.stop,
            part=reference,
            seconds=round(time.perf_counter() - started, 4),
        ).model_dump(mode="json")

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        record_artifacts(session, job, [result["part"]])

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
