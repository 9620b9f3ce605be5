"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

from service.queue import RUN_JOB_TASK
from worker.celery_app import app
from worker.execution import execute_job


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    """Run one job (safe to deliver twice: only one claim succeeds)."""
    return execute_job(job_id)
