"""One shared watcher per API process for the jobs that clients wait on.

Event streams (``GET /v1/jobs/{id}/events``) and long polls (``GET /v1/jobs/{id}?wait=``)
subscribe here instead of querying the database themselves: while anyone waits, one task
reads the status and progress of every watched job in one query each ``interval`` seconds
(in a thread, so the event loop never blocks) and wakes the subscribers of the jobs that
changed. Database load is one query per tick per process, however many clients wait. It
works the same on Postgres and on the embedded SQLite file (no LISTEN/NOTIFY needed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

# Ids per query: well under SQLite's bound-parameter limit.
CHUNK = 500


@dataclass(frozen=True)
class JobState:
    """What a waiter watches: the job's status and its progress ``{fraction, stage, message}``."""

    status: str
    progress: Mapping[str, Any]


ReadStates = Callable[[Sequence[str]], Mapping[str, JobState]]


class TooManyWaiters(Exception):
    """This process already serves ``max_waiters`` streams and long polls."""


@dataclass(eq=False)
class _Entry:
    state: JobState | None = None
    missing: bool = False
    subscriptions: set[Subscription] = field(default_factory=set)


class Subscription:
    """One waiter on one job. :meth:`next_change` waits for a state other than the last one
    it returned (at first: the ``baseline`` the caller read itself)."""

    def __init__(self, watcher: JobWatcher, entry: _Entry, job_id: str, baseline: JobState):
        self._watcher = watcher
        self._entry = entry
        self.job_id = job_id
        self.seen = baseline
        self.closed = False
        self._wake = asyncio.Event()

    async def next_change(self, timeout: float) -> JobState | None:
        """The job's state once it differs from the last one seen; ``None`` when ``timeout``
        seconds pass first, the subscription is closed, or the job no longer exists (then
        :attr:`closed` is true)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._entry.missing:
                self.close()
            if self.closed:
                return None
            state = self._entry.state
            if state is not None and state != self.seen:
                self.seen = state
                return state
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return None

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop watching (idempotent); a pending :meth:`next_change` returns ``None``."""
        if self.closed:
            return
        self.closed = True
        self._watcher._release(self)
        self._wake.set()

    def __del__(self) -> None:
        # A stream whose generator never started (the client left first) still frees its slot.
        if not self.closed:
            self.closed = True
            self._watcher._release(self)


class JobWatcher:
    """Reads the watched jobs' states with ``read_states`` every ``interval`` seconds while
    anyone waits, and wakes the subscribers of the jobs whose state changed."""

    def __init__(self, read_states: ReadStates, *, interval: float, max_waiters: int) -> None:
        self.read_states = read_states
        self.interval = interval
        self.max_waiters = max_waiters
        self.queries = 0
        self._entries: dict[str, _Entry] = {}
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiters(self) -> int:
        """Subscriptions open now."""
        return self._waiters

    def subscribe(self, job_id: str, baseline: JobState) -> Subscription:
        """Watch ``job_id``, whose state the caller read as ``baseline``; raises
        :class:`TooManyWaiters` when this process serves ``max_waiters`` already."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests start one per client): nothing of the old one survives.
            self._loop, self._entries, self._waiters, self._task = loop, {}, 0, None
        if self._waiters >= self.max_waiters:
            raise TooManyWaiters(f"{self._waiters} streams and long polls are open")
        entry = self._entries.setdefault(job_id, _Entry())
        subscription = Subscription(self, entry, job_id, baseline)
        entry.subscriptions.add(subscription)
        self._waiters += 1
        if self._task is None:
            self._task = loop.create_task(self._run(), name="job-watcher")
        return subscription

    def _release(self, subscription: Subscription) -> None:
        entry = self._entries.get(subscription.job_id)
        if entry is None or subscription not in entry.subscriptions:
            return
        entry.subscriptions.discard(subscription)
        self._waiters -= 1
        if not entry.subscriptions:
            del self._entries[subscription.job_id]

    async def _run(self) -> None:
        failures = 0
        try:
            while self._entries:
                ids = list(self._entries)
                try:
                    states = await run_in_threadpool(self._read, ids)
                except Exception as error:  # a database blip: keep the waiters, try again
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        logger.warning("job watcher: read failed (%s); retrying", error)
                else:
                    failures = 0
                    self._apply(ids, states)
                await asyncio.sleep(self.interval * min(2**failures, 20))
        finally:
            self._task = None

    def _read(self, ids: Sequence[str]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        for start in range(0, len(ids), CHUNK):
            states.update(self.read_states(ids[start : start + CHUNK]))
            self.queries += 1
        return states

    def _apply(self, ids: Sequence[str], states: Mapping[str, JobState]) -> None:
        for job_id in ids:
            entry = self._entries.get(job_id)
            if entry is None:
                continue  # its last waiter left while the query ran
            state = states.get(job_id)
            if state is None:
                entry.missing = True
            elif state == entry.state:
                continue
            else:
                entry.state = state
            for subscription in list(entry.subscriptions):
                subscription.wake()
