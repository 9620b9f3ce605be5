"""Waiting on a job: the long poll (``?wait=``) and the server-sent event stream.

Both read the job once themselves (the tenant check, the baseline), then wait on the
process's :class:`~service.jobs.watcher.JobWatcher`, never on a database query of their own.
Reads run in a thread with a short session of their own: no connection is held while a
client waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from service.database import session_scope
from service.jobs import repository, service
from service.jobs.schemas import JobRead
from service.jobs.watcher import JobState, JobWatcher, Subscription, TooManyWaiters
from service.problems import ProblemError
from service.settings import Settings
from service.tables import JobStatus
from service.tenants.service import Principal

RETRY_AFTER_SECONDS = 5


def state_of(status: str, progress: Mapping[str, Any]) -> JobState:
    """A job's watched state, normalised so a row and a ``JobRead`` compare equal."""
    return JobState(
        status=status,
        progress={
            "fraction": float(progress.get("fraction", 0.0)),
            "stage": str(progress.get("stage", "")),
            "message": str(progress.get("message", "")),
        },
    )


def read_states(job_ids: Sequence[str]) -> dict[str, JobState]:
    """The watcher's one query: the states of ``job_ids`` (missing ids left out)."""
    with session_scope() as session:
        return {
            row.id: state_of(row.status, row.progress or {})
            for row in repository.states(session, job_ids)
        }


def make_watcher(settings: Settings) -> JobWatcher:
    """This process's watcher, as the settings configure it."""
    return JobWatcher(
        read_states, interval=settings.job_watch_seconds, max_waiters=settings.max_job_waiters
    )


def get_watcher(app: FastAPI) -> JobWatcher:
    watcher: JobWatcher = app.state.job_watcher
    return watcher


def _read_job(principal: Principal, job_id: str) -> JobRead:
    with session_scope() as session:
        return JobRead.from_row(service.get_job(session, principal, job_id))


async def read_job(principal: Principal, job_id: str) -> JobRead:
    """The caller's job (or the 404 that hides others'), read in a thread."""
    return await run_in_threadpool(_read_job, principal, job_id)


def job_state(job: JobRead) -> JobState:
    return state_of(job.status, job.progress.model_dump())


def subscribe(request: Request, job: JobRead) -> Subscription:
    """Watch ``job`` from the state just read; 503 when this process is full."""
    try:
        return get_watcher(request.app).subscribe(job.id, job_state(job))
    except TooManyWaiters:
        raise ProblemError(
            503,
            "too_many_waiters",
            "this server has as many event streams and long polls open as it serves; "
            f"retry, or poll GET /v1/jobs/{job.id} without wait",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


async def _close_on_disconnect(request: Request, subscription: Subscription) -> None:
    # A GET's body is empty: the next message the server sends is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            subscription.close()
            return


async def long_poll(request: Request, principal: Principal, job_id: str, wait: float) -> JobRead:
    """The job once its status or progress differs from now, or after ``wait`` seconds."""
    job = await read_job(principal, job_id)
    if wait <= 0 or job.status in JobStatus.FINAL:
        return job
    subscription = subscribe(request, job)
    listener = asyncio.create_task(_close_on_disconnect(request, subscription))
    try:
        await subscription.next_change(wait)
    finally:
        subscription.close()
        listener.cancel()
    return await read_job(principal, job_id)


def _event(name: str, data: Mapping[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n"


def _progress_event(state: JobState) -> str:
    return _event("progress", {**state.progress, "status": state.status})


async def event_stream(
    principal: Principal,
    job: JobRead,
    subscription: Subscription | None,
    heartbeat_seconds: float,
) -> AsyncIterator[str]:
    """``progress`` events while the job runs, one ``status`` event (the job as GET returns
    it) once it is final, then the end; a comment every ``heartbeat_seconds`` meanwhile."""
    try:
        yield "retry: 3000\n\n"
        yield _progress_event(job_state(job))
        if job.status in JobStatus.FINAL or subscription is None:
            yield _event("status", job.model_dump_json())
            return
        while True:
            state = await subscription.next_change(heartbeat_seconds)
            if subscription.closed:
                return  # the job is gone (its tenant was deleted)
            if state is None:
                yield ": keep-alive\n\n"
                continue
            yield _progress_event(state)
            if state.status in JobStatus.FINAL:
                subscription.close()
                final = await read_job(principal, job.id)
                yield _event("status", final.model_dump_json())
                return
    finally:
        if subscription is not None:
            subscription.close()
