"""Queries of the leaderboard."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.tables import Job, JobStatus


def latest_audits(session: Session, tenant_id: str, model_ids: Sequence[str]) -> dict[str, Job]:
    """Each model's most recently finished succeeded audit (whole audits, not their parts)."""
    if not model_ids:
        return {}
    audits = (
        Job.tenant_id == tenant_id,
        Job.kind == "audit",
        Job.status == JobStatus.SUCCEEDED,
        Job.parent_id.is_(None),
        Job.model_id.in_(list(model_ids)),
    )
    # Only the newest audit of each model is read (results can be large), not all of them.
    newest = (
        select(Job.model_id, func.max(Job.finished_at).label("finished_at"))
        .where(*audits)
        .group_by(Job.model_id)
        .subquery()
    )
    rows = session.scalars(
        select(Job)
        .join(
            newest,
            (Job.model_id == newest.c.model_id) & (Job.finished_at == newest.c.finished_at),
        )
        .where(*audits)
        .order_by(Job.id.desc())
    )
    latest: dict[str, Job] = {}
    for job in rows:
        if job.model_id is not None:
            latest.setdefault(job.model_id, job)
    return latest
