"""A worker's hold on a job: claim, heartbeat, progress and the one final write.

Every write is conditional on still holding the lease (see ``service.jobs.repository``); a
worker that lost it (it stalled past the lease, the reconciler gave the job to another
worker) stops at its next progress report and writes nothing more.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service.database import session_scope, utcnow
from service.jobs import repository
from service.settings import Settings

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """This worker no longer owns the job: another worker may be running it."""


class JobCancelled(Exception):
    """A client cancelled the job while it ran."""


def new_owner_id() -> str:
    """A lease owner id that names the host and process (helps operators) and is unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The lease on one job, renewed by a background thread while the job runs."""

    def __init__(self, job_id: str, settings: Settings, owner: str | None = None) -> None:
        self.job_id = job_id
        self.settings = settings
        self.owner = owner or new_owner_id()
        self._lost = threading.Event()
        self._cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_progress = 0.0

    def _until(self) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)

    def claim(self) -> bool:
        """Take the job if it is queued; ``False`` if another worker has it or it is done."""
        with session_scope() as session:
            return repository.claim(session, self.job_id, self.owner, utcnow(), self._until())

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.heartbeat_seconds + 5)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope() as session:
                    if not repository.renew_lease(session, self.job_id, self.owner, self._until()):
                        self._lost.set()
                        return
                    if repository.cancel_was_requested(session, self.job_id):
                        self._cancelled.set()
            except Exception:
                # A database hiccup: keep trying; the lease outlives a few missed beats.
                logger.warning("heartbeat for %s failed", self.job_id, exc_info=True)

    def check(self) -> None:
        """Raise if the job was cancelled or the lease lost (called between units of work)."""
        if self._lost.is_set():
            raise LeaseLost(self.job_id)
        if self._cancelled.is_set():
            raise JobCancelled(self.job_id)

    def report(self, fraction: float, stage: str, message: str, *, force: bool = False) -> None:
        """Record progress (at most once per ``progress_seconds``) and honour cancellation."""
        self.check()
        now = time.monotonic()
        if not force and now - self._last_progress < self.settings.progress_seconds:
            return
        self._last_progress = now
        progress = {
            "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "stage": stage,
            "message": message,
        }
        with session_scope() as session:
            if not repository.write_progress(session, self.job_id, self.owner, progress, utcnow()):
                self._lost.set()
                raise LeaseLost(self.job_id)

    def finish(
        self,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        """Write the final state, and ``also`` in the same transaction, if the lease holds."""
        with session_scope() as session:
            written = repository.finish(
                session,
                self.job_id,
                self.owner,
                status=status,
                now=utcnow(),
                result=result,
                error=error,
                progress=progress,
            )
            if not written:
                session.rollback()
                logger.warning("job %s: lease lost before its final write; discarded", self.job_id)
                return False
            if also is not None:
                also(session)
        return True
