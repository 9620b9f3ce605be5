"""Queries on jobs, including the conditional updates that make job execution exactly-once.

A worker's every write is an ``UPDATE ... WHERE lease_owner = <me> AND status = 'running'``:
a worker that lost its lease (it stalled, the reconciler handed the job to another) writes
nothing, so one job has one committed result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import CursorResult, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from service.tables import Artifact, Job, JobStatus, Tenant


def add(session: Session, job: Job) -> None:
    """Stage a new job and flush it (raises IntegrityError on a duplicate idempotency key)."""
    session.add(job)
    session.flush()


def get(session: Session, tenant_id: str, job_id: str) -> Job | None:
    """A tenant's job."""
    return session.scalars(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)).first()


def get_any(session: Session, job_id: str) -> Job | None:
    """A job of any tenant (workers)."""
    return session.get(Job, job_id, populate_existing=True)


def get_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    """The tenant's job created with this Idempotency-Key."""
    return session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).first()


def list_page(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    kind: str | None,
    model_id: str | None,
) -> list[Job]:
    """Up to ``limit`` jobs older than ``cursor`` (ids sort by creation time), newest first."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if cursor:
        query = query.where(Job.id < cursor)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if model_id:
        query = query.where(Job.model_id == model_id)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def release_idempotency_key(session: Session, job_id: str) -> None:
    """Let an Idempotency-Key go (its job was made by an older engine, or long ago), so a new
    job can take it; the old job keeps everything else."""
    session.execute(update(Job).where(Job.id == job_id).values(idempotency_key=None))
    session.flush()


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Hold the tenant's row until the transaction ends (admissions one at a time)."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())


def count_active(session: Session, tenant_id: str, kinds: Sequence[str]) -> int:
    """The tenant's queued and running jobs of ``kinds`` that are not a part of another."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                Job.parent_id.is_(None),
                Job.kind.in_(kinds),
            )
        )
        or 0
    )


# -- jobs with parts -----------------------------------------------------------------------

_Child = aliased(Job)


def _has_unfinished_children() -> Any:
    return exists().where(_Child.parent_id == Job.id, _Child.status.not_in(JobStatus.FINAL))


def children(session: Session, parent_id: str) -> list[Job]:
    """A job's parts, oldest first."""
    return list(session.scalars(select(Job).where(Job.parent_id == parent_id).order_by(Job.id)))


def unfinished_children(session: Session, parent_id: str) -> tuple[int, int]:
    """``(unfinished, all)`` parts of a job."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.parent_id == parent_id).group_by(Job.status)
    ).all()
    total = sum(count for _, count in rows)
    return sum(count for status, count in rows if status not in JobStatus.FINAL), total


def wake_parent(
    session: Session, parent_id: str, now: dt.datetime, progress: dict[str, Any]
) -> bool:
    """Queue a parent whose parts have all finished (it waits ``running`` without a lease);
    ``False`` while a part is unfinished, or when it was woken already."""
    return _changed(
        session,
        update(Job)
        .where(
            Job.id == parent_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner.is_(None),
            ~_has_unfinished_children(),
        )
        .values(status=JobStatus.QUEUED, enqueued_at=None, progress=progress, updated_at=now),
    )


def note_parts_progress(
    session: Session, parent_id: str, now: dt.datetime, progress: dict[str, Any]
) -> None:
    """Show a waiting parent how far its parts have come."""
    session.execute(
        update(Job)
        .where(
            Job.id == parent_id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner.is_(None),
        )
        .values(progress=progress, updated_at=now)
    )


def cancel_waiting_parent(session: Session, job_id: str, now: dt.datetime) -> bool:
    """Cancel a parent that waits for its parts (no worker holds it)."""
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner.is_(None))
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now),
    )


def wait_for_parts(
    session: Session, job_id: str, owner: str, now: dt.datetime, progress: dict[str, Any]
) -> bool:
    """A running job that just staged parts lets go of its lease and waits for them
    (``running`` without a lease, like a parent made with its parts); the run does not count
    as an attempt. ``False`` when the lease is lost or a client asked to cancel."""
    return _changed(
        session,
        update(Job)
        .where(*_owned(job_id, owner), Job.cancel_requested.is_(False))
        .values(
            attempt=Job.attempt - 1,
            lease_owner=None,
            lease_expires_at=None,
            progress=progress,
            updated_at=now,
        ),
    )


def sleeping_parents(session: Session, limit: int = 100) -> Sequence[str]:
    """Waiting parents whose parts have all finished (a wake-up that was lost)."""
    return session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.lease_owner.is_(None),
            exists().where(_Child.parent_id == Job.id),
            ~_has_unfinished_children(),
        )
        .limit(limit)
    ).all()


def _changed(session: Session, statement: Any) -> bool:
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount == 1


def mark_enqueued(session: Session, job_id: str, now: dt.datetime) -> bool:
    """Record that a queued job's id was handed to the broker."""
    return _changed(
        session,
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(enqueued_at=now),
    )


def cancel_queued(session: Session, job_id: str, now: dt.datetime) -> bool:
    """Cancel a job no worker has claimed."""
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now),
    )


def request_cancel(session: Session, job_id: str, now: dt.datetime) -> bool:
    """Ask the worker running a job to stop (it sees the flag at its next heartbeat)."""
    return _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True, updated_at=now),
    )


# -- the worker's side: claim, heartbeat, progress, finish --------------------------------


def claim(
    session: Session, job_id: str, owner: str, now: dt.datetime, lease_until: dt.datetime
) -> bool:
    """Take a queued job: only one worker's claim can succeed."""
    return _changed(
        session,
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.QUEUED,
            Job.attempt < Job.max_attempts,
        )
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            lease_owner=owner,
            lease_expires_at=lease_until,
            started_at=now,
            updated_at=now,
        ),
    )


def _owned(job_id: str, owner: str) -> Any:
    return (Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)


def renew_lease(session: Session, job_id: str, owner: str, lease_until: dt.datetime) -> bool:
    """Extend the lease; ``False`` means the lease is lost and the worker must stop."""
    return _changed(
        session, update(Job).where(*_owned(job_id, owner)).values(lease_expires_at=lease_until)
    )


def cancel_was_requested(session: Session, job_id: str) -> bool:
    """Whether a client asked to cancel the job."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def write_progress(
    session: Session, job_id: str, owner: str, progress: dict[str, Any], now: dt.datetime
) -> bool:
    """Store progress while the lease is held."""
    return _changed(
        session,
        update(Job).where(*_owned(job_id, owner)).values(progress=progress, updated_at=now),
    )


def finish(
    session: Session,
    job_id: str,
    owner: str,
    *,
    status: str,
    now: dt.datetime,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    unless_cancelled: bool = False,
) -> bool:
    """Write a final state once: only the lease holder of a running job can (and, with
    ``unless_cancelled``, only while no client asked to cancel it)."""
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "lease_expires_at": None,
    }
    if progress is not None:
        values["progress"] = progress
    conditions = _owned(job_id, owner)
    if unless_cancelled:
        conditions = (*conditions, Job.cancel_requested.is_(False))
    return _changed(session, update(Job).where(*conditions).values(**values))


def touch_owned(session: Session, job_id: str, owner: str, now: dt.datetime) -> bool:
    """Check, under a row lock for the transaction, that ``owner`` still runs the job."""
    return _changed(session, update(Job).where(*_owned(job_id, owner)).values(updated_at=now))


def replace_artifact(session: Session, artifact: Artifact) -> list[str]:
    """Stage an artifact row, replacing the job's earlier one of the same name; returns the
    blobs of the rows it replaced."""
    replaced = session.scalars(
        delete(Artifact)
        .where(Artifact.job_id == artifact.job_id, Artifact.name == artifact.name)
        .returning(Artifact.sha256)
    ).all()
    add_artifact(session, artifact)
    return list(replaced)


def requeue_to_continue(
    session: Session, job_id: str, owner: str, now: dt.datetime, progress: dict[str, Any]
) -> bool:
    """Queue a running job again to continue in a new run; the run does not count as an
    attempt (the next claim counts it again)."""
    return _changed(
        session,
        update(Job)
        .where(*_owned(job_id, owner))
        .values(
            status=JobStatus.QUEUED,
            attempt=Job.attempt - 1,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=None,
            progress=progress,
            updated_at=now,
        ),
    )


def add_artifact(session: Session, artifact: Artifact) -> None:
    """Stage an artifact row."""
    session.add(artifact)
    session.flush()


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    """A job's artifacts."""
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id)))


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    """One named artifact of a job."""
    return session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    ).first()


# -- the reconciler's side ----------------------------------------------------------------


def expired_leases(session: Session, now: dt.datetime, limit: int = 100) -> Sequence[Job]:
    """Running jobs whose worker stopped renewing its lease."""
    return session.scalars(
        select(Job)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
    ).all()


def release_expired(session: Session, job: Job, now: dt.datetime, values: dict[str, Any]) -> bool:
    """Move an expired job (still held by the owner seen) to a new state."""
    return _changed(
        session,
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING,
            Job.lease_owner == job.lease_owner,
            Job.lease_expires_at < now,
        )
        .values(updated_at=now, **values),
    )


def unsent_queued(session: Session, sent_before: dt.datetime, limit: int = 100) -> Sequence[str]:
    """Queued jobs never handed to the broker, or handed over long ago and not claimed."""
    return session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < sent_before),
        )
        .order_by(Job.id)
        .limit(limit)
    ).all()


def count_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status (metrics)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return dict(rows)


def find_crafted(session: Session, tenant_id: str, name: str) -> tuple[Artifact, Job] | None:
    """A tenant's stored crafted set of this name (its key) and the succeeded crafting job
    that wrote it, if any (the oldest: reuse points at the first one made)."""
    row = session.execute(
        select(Artifact, Job)
        .join(Job, Job.id == Artifact.job_id)
        .where(
            Artifact.tenant_id == tenant_id,
            Artifact.name == name,
            Job.kind == "transfer_craft",
            Job.status == JobStatus.SUCCEEDED,
        )
        .order_by(Artifact.created_at, Artifact.id)
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])
