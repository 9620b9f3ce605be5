"""The FastAPI application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service import architectures, health, logs, presets
from service.datasets.router import router as datasets_router
from service.jobs.events import make_watcher
from service.jobs.router import router as jobs_router
from service.leaderboard.router import router as leaderboard_router
from service.limits import RequestGuard
from service.models.router import router as models_router
from service.problems import Problem, install_handlers, problem_openapi
from service.settings import get_settings

VERSION = "0.1.0"

DESCRIPTION = """\
Gauntlet audits the adversarial robustness of trained classifiers.

Upload a model (`POST /v1/models`), optionally a dataset (`POST /v1/datasets`), submit an
audit (`POST /v1/jobs`), poll `GET /v1/jobs/{id}` and read `result`. Every request needs
`Authorization: Bearer <api key>`; errors are `application/problem+json`.
"""


def create_app() -> FastAPI:
    """Build the API application."""
    settings = get_settings()
    logs.configure(settings.log_format)
    problem_responses = {
        status: {"model": Problem, "content": {"application/problem+json": {}}}
        for status in (401, 404, 413, 422)
    }
    app = FastAPI(
        title="Gauntlet",
        version=VERSION,
        description=DESCRIPTION,
        responses=problem_responses,  # type: ignore[arg-type]
    )
    install_handlers(app)
    # One per process: every event stream and long poll waits on it (service/jobs/watcher.py).
    app.state.job_watcher = make_watcher(settings)
    for router in (
        models_router,
        datasets_router,
        jobs_router,
        leaderboard_router,
        architectures.router,
        presets.router,
    ):
        app.include_router(router)
    app.include_router(health.router)

    # Read per request, so a test (or an operator's reload) that changes a setting is obeyed.
    def upload_caps() -> dict[tuple[str, str], int]:
        return {
            ("POST", models_router.prefix): settings.max_model_request_bytes,
            ("POST", datasets_router.prefix): settings.max_dataset_request_bytes,
        }

    documentation = (
        app.openapi_url,
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    )
    public_paths = {"/healthz", "/readyz", "/metrics"} | {path for path in documentation if path}
    app.add_middleware(
        RequestGuard,
        upload_caps=upload_caps,
        json_cap=lambda: settings.max_json_bytes,
        max_json_depth=lambda: settings.max_json_depth,
        public_paths=public_paths,
    )
    app.add_middleware(health.MetricsMiddleware)
    app.add_middleware(logs.RequestIdMiddleware)
    _document_as_served(app, public_paths)
    return app


def _document_as_served(app: FastAPI, public_paths: set[str]) -> None:
    """The OpenAPI document says what the service does: problems as problem+json, and the
    bearer key on every operation but the public ones (and the report and the leaderboard, which
    also open with a signed link's token)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = problem_openapi(generate())
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key."},
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "GAUNTLET_METRICS_TOKEN, when the server sets one.",
                },
            }
            schema["security"] = [{"apiKey": []}]
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    if path == "/metrics":
                        operation["security"] = [{"metricsToken": []}, {}]
                    elif path in public_paths:
                        operation["security"] = []
                    elif operation.get("operationId", "").startswith(
                        ("job_report_", "leaderboard_v1_leaderboard_get")
                    ):
                        operation["security"] = [{"apiKey": []}, {}]
            for name, component in schema["components"].get("schemas", {}).items():
                if name.startswith("Body_") and component.get("type") == "object":
                    # An upload's form: a field it does not name is refused (too many fields).
                    component["additionalProperties"] = False
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
