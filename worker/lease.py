"""A worker's hold on a job: claim, heartbeat, progress and the one final write.

Every write is conditional on still holding the lease (see ``service.jobs.repository``); a
worker that lost it (it stalled past the lease, the reconciler gave the job to another
worker) stops at its next progress report and writes nothing more.

A database that is briefly unreachable (a restart, a failover) never fails a job: progress
writes and heartbeats that meet a connection error are tried again later, and reads and the
final write are retried with backoff for as long as the lease lasts.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from service.blobs.service import release_after_commit, release_inputs_after_commit
from service.database import is_transient, session_scope, utcnow
from service.jobs import repository
from service.settings import Settings
from service.storage import get_store
from service.tables import Artifact, new_id

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Progress writes that meet a connection error wait this long (doubling) before the next.
_PROGRESS_RETRY_SECONDS = 0.25
_MAX_RETRY_SECONDS = 5.0


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
        self._progress_failures = 0
        self._progress_retry_at = 0.0
        self.artifacts_written = 0
        # When the lease runs out if no heartbeat gets through (monotonic clock).
        self._held_until = 0.0

    @property
    def held_until(self) -> float:
        """The monotonic time until which no other worker can take the job."""
        return self._held_until

    def _until(self) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=self.settings.lease_seconds)

    def claim(self) -> bool:
        """Take the job if it is queued; ``False`` if another worker has it or it is done."""
        started = time.monotonic()
        with session_scope() as session:
            claimed = repository.claim(session, self.job_id, self.owner, utcnow(), self._until())
        if claimed:
            self._held_until = started + self.settings.lease_seconds
        return claimed

    def retry(self, work: Callable[[], T]) -> T:
        """Run a database operation, retrying connection errors with backoff while the lease
        lasts (a restarting database must not fail the job); other errors propagate."""
        delay = _PROGRESS_RETRY_SECONDS
        while True:
            try:
                return work()
            except Exception as error:
                if not is_transient(error) or time.monotonic() + delay >= self._held_until:
                    raise
                logger.warning("job %s: database unreachable (%s); retrying", self.job_id, error)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    def __enter__(self) -> Lease:
        # The heartbeat's log lines belong to the job too (service.logs.job_id).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._heartbeat,), name=f"lease-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.heartbeat_seconds + 5)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            started = time.monotonic()
            try:
                with session_scope() as session:
                    if not repository.renew_lease(session, self.job_id, self.owner, self._until()):
                        self._lost.set()
                        return
                    if repository.cancel_was_requested(session, self.job_id):
                        self._cancelled.set()
                self._held_until = started + self.settings.lease_seconds
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
        if now < self._progress_retry_at:
            return
        if not force and now - self._last_progress < self.settings.progress_seconds:
            return
        progress = {
            "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "stage": stage,
            "message": message,
        }
        try:
            with session_scope() as session:
                written = repository.write_progress(
                    session, self.job_id, self.owner, progress, utcnow()
                )
        except Exception as error:
            if not is_transient(error):
                raise
            # Progress is not worth failing a job for: try again a little later.
            self._progress_failures += 1
            delay = _PROGRESS_RETRY_SECONDS * 2 ** (self._progress_failures - 1)
            self._progress_retry_at = now + min(delay, _MAX_RETRY_SECONDS)
            logger.warning("job %s: progress not written (%s); later", self.job_id, error)
            return
        if not written:
            self._lost.set()
            raise LeaseLost(self.job_id)
        self._progress_failures = 0
        self._last_progress = now

    def put_artifact(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Store a file of the job now, while it runs (a checkpoint, a crafted set), replacing
        an earlier one of the same name; only while the lease holds (``LeaseLost`` else).
        Returns the artifact's reference (name, sha256, size, content_type)."""
        sha256, size = get_store().put_bytes(data)

        def record() -> bool:
            with session_scope() as session:
                job = repository.get_any(session, self.job_id)
                if job is None or not repository.touch_owned(
                    session, self.job_id, self.owner, utcnow()
                ):
                    session.rollback()
                    return False
                replaced = repository.replace_artifact(
                    session,
                    Artifact(
                        id=new_id("a"),
                        tenant_id=job.tenant_id,
                        job_id=self.job_id,
                        name=name,
                        sha256=sha256,
                        size=size,
                        content_type=content_type,
                    ),
                )
                # An earlier checkpoint's bytes go, unless another row has them too.
                for old_sha256 in replaced:
                    release_after_commit(session, get_store(), old_sha256)
            return True

        if not self.retry(record):
            self._lost.set()
            raise LeaseLost(self.job_id)
        self.artifacts_written += 1
        return {"name": name, "sha256": sha256, "size": size, "content_type": content_type}

    def continue_later(self, message: str) -> bool:
        """Put the job back in line to continue in a new run (from what it saved), without
        counting this run as an attempt; ``False`` if the lease was lost."""

        def write() -> bool:
            with session_scope() as session:
                return repository.requeue_to_continue(
                    session,
                    self.job_id,
                    self.owner,
                    utcnow(),
                    {"fraction": 0.0, "stage": "queued", "message": message},
                )

        return self.retry(write)

    def wait_for_parts(self, stage: Callable[[Session], None], message: str) -> bool:
        """Stage parts (``stage`` adds their jobs, with this job as parent) and let go of the
        job so it waits for them, in one transaction; the parts are sent once it commits.
        ``False`` (nothing staged) when the lease was lost or a client asked to cancel."""
        progress = {"fraction": 0.0, "stage": "parts", "message": message}

        def write() -> bool:
            with session_scope() as session:
                if not repository.wait_for_parts(
                    session, self.job_id, self.owner, utcnow(), progress
                ):
                    session.rollback()
                    return False
                stage(session)
            return True

        return self.retry(write)

    def read_artifact(self, name: str) -> bytes | None:
        """The bytes of the job's artifact ``name`` (from an earlier attempt), if any."""

        def find() -> str | None:
            with session_scope() as session:
                row = repository.get_artifact(session, self.job_id, name)
                return None if row is None else row.sha256

        sha256 = self.retry(find)
        if sha256 is None:
            return None
        try:
            return get_store().read_bytes(sha256)
        except FileNotFoundError:
            logger.warning(
                "job %s: artifact %s is recorded but its bytes are gone", self.job_id, name
            )
            return None

    def finish(
        self,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
        unless_cancelled: bool = False,
    ) -> bool:
        """Write the final state, and ``also`` in the same transaction, if the lease holds
        (and, with ``unless_cancelled``, no client asked to cancel). Connection errors are
        retried while the lease lasts."""

        def write() -> bool:
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
                    unless_cancelled=unless_cancelled,
                )
                if not written:
                    session.rollback()
                    return False
                if also is not None:
                    also(session)
                release_inputs_after_commit(session, get_store(), self.job_id)
            return True

        written = self.retry(write)
        if not written:
            logger.warning("job %s: final write (%s) not made", self.job_id, status)
        return written
