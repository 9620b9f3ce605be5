"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
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
from service.jobs import repository as jobs
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


@router.get("/readyz")
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


@router.get("/metrics")
def metrics(_request: Request) -> Response:
    """Prometheus metrics: requests, latency, jobs by status."""
    try:
        with session_scope() as session:
            counts = jobs.count_by_status(session)
        for status in JobStatus.ALL:
            JOBS.labels(status).set(counts.get(status, 0))
    except Exception:
        pass  # metrics must answer even when the database does not
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
