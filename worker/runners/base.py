"""What a job runner is: turns a claimed job into engine calls and a result document."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.orm import Session

from service.tables import Job
from worker.lease import Lease


class Runner(Protocol):
    """One kind of job."""

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
