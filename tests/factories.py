"""Factories that build rows and files for tests."""

from __future__ import annotations

import datetime as dt
import functools
import io
from typing import Any

import numpy as np

from service.database import session_scope, utcnow
from service.jobs import repository as jobs
from service.jobs.service import create_job
from service.models.repository import add_version
from service.settings import Settings
from service.storage import get_store
from service.tables import Dataset, Job, JobStatus, Model, ModelStatus, new_id


def model_row(
    tenant_id: str,
    *,
    data: bytes = b"not-a-real-model",
    status: str = ModelStatus.READY,
    **overrides: Any,
) -> str:
    """Insert a model row (its file stored) and return its id; no worker involved."""
    sha256, size = get_store().put_bytes(data)
    values: dict[str, Any] = {
        "id": new_id("m"),
        "tenant_id": tenant_id,
        "name": "factory model",
        "format": "onnx",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "input_range": [0.0, 1.0],
        "file_sha256": sha256,
        "file_size": size,
        "status": status,
    }
    values.update(overrides)
    with session_scope() as session:
        if "version" in values:
            session.add(Model(**values))
        else:
            add_version(session, Model(**values))
    return str(values["id"])


def dataset_row(tenant_id: str, **overrides: Any) -> str:
    """Insert a dataset row (no file) and return its id."""
    values: dict[str, Any] = {
        "id": new_id("d"),
        "tenant_id": tenant_id,
        "name": "factory data",
        "format": "npz",
        "num_examples": 10,
        "example_shape": [1, 8, 8],
        "num_classes": 10,
        "value_range": [0.0, 1.0],
        "file_sha256": "0" * 64,
        "file_size": 1,
    }
    values.update(overrides)
    with session_scope() as session:
        session.add(Dataset(**values))
    return str(values["id"])


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz file holding ``arrays``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@functools.cache
def deflate_bomb() -> bytes:
    """A ~100 KB ``.npz`` (np.savez_compressed of zeros) whose arrays inflate to 96 MiB."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((6144, 1, 64, 64), np.float32), y=np.zeros(6144))
    return buffer.getvalue()


def audit_spec(model_id: str, **overrides: Any) -> dict[str, Any]:
    """A small valid audit spec."""
    spec: dict[str, Any] = {
        "kind": "audit",
        "model_id": model_id,
        "dataset_id": "builtin:digits",
        "attacks": [
            {"name": "fgsm", "eps": [0.1]},
            {"name": "pgd", "eps": [0.1], "steps": 5, "step_size": 0.03},
        ],
    }
    spec.update(overrides)
    return spec


def queued_job(settings: Settings, tenant_id: str, spec: dict[str, Any]) -> str:
    """Create a queued job (handed to the broker as the API would) and return its id."""
    with session_scope() as session:
        job = create_job(
            session,
            tenant_id=tenant_id,
            kind=spec["kind"],
            spec=spec,
            model_id=spec.get("model_id"),
            settings=settings,
        )
        return job.id


def running_job(tenant_id: str, owner: str, fraction: float = 0.1) -> str:
    """An audit that a (pretend) worker ``owner`` holds for an hour: nothing changes it
    until the test does."""
    job_id = new_id("j")
    with session_scope() as session:
        session.add(
            Job(
                id=job_id,
                tenant_id=tenant_id,
                kind="audit",
                spec={},
                status=JobStatus.RUNNING,
                progress={"fraction": fraction, "stage": "attack", "message": "fgsm"},
                lease_owner=owner,
                lease_expires_at=utcnow() + dt.timedelta(hours=1),
                started_at=utcnow(),
            )
        )
    return job_id


def job_row(job_id: str) -> Job | None:
    """A job's row as it is in the database now."""
    with session_scope() as session:
        return jobs.get_any(session, job_id)
