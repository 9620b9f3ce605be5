"""Running one job: claim it, run its runner under a lease, write its outcome once.

``execute_job`` is what the Celery task calls, and what tests call directly. Running it twice
for the same job (a redelivered message, a re-sent id) is safe: only one claim succeeds.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from adversarial.errors import EngineInputError
from service.database import session_scope
from service.jobs import repository
from service.jobs.results import sanitized
from service.jobs.service import dispatch, finish_part
from service.settings import Settings, get_settings
from service.tables import Job, JobStatus
from worker.lease import JobCancelled, Lease, LeaseLost
from worker.runners import RUNNERS
from worker.runners.base import WaitForParts

logger = logging.getLogger(__name__)

CANCELLED_ERROR = {"code": "cancelled", "message": "cancelled by a client"}


def non_finite_warning(where: list[str]) -> dict[str, str]:
    """The warning a result gets when NaN or infinite numbers were written as null."""
    shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
    return {
        "code": "non_finite_values",
        "message": f"{len(where)} number(s) of this result were NaN or infinite and are "
        f"written as null: {shown}.",
    }


def execute_job(job_id: str, *, settings: Settings | None = None, owner: str | None = None) -> str:
    """Run a queued job to a final state. Returns what happened (for logs and tests):
    ``skipped`` (not claimable), ``succeeded``, ``failed``, ``cancelled``, ``lease_lost`` or
    ``waiting`` (it staged parts and runs again when they have finished)."""
    settings = settings or get_settings()
    lease = Lease(job_id, settings, owner)
    if not lease.claim():
        logger.info("job %s: not claimable (running elsewhere, finished or gone)", job_id)
        return "skipped"

    def read() -> Job | None:
        with session_scope() as session:
            return repository.get_any(session, job_id)

    # The job is ours now: a blip here must not leave it running with nobody running it
    # (its lease would expire and it would run again as a new attempt).
    job = lease.retry(read)
    assert job is not None
    logger.info(
        "job %s (%s): claimed by %s, attempt %d", job_id, job.kind, lease.owner, job.attempt
    )
    outcome = _run_claimed(job, lease, settings)
    if job.parent_id is not None and outcome in JobStatus.FINAL:
        # The last part to finish queues its parent (the merge).
        finish_part(job.parent_id)
    return outcome


def _run_claimed(job: Job, lease: Lease, settings: Settings) -> str:
    """Run a claimed job's runner under its lease and write its final state once."""
    job_id = job.id
    runner = RUNNERS.get(job.kind)
    error: dict[str, Any]
    with lease:
        try:
            if runner is None:
                raise EngineInputError("unknown_kind", f"no runner for job kind {job.kind!r}")
            result = runner.run(job, lease)
        except JobCancelled:
            lease.finish(JobStatus.CANCELLED, error=CANCELLED_ERROR)
            return JobStatus.CANCELLED
        except WaitForParts as waiting:
            if lease.wait_for_parts(waiting.stage, waiting.message):
                logger.info("job %s: waiting for its parts (%s)", job_id, waiting.message)
                return "waiting"
            # Not handed over: a client asked to cancel it, or the lease is gone.
            if lease.finish(JobStatus.CANCELLED, error=CANCELLED_ERROR):
                return JobStatus.CANCELLED
            return "lease_lost"
        except LeaseLost:
            logger.warning("job %s: lease lost; another worker owns it now", job_id)
            return "lease_lost"
        except EngineInputError as exc:
            error = {"code": exc.code, "message": exc.message}
        except SoftTimeLimitExceeded:
            if getattr(runner, "resumable", False) and lease.artifacts_written:
                # A long job (days of training) outlives any one run's time limit: it saved
                # a checkpoint during this run, so it goes back in line and continues from
                # it, without spending an attempt (attempts count worker deaths).
                if lease.continue_later(
                    f"continuing from its last checkpoint after the "
                    f"{settings.job_time_limit_seconds:g} s limit of one run"
                ):
                    dispatch(job_id)
                    return "continued"
                return "lease_lost"
            error = {
                "code": "time_limit",
                "message": f"the job ran past {settings.job_time_limit_seconds:g} s",
            }
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
        else:
            result, where = sanitized(result)
            if where:
                result.setdefault("warnings", []).append(non_finite_warning(where))
            if lease.finish(
                JobStatus.SUCCEEDED,
                result=result,
                progress={"fraction": 1.0, "stage": "done", "message": "finished"},
                also=lambda session: runner.on_success(session, job, result),
                unless_cancelled=True,
            ):
                return JobStatus.SUCCEEDED
            # A cancel that came after the last heartbeat still wins: a job a client
            # cancelled never ends succeeded.
            if lease.finish(JobStatus.CANCELLED, error=CANCELLED_ERROR):
                return JobStatus.CANCELLED
            return "lease_lost"
        hook = runner.on_failure if runner is not None else None
        written = lease.finish(
            JobStatus.FAILED,
            error=error,
            also=(lambda session: hook(session, job, error)) if hook else None,
        )
        logger.info("job %s failed: %s", job_id, error["code"])
        return JobStatus.FAILED if written else "lease_lost"
