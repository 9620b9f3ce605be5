"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.database import session_scope
from service.deps import SettingsDep
from service.jobs import repository as jobs
from service.metrics import JobTableCollector
from service.problems import problem_responses, unauthenticated
from service.queue import broker_reachable
from service.tables import JobStatus

router = APIRouter(tags=["health"])

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "gauntlet_http_requests_total",
    "HTTP requests by method, route and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "gauntlet_http_request_seconds",
    "HTTP request latency by route.",
    ["route"],
    registry=REGISTRY,
)
JOBS = Gauge("gauntlet_jobs", "Jobs by status.", ["status"], registry=REGISTRY)


class MetricsMiddleware:
    """Counts requests and their latency per route template (not per raw path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(template).observe(time.perf_counter() - started)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "The database or the broker is unreachable."}},
)
def readyz() -> JSONResponse:
    """The database and the broker are reachable (503 otherwise)."""
    checks = {"database": "ok", "broker": "ok"}
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if not broker_reachable():
        checks["broker"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


REGISTRY.register(JobTableCollector())


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "The Prometheus text format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        },
        **problem_responses(401),
    },
)
def metrics(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Prometheus metrics (the metrics token when GAUNTLET_METRICS_TOKEN is set)."""
    if settings.metrics_token is not None and not _is_metrics_token(
        authorization, settings.metrics_token.get_secret_value()
    ):
        raise unauthenticated("send 'Authorization: Bearer <GAUNTLET_METRICS_TOKEN>'")
    try:
        with session_scope() as session:
            counts = jobs.count_by_status(session)
        for status in JobStatus.ALL:
            JOBS.labels(status).set(counts.get(status, 0))
    except Exception:
        pass  # metrics must answer even when the database does not
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _is_metrics_token(authorization: str | None, token: str) -> bool:
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )
