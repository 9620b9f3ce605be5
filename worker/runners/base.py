"""What a job runner is: turns a claimed job into engine calls and a result document."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session

from service.jobs import repository as jobs
from service.tables import Artifact, Job, new_id
from worker.lease import Lease


class Runner(Protocol):
    """One kind of job.

    A runner may store files while it runs (``lease.put_artifact``: checkpoints, crafted
    sets) and, on a later attempt (``job.attempt > 1``), read them back to resume
    (``lease.read_artifact``); everything else it writes goes in the result, committed once.
    """

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        """Do the work; report progress through ``lease``; return the result document.

        Raise ``adversarial.errors.EngineInputError`` for bad user input (the job fails
        with its code and message, and is not retried).
        """
        ...

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        """Extra writes committed with the job's result (same transaction)."""
        ...

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        """Extra writes committed with the job's failure (same transaction)."""
        ...


def record_artifacts(session: Session, job: Job, artifacts: Iterable[dict[str, Any]]) -> None:
    """Rows for the files a result lists (each replaces an earlier one of its name)."""
    for artifact in artifacts:
        jobs.replace_artifact(
            session,
            Artifact(
                id=new_id("a"),
                tenant_id=job.tenant_id,
                job_id=job.id,
                name=artifact["name"],
                sha256=artifact["sha256"],
                size=artifact["size"],
                content_type=artifact["content_type"],
            ),
        )
