"""What a job runner is: turns a claimed job into engine calls and a result document."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session

from service.blobs.service import release_after_commit
from service.jobs import repository as jobs
from service.settings import Settings
from service.storage import get_store
from service.tables import Artifact, Job, Model, new_id
from worker.jail import JailError
from worker.jail.config import jail_mode, refuses_format
from worker.jail.errors import SANDBOX_UNAVAILABLE
from worker.lease import Lease
from worker.loading import model_spec


class WaitForParts(Exception):  # noqa: N818 (a signal to the executor, not an error)
    """Raised by a runner that needs parts before it can go on: ``stage(session)`` adds
    their jobs (``parent_id`` = this job); the job lets go of its lease and waits, and runs
    again (a new run, not a new attempt) when the last part has finished."""

    def __init__(self, stage: Callable[[Session], None], message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message


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
        replaced = jobs.replace_artifact(
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
        # An earlier attempt's file of that name goes, unless another row has its bytes.
        for sha256 in replaced:
            release_after_commit(session, get_store(), sha256)


def jailed_model(row: Model, settings: Settings) -> dict[str, Any]:
    """The payload part that names the model for the jail; refuses a code-carrying format
    this worker cannot sandbox."""
    mode = jail_mode(settings)
    if refuses_format(settings, row.format, mode):
        raise JailError(
            SANDBOX_UNAVAILABLE,
            f"This service's workers cannot run a namespace sandbox, so {row.format} models "
            "(which carry code) are not accepted here. Upload safetensors weights with a "
            "built-in architecture, or ONNX.",
        )
    return {
        "spec": model_spec(row).to_json(),
        "max_bytes": settings.max_model_bytes,
        "device": settings.worker_device,
        "black_box": bool(row.black_box),
    }


def lease_stopper(lease: Lease) -> Callable[[], bool]:
    """A jail's ``should_stop``: raises the lease's ``JobCancelled`` or ``LeaseLost``."""

    def should_stop() -> bool:
        lease.check()
        return False

    return should_stop
