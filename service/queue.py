"""The Celery application's configuration, shared by the API (which only sends job ids)
and the workers (which register the tasks in ``worker.tasks``).

The broker only delivers ids: the job row in the database is the source of truth, so a lost
or duplicated message costs at most a delay (see ``worker.reconciler``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "jobs.run"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from Gauntlet's settings."""
    transport_options: dict[str, Any]
    if settings.broker_url.startswith("filesystem"):
        # The embedded broker: messages are files in one folder that API and worker share.
        folder = settings.broker_folder / "messages"
        control = settings.broker_folder / "control"
        folder.mkdir(parents=True, exist_ok=True)
        control.mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            # Broadcast (control) messages; by default a "control" folder in the working
            # directory.
            "control_folder": str(control),
            "store_processed": False,
            # The folder is polled (Redis blocks instead); the default 1 s adds half a
            # second to every job on average.
            "polling_interval": 0.1,
        }
    else:
        transport_options = {
            # DESIGN.md, measured with kombu 5.7: Redis re-delivers an unacknowledged task
            # only after the visibility timeout; one shorter than the longest job would run
            # that job twice. The lease and reconciler recover jobs of dead workers sooner.
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_timeout": 5,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.worker_queue,
        # Long GPU tasks: take one message at a time and acknowledge it only when done, so
        # a killed pool process's task is delivered again (every task is safe to run twice).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.job_time_limit_seconds,
        "task_time_limit": settings.job_time_limit_seconds + 60,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        # A broker blip must not stop a running job: with True (Celery 6's default) a lost
        # connection cancels every running acks_late task, and the job runs again as a new
        # attempt once its lease expires (tests/e2e/test_infrastructure_blips.py). The job's
        # lease in the database, not the broker's message, says who runs it.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


@lru_cache
def get_celery() -> Celery:
    """This process's Celery application (configuration only; tasks live in ``worker``)."""
    app = Celery("gauntlet")
    app.conf.update(celery_config(get_settings()))
    return app


def send_job(job_id: str) -> bool:
    """Hand a job id to the broker. ``False`` when the broker is unreachable: the job stays
    queued in the database and the reconciler sends it later."""
    try:
        get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().worker_queue)
    except Exception:
        logger.warning(
            "could not send job %s to the broker; it will be re-sent", job_id, exc_info=True
        )
        return False
    return True


def broker_reachable(timeout: float = 2.0) -> bool:
    """Whether a connection to the broker can be made within ``timeout`` seconds."""
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception:
        return False
    return True
