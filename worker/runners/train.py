"""The training runner: reads the rows, hands the data, the starting model and the plan to
the jail (which runs :func:`adversarial.training.job.run_training`), stores every epoch's
checkpoint under the lease, and registers the trained model with its lineage.

On a later attempt (the worker died) the last checkpoint is handed back to the jail, which
continues after its epoch and ends exactly as an uninterrupted run would.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from adversarial.training.job import TrainingPlan
from service.database import session_scope, utcnow
from service.datasets import repository as datasets
from service.engine import engine_version
from service.jobs.results import ArtifactRef, TrainResult
from service.jobs.service import create_job
from service.jobs.train_specs import TrainSpec
from service.models import repository as models
from service.settings import get_settings
from service.storage import get_store
from service.tables import Dataset, Job, Model, ModelStatus, new_id
from worker.jail import JailError, run_in_jail
from worker.jail.config import jail_limits, jail_mode, jail_pool
from worker.jail.errors import SANDBOX_VIOLATION
from worker.lease import Lease
from worker.loading import load_examples, write_examples
from worker.runners.base import jailed_model, lease_stopper, record_artifacts

CHECKPOINT = "checkpoint.bin"
_CHECKPOINT_TYPE = "application/vnd.gauntlet.checkpoint+safetensors"


def _without_none(document: dict[str, Any]) -> dict[str, Any]:
    # Unset optional parameters take the engine's defaults.
    return {key: value for key, value in document.items() if value is not None}


def training_plan(spec: TrainSpec, input_range: tuple[float, float]) -> TrainingPlan:
    """The engine's plan for a train spec (the spec's defaults resolved)."""
    return TrainingPlan(
        method=_without_none(spec.method.model_dump()),
        optimizer=spec.resolved_optimizer().model_dump(),
        schedule=spec.resolved_schedule().model_dump(),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
        trainable=spec.fine_tune.layers if spec.fine_tune else "all",
        augmentation=None if spec.augmentation is None else spec.augmentation.model_dump(),
        validation=spec.validation.model_dump(),
        input_range=input_range,
    )


class TrainRunner:
    """Runs a train spec in the jail and registers the model it produces."""

    # Past one run's time limit, a run that saved a checkpoint continues in a new run.
    resumable = True

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        started = time.perf_counter()
        settings = get_settings()
        store = get_store()
        spec = TrainSpec.model_validate(job.spec)

        def rows() -> tuple[Dataset | None, Model | None]:
            with session_scope() as session:
                dataset = None
                if not spec.dataset_id.startswith("builtin:"):
                    dataset = datasets.get_any(session, spec.dataset_id)
                parent = (
                    models.get_any(session, spec.fine_tune.model_id) if spec.fine_tune else None
                )
                return dataset, parent

        dataset_row, parent = lease.retry(rows)
        if spec.fine_tune is not None and parent is None:
            raise LookupError(f"model {spec.fine_tune.model_id} is gone")
        lease.report(0.0, "loading", "loading the data", force=True)
        split = "train" if spec.dataset_id.startswith("builtin:") else "test"
        x, y = load_examples(spec.dataset_id, split, dataset_row, store, settings)
        input_range = (
            (0.0, 1.0) if parent is None else (parent.input_range[0], parent.input_range[1])
        )
        plan = training_plan(spec, input_range)
        payload: dict[str, Any] = {"plan": plan.to_json(), "device": settings.worker_device}
        if parent is None:
            assert spec.architecture is not None
            payload.update(
                architecture=spec.architecture.model_dump(),
                input_shape=list(x.shape[1:]),
                num_classes=max(int(y.max()) + 1, 2),
            )
        else:
            payload.update(jailed_model(parent, settings))
        # A checkpoint of an earlier run of this job (a worker died, or the run hit its time
        # limit): continue from it.
        resume = lease.read_artifact(CHECKPOINT)

        def keep_checkpoint(name: str, path: Path) -> None:
            if name == CHECKPOINT:
                lease.put_artifact(CHECKPOINT, path.read_bytes(), _CHECKPOINT_TYPE)

        with tempfile.TemporaryDirectory(prefix="gauntlet-train-") as folder, ExitStack() as stack:
            inputs = {
                "examples": write_examples(
                    Path(folder) / "examples.npz", x, y, torch.arange(x.shape[0])
                )
            }
            if parent is not None:
                inputs["model"] = stack.enter_context(store.local_file(parent.file_sha256))
            if resume is not None:
                checkpoint = Path(folder) / CHECKPOINT
                checkpoint.write_bytes(resume)
                inputs["checkpoint"] = checkpoint
            outputs = Path(folder) / "outputs"
            measured = run_in_jail(
                "train",
                payload,
                inputs,
                limits=jail_limits(settings),
                mode=jail_mode(settings),
                on_progress=lease.report,
                should_stop=lease_stopper(lease),
                output_dir=outputs,
                pool=jail_pool(settings),
                on_file=keep_checkpoint,
            )
            model_file = outputs / str(measured.get("model_file", ""))
            if not model_file.is_file() or model_file.parent != outputs:
                raise JailError(SANDBOX_VIOLATION, "The jail's training left no model file.")
            with model_file.open("rb") as handle:
                sha256, size = store.put_stream(handle)
            artifacts = []
            export = outputs / "export.onnx"
            if export.is_file():
                with export.open("rb") as handle:
                    export_sha, export_size = store.put_stream(handle)
                artifacts.append(
                    ArtifactRef(
                        name="model.onnx",
                        sha256=export_sha,
                        size=export_size,
                        content_type="application/onnx",
                    )
                )
        model_id = new_id("m")
        audit = spec.audit_spec(model_id)
        try:
            result = TrainResult.model_validate(
                {
                    **measured,
                    "model_id": model_id,
                    "parent_model_id": parent.id if parent else None,
                    "dataset_id": spec.dataset_id,
                    "method": spec.method.name,
                    "scores": [
                        {
                            **score,
                            "model_id": model_id
                            if score["role"] == "trained"
                            else parent.id
                            if parent
                            else None,
                        }
                        for score in measured.get("scores", [])
                    ],
                    "seconds": round(time.perf_counter() - started, 4),
                    "audit_job_id": new_id("j") if audit is not None else None,
                    "artifacts": artifacts,
                    "engine_version": engine_version(),
                }
            )
        except (ValueError, KeyError, TypeError) as error:
            raise JailError(
                SANDBOX_VIOLATION, f"The jail's training result is malformed: {error}"[:500]
            ) from None
        registered = {
            "file_sha256": sha256,
            "file_size": size,
            "format": measured["model_format"],
            "architecture": measured.get("architecture"),
            "input_shape": list(x.shape[1:]) if parent is None else parent.input_shape,
            "num_classes": payload.get("num_classes") if parent is None else parent.num_classes,
            "input_range": list(input_range),
            "normalization": None if parent is None else parent.normalization,
        }
        return {**result.model_dump(mode="json"), "model": registered}

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        spec = TrainSpec.model_validate(job.spec)
        registration = result["model"]
        models.add_version(
            session,
            Model(
                id=result["model_id"],
                tenant_id=job.tenant_id,
                name=spec.name,
                format=registration["format"],
                input_shape=registration["input_shape"],
                num_classes=registration["num_classes"],
                input_range=registration["input_range"],
                normalization=registration["normalization"],
                architecture=registration["architecture"],
                file_sha256=registration["file_sha256"],
                file_size=registration["file_size"],
                # The jail loaded the saved file back and ran it before it returned.
                status=ModelStatus.READY,
                source_job_id=job.id,
                parent_model_id=result.get("parent_model_id"),
                updated_at=utcnow(),
            ),
        )
        record_artifacts(session, job, result.get("artifacts", []))
        audit = spec.audit_spec(result["model_id"])
        if audit is not None:
            create_job(
                session,
                tenant_id=job.tenant_id,
                kind="audit",
                spec=audit.model_dump(mode="json"),
                model_id=result["model_id"],
                dataset_id=audit.dataset_id,
                engine=engine_version(),
                settings=get_settings(),
                job_id=result["audit_job_id"],
            )

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        return None
