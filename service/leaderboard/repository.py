"""Queries of the leaderboard."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tables import Job, JobStatus


def latest_audits(session: Session, tenant_id: str, model_ids: Sequence[str]) -> dict[str, Job]:
    """Each model's most recently finished succeeded audit (whole audits, not their parts)."""
    if not model_ids:
        return {}
    rows = session.scalars(
        select(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.kind == "audit",
            Job.status == JobStatus.SUCCEEDED,
            Job.parent_id.is_(None),
            Job.model_id.in_(list(model_ids)),
        )
        .order_by(Job.finished_at.desc(), Job.id.desc())
    )
    latest: dict[str, Job] = {}
    for job in rows:
        if job.model_id is not None:
            latest.setdefault(job.model_id, job)
    return latest
