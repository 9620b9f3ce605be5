"""Job rules: creation (with idempotency), the checks that need the database, cancellation."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.blobs.service import release_inputs_after_commit
from service.database import after_commit, session_scope, utcnow
from service.engine import engine_version
from service.jobs import repository
from service.jobs.kinds import KINDS, JobSpec, user_kind, user_kinds
from service.jobs.specs import request_hash
from service.models import repository as models
from service.problems import FieldError, ProblemError, invalid, not_found
from service.queue import send_job
from service.security import LinkCheck, check_report_token, report_token, token_expiry
from service.settings import Settings
from service.storage import ArtifactStore
from service.tables import Job, JobStatus, new_id
from service.tenants.service import Principal

# The per-example export an audit stores (the report's gallery reads it).
PER_SAMPLE_ARTIFACT = "per_sample.npz"

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
    engine: str | None = None,
    parent_id: str | None = None,
    waits_for_parts: bool = False,
    job_id: str | None = None,
) -> Job:
    """Stage a queued job; its id goes to the broker once the transaction commits.

    With ``waits_for_parts`` the job is a parent that waits, ``running`` without a lease,
    until its parts (jobs with this ``parent_id``, staged by the caller) have finished; the
    last one to finish queues it (:func:`finish_part`).
    """
    job = Job(
        id=job_id or new_id("j"),
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
        engine_version=engine,
        parent_id=parent_id,
    )
    if waits_for_parts:
        job.status = JobStatus.RUNNING
        job.started_at = utcnow()
        job.progress = {"fraction": 0.0, "stage": "parts", "message": "waiting for its parts"}
    repository.add(session, job)
    if not waits_for_parts:
        after_commit(session, lambda: dispatch(job.id))
    return job


def finish_part(parent_id: str) -> None:
    """After a part's final write: queue its parent when every part has finished, else show
    the parent how many have. Safe to call more than once (a parent is queued once)."""
    with session_scope() as session:
        unfinished, total = repository.unfinished_children(session, parent_id)
        done = total - unfinished
        progress = {
            "fraction": round(done / total, 4) if total else 1.0,
            "stage": "parts",
            "message": f"{done} of {total} parts finished",
        }
        if unfinished:
            repository.note_parts_progress(session, parent_id, utcnow(), progress)
            return
        if not repository.wake_parent(session, parent_id, utcnow(), progress):
            return
    dispatch(parent_id)


def submit(
    session: Session,
    principal: Principal,
    spec: JobSpec,
    *,
    idempotency_key: str | None,
    settings: Settings,
) -> tuple[Job, bool]:
    """Create a job, or return the one this Idempotency-Key already created.

    Returns ``(job, created)``. The same key with a different body is a 422. A key whose job
    was made by another engine version, or is older than the idempotency window, no longer
    replays: it is released and a new job is made (an upgrade re-audits; it never returns
    the old engine's verdict).
    """
    engine = engine_version()
    spec_hash = request_hash(spec, engine)
    if idempotency_key is not None:
        existing = repository.get_by_idempotency_key(session, principal.tenant_id, idempotency_key)
        if existing is not None:
            if _replays(existing, spec_hash, settings):
                return existing, False
            _refuse_other_body(existing, spec, engine)
            repository.release_idempotency_key(session, existing.id)

    admit = KINDS[spec.kind].admit
    if admit is None:
        raise invalid("kind", f"{spec.kind!r} jobs are made by the service, not submitted")
    admission = admit(session, principal, spec, settings)
    check_tenant_capacity(session, principal, settings)
    parts = admission.parts

    try:
        # A savepoint, so a concurrent request that won the race on the same key does not
        # spoil this request's transaction.
        with session.begin_nested():
            job = create_job(
                session,
                tenant_id=principal.tenant_id,
                kind=spec.kind,
                spec=spec.model_dump(mode="json"),
                model_id=admission.model_id,
                dataset_id=admission.dataset_id,
                idempotency_key=idempotency_key,
                spec_hash=spec_hash,
                engine=engine,
                settings=settings,
                waits_for_parts=bool(parts),
            )
            for part in parts:
                create_job(
                    session,
                    tenant_id=principal.tenant_id,
                    kind=part.kind,
                    spec=part.spec,
                    model_id=part.model_id,
                    dataset_id=part.dataset_id,
                    engine=engine,
                    settings=settings,
                    parent_id=job.id,
                )
    except IntegrityError:
        session.info.pop("after_commit", None)
        existing = repository.get_by_idempotency_key(
            session, principal.tenant_id, idempotency_key or ""
        )
        if existing is None:
            raise
        if existing.request_hash != spec_hash:
            _refuse_other_body(existing, spec, engine)
        return existing, False
    return job, True


def _replays(existing: Job, spec_hash: str, settings: Settings) -> bool:
    """Whether a job found by its key answers this request: same body and engine, and
    within the idempotency window."""
    age = (utcnow() - existing.created_at).total_seconds()
    return existing.request_hash == spec_hash and age <= settings.idempotency_ttl_seconds


def _refuse_other_body(existing: Job, spec: JobSpec, engine: str) -> None:
    """A 422 unless ``existing`` was made from this very body (by another engine or long
    ago: then its key may be released)."""
    if existing.request_hash in (
        request_hash(spec, existing.engine_version or ""),
        request_hash(spec, engine),
    ):
        return
    raise ProblemError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request; use a new key",
        errors=[FieldError(field="Idempotency-Key", reason="already used with another body")],
    )


def check_tenant_capacity(session: Session, principal: Principal, settings: Settings) -> None:
    """A 429 when the tenant already has the most queued and running jobs it may have."""
    # Serializes a tenant's admissions (Postgres row lock), so two racing requests cannot
    # both take the last slot.
    repository.lock_tenant(session, principal.tenant_id)
    active = repository.count_active(session, principal.tenant_id, user_kinds())
    if active >= settings.max_active_jobs_per_tenant:
        raise ProblemError(
            429,
            "too_many_active_jobs",
            f"this tenant has {active} queued or running jobs, the most allowed "
            f"({settings.max_active_jobs_per_tenant}); retry when some have finished",
            headers={"Retry-After": "10"},
        )


def link_expired(what: str, expires: int, renew: str) -> ProblemError:
    """The 410 of a genuine signed link past its expiry: it says how to get a new one."""
    when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds")
    return ProblemError(
        410, "link_expired", f"this {what} link expired at {when}; ask for a new one: {renew}"
    )


def get_job_by_report_token(session: Session, job_id: str, token: str) -> Job:
    """The job a signed report link opens; a 410 when the link is genuine but expired, the
    same 404 as a missing job for anything else."""
    job = repository.get_any(session, job_id)
    check = (
        LinkCheck.INVALID
        if job is None
        else check_report_token(token, job.tenant_id, job.id, time.time())
    )
    if job is None or check is LinkCheck.INVALID:
        raise not_found("job", job_id)
    if check is LinkCheck.EXPIRED:
        raise link_expired("report", token_expiry(token), f"POST /v1/jobs/{job_id}/report-link")
    return job


def report_link(principal: Principal, job: Job, *, seconds: int) -> tuple[str, dt.datetime]:
    """A token for a link that opens ``job``'s report without the API key, and its expiry
    ``seconds`` from now."""
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


def cancel(session: Session, principal: Principal, job_id: str, *, store: ArtifactStore) -> Job:
    """Cancel a queued job at once; ask the worker of a running job to stop. Cancelling a
    job with parts cancels every part. A job that ends here releases the bytes of a deleted
    model or dataset it held."""
    job = get_job(session, principal, job_id)
    if not user_kind(job.kind) and job.parent_id is None:
        # Internal work (a model's validation) ends on its own; cancelling it would strand
        # the object it validates. Delete the model instead.
        raise ProblemError(
            409, "job_not_cancellable", f"job {job_id!r} ({job.kind}) cannot be cancelled"
        )
    now = utcnow()
    for part in repository.children(session, job.id):
        if not repository.cancel_queued(session, part.id, now):
            repository.request_cancel(session, part.id, now)
        release_inputs_after_commit(session, store, part.id)
    release_inputs_after_commit(session, store, job.id)
    if job.status == JobStatus.QUEUED and not repository.cancel_queued(session, job.id, now):
        session.refresh(job)  # a worker claimed it meanwhile
    if job.status == JobStatus.RUNNING and not repository.cancel_waiting_parent(
        session, job.id, now
    ):
        repository.request_cancel(session, job.id, now)
    elif job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ProblemError(409, "job_finished", f"job {job_id!r} already {job.status}")
    session.refresh(job)
    return job
