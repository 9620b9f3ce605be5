"""Finds jobs that the broker or a dead worker lost, and puts them back in line.

- A running job whose lease expired (its worker died or hung): queued again and re-sent,
  or failed once it used ``max_attempts``; cancelled if a client asked for that.
- A queued job never handed to the broker (it was down) or handed over long ago and never
  claimed (an embedded broker loses the message of a worker that died): re-sent.

Every change is a conditional UPDATE, so any number of reconcilers can run at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from service import metrics
from service.blobs.service import release_inputs_after_commit
from service.database import session_scope, utcnow
from service.jobs import repository
from service.jobs.service import dispatch, finish_part
from service.settings import Settings, get_settings
from service.storage import get_store
from service.tables import JobStatus
from worker.runners import RUNNERS

logger = logging.getLogger(__name__)


def reconcile_once(settings: Settings | None = None) -> dict[str, int]:
    """One pass; returns how many jobs were re-queued, failed, cancelled and re-sent."""
    settings = settings or get_settings()
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "resent": 0, "woken": 0}
    now = utcnow()
    with session_scope() as session:
        expired = repository.expired_leases(session, now)
    for job in expired:
        with session_scope() as session:
            if job.cancel_requested:
                outcome = "cancelled"
                values = {
                    "status": JobStatus.CANCELLED,
                    "finished_at": now,
                    "lease_expires_at": None,
                    "error": {"code": "cancelled", "message": "cancelled by a client"},
                }
            elif job.attempt >= job.max_attempts:
                outcome = "failed"
                error = {
                    "code": "worker_lost",
                    "message": f"the worker running this job stopped {job.attempt} times "
                    f"(lease {job.lease_owner} expired); giving up",
                }
                values = {
                    "status": JobStatus.FAILED,
                    "finished_at": now,
                    "error": error,
                    "lease_expires_at": None,
                }
            else:
                outcome = "requeued"
                values = {
                    "status": JobStatus.QUEUED,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "enqueued_at": None,
                    "progress": {
                        "fraction": 0.0,
                        "stage": "queued",
                        "message": f"re-queued after attempt {job.attempt}: its worker stopped",
                    },
                }
            if not repository.release_expired(session, job, now, values):
                continue  # its worker came back, or another reconciler got there first
            metrics.increment(session, metrics.LEASE_EXPIRIES, kind=job.kind)
            metrics.increment(session, metrics.RECONCILER_ACTIONS, action=outcome, kind=job.kind)
            runner = RUNNERS.get(job.kind)
            if outcome == "failed" and runner is not None:
                runner.on_failure(session, job, values["error"])  # type: ignore[arg-type]
            if outcome != "requeued":
                release_inputs_after_commit(session, get_store(), job.id)
        logger.warning(
            "job %s: lease of %s expired; %s",
            job.id,
            job.lease_owner,
            outcome,
            extra={"job_id": job.id},
        )
        counts[outcome] += 1
        if outcome != "requeued" and job.parent_id is not None:
            finish_part(job.parent_id)

    # A parent whose last part finished but was never woken (its worker died in between).
    with session_scope() as session:
        sleeping = repository.sleeping_parents(session)
    for parent_id in sleeping:
        finish_part(parent_id)
        counts["woken"] += 1

    sent_before = now - dt.timedelta(seconds=settings.requeue_after_seconds)
    with session_scope() as session:
        unsent = repository.unsent_queued(session, sent_before)
    for job_id in unsent:
        dispatch(job_id)
        counts["resent"] += 1
    if counts["woken"] or counts["resent"]:
        # Counted after the fact (these send messages, they change no row of their own).
        with session_scope() as session:
            for action in ("woken", "resent"):
                if counts[action]:
                    metrics.increment(
                        session, metrics.RECONCILER_ACTIONS, counts[action], action=action, kind=""
                    )
    return counts


class ReconcilerThread(threading.Thread):
    """Runs :func:`reconcile_once` every ``reconcile_seconds`` until stopped."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(name="gauntlet-reconciler", daemon=True)
        self.settings = settings or get_settings()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                counts = reconcile_once(self.settings)
                if any(counts.values()):
                    logger.info("reconciled: %s", counts)
            except Exception:
                logger.warning("reconciler pass failed", exc_info=True)
            self._stop_event.wait(self.settings.reconcile_seconds)

    def stop(self) -> None:
        """Ask the thread to finish after its current pass."""
        self._stop_event.set()


def main() -> None:
    """``python -m worker.reconciler``: run the reconciler on its own (optional; workers
    already run one)."""
    logging.basicConfig(level=logging.INFO)
    thread = ReconcilerThread()
    thread.start()
    thread.join()


if __name__ == "__main__":
    main()
