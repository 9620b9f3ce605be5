"""Model uploads: store the file, record the model, queue its validation."""

from __future__ import annotations

from typing import BinaryIO

from sqlalchemy.orm import Session

from service.blobs.service import release_after_commit
from service.database import utcnow
from service.jobs import repository as jobs_repository
from service.jobs import service as jobs
from service.models import repository
from service.models.schemas import ModelMeta
from service.problems import ProblemError, not_found
from service.settings import Settings
from service.storage import ArtifactStore, StoredObjectTooLarge
from service.tables import Model, ModelStatus, new_id
from service.tenants.service import Principal


def upload_model(
    session: Session,
    principal: Principal,
    meta: ModelMeta,
    stream: BinaryIO,
    *,
    store: ArtifactStore,
    settings: Settings,
) -> Model:
    """Store an uploaded model file and queue a worker job that loads and checks it."""
    try:
        sha256, size = store.put_stream(stream, max_bytes=settings.max_model_bytes)
    except StoredObjectTooLarge:
        raise ProblemError(
            413, "too_large", f"model files are limited to {settings.max_model_bytes} bytes"
        ) from None
    if size == 0:
        raise ProblemError(422, "empty_file", "the uploaded model file is empty")
    model = Model(
        id=new_id("m"),
        tenant_id=principal.tenant_id,
        name=meta.name,
        format=meta.format,
        input_shape=list(meta.input_shape),
        num_classes=meta.num_classes,
        input_range=list(meta.input_range),
        normalization=meta.normalization.model_dump() if meta.normalization else None,
        architecture=meta.architecture.model_dump() if meta.architecture else None,
        black_box=meta.black_box,
        file_sha256=sha256,
        file_size=size,
        status=ModelStatus.VALIDATING,
    )
    try:
        repository.add_version(session, model)
    except repository.VersionConflict:
        raise ProblemError(
            409, "version_conflict", f"too many concurrent uploads of {meta.name!r}; retry"
        ) from None
    job = jobs.create_job(
        session,
        tenant_id=principal.tenant_id,
        kind="validate_model",
        spec={"kind": "validate_model", "model_id": model.id},
        model_id=model.id,
        settings=settings,
    )
    model.validation_job_id = job.id
    return model


def get_model(session: Session, principal: Principal, model_id: str) -> Model:
    """A model of the caller's tenant, or the 404 that hides others' models."""
    model = repository.get(session, principal.tenant_id, model_id)
    if model is None:
        raise not_found("model", model_id)
    return model


def delete_model(
    session: Session, principal: Principal, model_id: str, *, store: ArtifactStore
) -> None:
    """Hide a model (jobs that used it keep their results), cancel its validation and, once
    that commits, delete its file unless another row holds the same bytes."""
    model = get_model(session, principal, model_id)
    now = utcnow()
    model.deleted_at = now
    if model.validation_job_id is not None:
        # Its validation is of no use any more (and holds the file while it runs).
        if not jobs_repository.cancel_queued(session, model.validation_job_id, now):
            jobs_repository.request_cancel(session, model.validation_job_id, now)
    release_after_commit(session, store, model.file_sha256)
