"""HTTP shapes of jobs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from service.jobs.kinds import typed_result
from service.jobs.results import (
    AuditResult,
    AuditShardResult,
    TrainResult,
    TransferCraftResult,
    TransferResult,
    TransferScoreResult,
    ValidationResult,
)
from service.tables import Artifact, Job

# A result as its kind's model; documents of kinds this server does not know stay untyped.
# Parts (shards, crafting, scoring) are jobs too: a client may read them.
JobResult = (
    AuditResult
    | TrainResult
    | TransferResult
    | ValidationResult
    | AuditShardResult
    | TransferCraftResult
    | TransferScoreResult
    | dict[str, Any]
)


class Progress(BaseModel):
    """How far a job has come."""

    fraction: float = Field(ge=0, le=1)
    stage: str
    message: str


class JobError(BaseModel):
    """Why a job failed: a stable code and a plain message."""

    code: str
    message: str


class JobRead(BaseModel):
    """A job as clients see it."""

    id: str
    kind: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    spec: dict[str, Any]
    progress: Progress
    result: JobResult | None = Field(
        None, description="A succeeded job's result: AuditResult for an audit, and so on."
    )
    error: JobError | None = None
    attempt: int
    max_attempts: int
    cancel_requested: bool
    model_id: str | None
    dataset_id: str | None
    parent_id: str | None = Field(None, description="The job this one is a part of.")
    engine_version: str | None = Field(None, description="The engine the job was admitted for.")
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, job: Job) -> JobRead:
        """Build from a table row."""
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            spec=job.spec,
            progress=Progress(**job.progress),
            result=typed_result(job.kind, job.result),
            error=JobError(**job.error) if job.error else None,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            model_id=job.model_id,
            dataset_id=job.dataset_id,
            parent_id=job.parent_id,
            engine_version=job.engine_version,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[JobRead]
    next_cursor: str | None


class ArtifactRead(BaseModel):
    """A file a job produced, served at /v1/jobs/{id}/artifacts/{name}."""

    name: str
    size: int
    sha256: str
    content_type: str
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Artifact) -> ArtifactRead:
        """Build from a table row."""
        return cls(
            name=row.name,
            size=row.size,
            sha256=row.sha256,
            content_type=row.content_type,
            created_at=row.created_at,
        )


class ReportLink(BaseModel):
    """A URL that opens a job's report without the API key, until it expires."""

    url: str
    expires_at: dt.datetime
