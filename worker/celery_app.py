"""The Celery worker application: ``celery -A worker.celery_app worker``.

Configuration comes from ``service.queue`` (shared with the API); the tasks are in
``worker.tasks``. Each worker's main process also runs a reconciler thread.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from service import logs
from service.database import reset_engine
from service.queue import RUN_JOB_TASK, get_celery

app = get_celery()
app.conf.include = ["worker.tasks"]

logger = logging.getLogger(__name__)
_reconciler: Any = None


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    # Celery sets its handlers up; they get the job id, and JSON when the settings say so.
    from service.settings import get_settings

    logs.install(logger.handlers, get_settings().log_format)


@signals.task_prerun.connect
def _job_context(task: Any = None, args: Any = None, **_: Any) -> None:
    # Every line the job's process logs while it runs carries its id (service.logs).
    if getattr(task, "name", None) == RUN_JOB_TASK and args:
        logs.job_id.set(str(args[0]))


@signals.task_postrun.connect
def _job_context_ends(**_: Any) -> None:
    logs.job_id.set(None)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share its parent's database connections.
    reset_engine()


@signals.worker_process_init.connect
def _warm_a_jail(**_: Any) -> None:
    # The first job finds a jail that has already imported torch (worker.jail).
    from service.settings import get_settings
    from worker.jail.config import jail_mode, jail_pool

    settings = get_settings()
    if not settings.jail_prestart:
        return
    try:
        jail_pool(settings).prestart(jail_mode(settings))
    except Exception:
        logger.warning("could not start a spare jail", exc_info=True)


@signals.worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    global _reconciler
    from worker.reconciler import ReconcilerThread

    _reconciler = ReconcilerThread()
    _reconciler.start()
    logger.info("reconciler started (every %.0f s)", _reconciler.settings.reconcile_seconds)


@signals.worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
