"""Job rules: creation (with idempotency), the checks that need the database, cancellation."""

from __future__ import annotations

import datetime as dt
import io
import math
import time
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.database import after_commit, session_scope, utcnow
from service.datasets.schemas import DatasetRead
from service.datasets.service import get_dataset
from service.jobs import repository
from service.jobs.specs import AuditSpec, request_hash
from service.models import repository as models
from service.problems import FieldError, ProblemError, invalid, not_found
from service.queue import send_job
from service.security import report_token, report_token_valid
from service.settings import Settings
from service.storage import ArtifactStore
from service.tables import Job, JobStatus, Model, ModelStatus, new_id
from service.tenants.service import Principal

# The per-example export an audit stores (the report's gallery reads it).
PER_SAMPLE_ARTIFACT = "per_sample.npz"
REPORT_LINK_SECONDS = 3600

QUEUED_PROGRESS = {"fraction": 0.0, "stage": "queued", "message": "waiting for a worker"}


def dispatch(job_id: str) -> None:
    """Send a committed job's id to the broker and note when; on failure the reconciler
    sends it later."""
    if send_job(job_id):
        with session_scope() as session:
            repository.mark_enqueued(session, job_id, utcnow())


def create_job(
    session: Session,
    *,
    tenant_id: str,
    kind: str,
    spec: dict[str, Any],
    settings: Settings,
    model_id: str | None = None,
    dataset_id: str | None = None,
    idempotency_key: str | None = None,
    spec_hash: str | None = None,
) -> Job:
    """Stage a queued job; its id goes to the broker once the transaction commits."""
    job = Job(
        id=new_id("j"),
        tenant_id=tenant_id,
        kind=kind,
        spec=spec,
        status=JobStatus.QUEUED,
        progress=dict(QUEUED_PROGRESS),
        attempt=0,
        max_attempts=settings.max_attempts,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=spec_hash,
        model_id=model_id,
        dataset_id=dataset_id,
    )
    repository.add(session, job)
    after_commit(session, lambda: dispatch(job.id))
    return job


def submit(
    session: Session,
    principal: Principal,
    spec: AuditSpec,
    *,
    idempotency_key: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Create a job, or return the one this Idempotency-Key already created.

    Returns ``(job, created)``. The same key with a different body is a 422.
    """
    spec_hash = request_hash(spec)
    if idempotency_key is not None:
        existing = repository.get_by_idempotency_key(session, principal.tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, spec_hash), False

    model = _ready_model(session, principal, spec.model_id)
    dataset = get_dataset(session, principal, spec.dataset_id)
    check_audit_fits(spec, model, dataset, settings)

    try:
        # A savepoint, so a concurrent request that won the race on the same key does not
        # spoil this request's transaction.
        with session.begin_nested():
            job = create_job(
                session,
                tenant_id=principal.tenant_id,
                kind=spec.kind,
                spec=spec.model_dump(mode="json"),
                model_id=spec.model_id,
                dataset_id=spec.dataset_id,
                idempotency_key=idempotency_key,
                spec_hash=spec_hash,
                settings=settings,
            )
    except IntegrityError:
        session.info.pop("after_commit", None)
        existing = repository.get_by_idempotency_key(
            session, principal.tenant_id, idempotency_key or ""
        )
        if existing is None:
            raise
        return _replay(existing, spec_hash), False
    return job, True


def _replay(existing: Job, spec_hash: str) -> Job:
    if existing.request_hash != spec_hash:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
            errors=[FieldError(field="Idempotency-Key", reason="already used with another body")],
        )
    return existing


def _ready_model(session: Session, principal: Principal, model_id: str) -> Model:
    model = models.get(session, principal.tenant_id, model_id)
    if model is None:
        raise not_found("model", model_id)
    if model.status == ModelStatus.VALIDATING:
        raise ProblemError(
            409,
            "model_not_ready",
            f"model {model_id!r} is still being validated; retry when its status is 'ready'",
            headers={"Retry-After": "2"},
        )
    if model.status != ModelStatus.READY:
        reason = (model.error or {}).get("message", "validation failed")
        raise invalid("model_id", f"model is invalid: {reason}", code="model_invalid")
    return model


def check_audit_fits(
    spec: AuditSpec, model: Model, dataset: DatasetRead, settings: Settings
) -> None:
    """Refuse an audit whose data, labels or eps cannot work with its model."""
    if spec.split not in dataset.splits:
        raise invalid("split", f"dataset {dataset.id!r} has splits {sorted(dataset.splits)}")
    if list(dataset.example_shape) != list(model.input_shape):
        raise invalid(
            "dataset_id",
            f"examples have shape {dataset.example_shape} but the model expects "
            f"{model.input_shape}",
        )
    if dataset.num_classes > model.num_classes:
        raise invalid(
            "dataset_id",
            f"labels go up to {dataset.num_classes - 1} but the model has "
            f"{model.num_classes} classes",
        )
    lower, upper = model.input_range
    tolerance = 1e-6 * (upper - lower)
    if dataset.value_range[0] < lower - tolerance or dataset.value_range[1] > upper + tolerance:
        raise invalid(
            "dataset_id",
            f"values span {dataset.value_range} but the model's input_range is [{lower}, {upper}]",
        )
    if spec.limit is not None and spec.limit > settings.max_examples_per_job:
        raise invalid("limit", f"at most {settings.max_examples_per_job} examples per job")
    span = upper - lower
    dims = math.prod(model.input_shape)
    for index, attack in enumerate(spec.resolved_attacks()):
        where = f"attacks[{index}]" if spec.attacks else "preset"
        target = getattr(attack, "target", None)
        if isinstance(target, int) and target >= model.num_classes:
            raise invalid(
                f"{where}.target", f"class {target} does not exist ({model.num_classes} classes)"
            )
        # Beyond these radii the ball contains the whole input range: eps is surely a mistake.
        largest = span if attack.norm == "linf" else span * math.sqrt(dims)
        for eps in attack.eps:
            if eps > largest:
                raise invalid(
                    f"{where}.eps" if spec.attacks else "eps",
                    f"eps {eps:g} is beyond the input range [{lower}, {upper}] "
                    f"({attack.norm} eps can be at most {largest:g})",
                )


def get_job_by_report_token(session: Session, job_id: str, token: str) -> Job:
    """The job a signed report link opens; the same 404 as a missing job otherwise."""
    job = repository.get_any(session, job_id)
    if job is None or not report_token_valid(token, job.tenant_id, job.id, time.time()):
        raise not_found("job", job_id)
    return job


def report_link(
    principal: Principal, job: Job, *, seconds: int = REPORT_LINK_SECONDS
) -> tuple[str, dt.datetime]:
    """A token for a link that opens ``job``'s report without the API key, and its expiry."""
    expires = int(time.time()) + seconds
    return (
        report_token(principal.tenant_id, job.id, expires),
        dt.datetime.fromtimestamp(expires, dt.UTC),
    )


def report_inputs(
    session: Session, job: Job, store: ArtifactStore
) -> tuple[dict[str, np.ndarray] | None, tuple[float, float]]:
    """What a report draws besides the result: the per-sample arrays and the input range."""
    model = models.get_any(session, job.model_id) if job.model_id else None
    input_range = (model.input_range[0], model.input_range[1]) if model else (0.0, 1.0)
    artifact = repository.get_artifact(session, job.id, PER_SAMPLE_ARTIFACT)
    if artifact is None:
        return None, input_range
    with np.load(io.BytesIO(store.read_bytes(artifact.sha256)), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}, input_range


def get_job(session: Session, principal: Principal, job_id: str) -> Job:
    """A job of the caller's tenant, or the 404 that hides others' jobs."""
    job = repository.get(session, principal.tenant_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel(session: Session, principal: Principal, job_id: str) -> Job:
    """Cancel a queued job at once; ask the worker of a running job to stop."""
    job = get_job(session, principal, job_id)
    now = utcnow()
    if job.status == JobStatus.QUEUED and not repository.cancel_queued(session, job.id, now):
        session.refresh(job)  # a worker claimed it meanwhile
    if job.status == JobStatus.RUNNING:
        repository.request_cancel(session, job.id, now)
    elif job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ProblemError(409, "job_finished", f"job {job_id!r} already {job.status}")
    session.refresh(job)
    return job
