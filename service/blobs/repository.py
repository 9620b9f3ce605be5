"""Queries on what references a blob of the artifact store."""

from __future__ import annotations

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from service.tables import Artifact, Dataset, Job, JobStatus, Model


def is_referenced(session: Session, sha256: str) -> bool:
    """Whether a row still needs the blob ``sha256``: a model or dataset that is not
    deleted, any job artifact, or a queued or running job of a deleted model or dataset
    with those bytes (workers still load it)."""
    models_with_blob = select(Model.id).where(Model.file_sha256 == sha256)
    datasets_with_blob = select(Dataset.id).where(Dataset.file_sha256 == sha256)
    return bool(
        session.scalar(
            select(
                or_(
                    exists().where(Model.file_sha256 == sha256, Model.deleted_at.is_(None)),
                    exists().where(Dataset.file_sha256 == sha256, Dataset.deleted_at.is_(None)),
                    exists().where(Artifact.sha256 == sha256),
                    exists().where(
                        Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                        or_(
                            Job.model_id.in_(models_with_blob),
                            Job.dataset_id.in_(datasets_with_blob),
                        ),
                    ),
                )
            )
        )
    )


def deleted_inputs(session: Session, job_id: str) -> set[str]:
    """The blobs of the deleted model and dataset that job ``job_id`` used."""
    model_blobs = select(Model.file_sha256).where(
        Model.id == select(Job.model_id).where(Job.id == job_id).scalar_subquery(),
        Model.deleted_at.is_not(None),
    )
    dataset_blobs = select(Dataset.file_sha256).where(
        Dataset.id == select(Job.dataset_id).where(Job.id == job_id).scalar_subquery(),
        Dataset.deleted_at.is_not(None),
    )
    return set(session.scalars(model_blobs.union(dataset_blobs)))
