"""Log lines that say which job or request they belong to, as JSON or as text.

``GAUNTLET_LOG_FORMAT=json`` writes one JSON object per line (``time``, ``level``,
``logger``, ``message``, ``process``, and ``job_id`` or ``request_id`` when there is one,
``exception`` with a traceback); ``plain`` (the default) writes text. The ids come from
context variables: a worker sets :data:`job_id` while it runs a job (``worker.celery_app``),
the API sets :data:`request_id` per request (:class:`RequestIdMiddleware`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.queue import RUN_JOB_TASK

job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Celery's own lines about a task ("Task jobs.run[...] received", "... succeeded in 2 s")
# carry the task's arguments; a jobs.run task's only argument is its job's id.
_JOB_ID_IN_ARGUMENTS = re.compile(r"'(j_[0-9a-f]+)'")
# A client's X-Request-ID is kept when it is a plain token, else replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"


class ContextFilter(logging.Filter):
    """Adds ``job_id`` and ``request_id`` (``None`` when not set) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # An id given with ``extra=`` (a reconciler acting on another worker's job) wins.
        record.job_id = (
            getattr(record, "job_id", None) or job_id.get() or _job_of_celery_record(record)
        )
        record.request_id = getattr(record, "request_id", None) or request_id.get()
        return True


def _job_of_celery_record(record: logging.LogRecord) -> str | None:
    arguments = record.args
    if isinstance(arguments, Mapping) and arguments.get("name") == RUN_JOB_TASK:
        found = _JOB_ID_IN_ARGUMENTS.search(str(arguments.get("args", "")))
        return found.group(1) if found else None
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for name in ("job_id", "request_id"):
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def install(handlers: Iterable[logging.Handler], log_format: str) -> None:
    """Give ``handlers`` the context filter, and the JSON formatter when ``log_format`` is
    ``json`` (else they keep their own, text, format)."""
    for handler in handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Set up the root logger (a stderr handler) and uvicorn's loggers for ``log_format``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    install(root.handlers, log_format)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        install(logging.getLogger(name).handlers, log_format)


class RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` when it is a plain token):
    set in :data:`request_id` while the request runs, and sent back in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        current = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        token = request_id.set(current)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), current.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
