"""Operations: /metrics (its token, the job histograms and counters), 405s, odd bodies, and
the OpenAPI document's problem responses."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sys

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service import logs, metrics
from service.admin import openapi_yaml
from service.app import create_app
from service.database import session_scope, utcnow
from service.jobs import repository
from service.settings import Settings
from service.tables import JobStatus
from tests.conftest import clear_caches
from tests.factories import audit_spec, model_row, queued_job
from tests.worker.test_reconciler import running_job
from worker.jail import errors as jail_errors
from worker.reconciler import reconcile_once

PROBLEM = "application/problem+json"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, frozenset(labels.items())))


def finished_job(settings: Settings, tenant_id: str, *, ran: float, waited: float, **values) -> str:
    """A job that waited ``waited`` s in the queue and ran for ``ran`` s."""
    job_id = queued_job(settings, tenant_id, audit_spec(model_row(tenant_id)))
    finished = utcnow()
    started = finished - dt.timedelta(seconds=ran)
    with session_scope() as session:
        job = repository.get_any(session, job_id)
        job.enqueued_at = started - dt.timedelta(seconds=waited)
        job.started_at = started
        job.finished_at = finished
        job.status = values.pop("status", JobStatus.SUCCEEDED)
        for name, field_value in values.items():
            setattr(job, name, field_value)
    return job_id


@pytest.fixture
def metrics_token(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    token = "metrics-secret-0123456789"
    monkeypatch.setenv("GAUNTLET_METRICS_TOKEN", token)
    clear_caches()
    return token


def test_metrics_need_the_token_when_one_is_set(metrics_token: str, make_tenant) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == PROBLEM
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert "gauntlet_jobs" not in anonymous.text
        wrong = client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}x"})
        assert wrong.status_code == 401
        # A tenant's API key is not the metrics token.
        assert client.get("/metrics", headers=make_tenant().headers).status_code == 401
        right = client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
        assert right.status_code == 200
        assert right.headers["content-type"].startswith("text/plain")
        assert 'gauntlet_jobs{status="queued"}' in right.text


def test_metrics_are_open_without_a_token(client: TestClient, settings: Settings) -> None:
    assert settings.metrics_token is None
    assert client.get("/metrics").status_code == 200


def test_production_refuses_open_metrics() -> None:
    production = {
        "environment": "production",
        "api_key_pepper": "a-real-pepper-0123456789abcdef",
        "database_url": "postgresql+psycopg://gauntlet@db/gauntlet",
        "link_signing_secret": "another-real-secret",
    }
    with pytest.raises(ValidationError, match="GAUNTLET_METRICS_TOKEN"):
        Settings(**production)
    assert Settings(**production, metrics_token="t" * 32).metrics_token is not None
    # An empty value (``GAUNTLET_METRICS_TOKEN=`` in a compose file) is no token.
    assert Settings(metrics_token="").metrics_token is None


def test_a_finished_job_is_in_the_duration_and_queue_wait_histograms(
    client: TestClient, settings: Settings, make_tenant
) -> None:
    tenant = make_tenant()
    finished_job(settings, tenant.id, ran=7.0, waited=2.0)
    finished_job(settings, tenant.id, ran=100.0, waited=0.2, status=JobStatus.FAILED)
    page = samples(client.get("/metrics").text)

    succeeded = {"kind": "audit", "status": "succeeded"}
    duration = "gauntlet_job_duration_seconds"
    assert value(page, f"{duration}_bucket", **succeeded, le="5.0") == 0
    assert value(page, f"{duration}_bucket", **succeeded, le="15.0") == 1
    assert value(page, f"{duration}_bucket", **succeeded, le="+Inf") == 1
    assert value(page, f"{duration}_count", **succeeded) == 1
    assert value(page, f"{duration}_sum", **succeeded) == pytest.approx(7.0, abs=0.01)
    failed = {"kind": "audit", "status": "failed"}
    assert value(page, f"{duration}_bucket", **failed, le="60.0") == 0
    assert value(page, f"{duration}_bucket", **failed, le="120.0") == 1

    wait = "gauntlet_job_queue_wait_seconds"
    assert value(page, f"{wait}_bucket", **succeeded, le="1.0") == 0
    assert value(page, f"{wait}_bucket", **succeeded, le="2.5") == 1
    assert value(page, f"{wait}_sum", **succeeded) == pytest.approx(2.0, abs=0.01)
    assert value(page, f"{wait}_bucket", **failed, le="0.5") == 1


def test_jail_failures_are_counted_by_kind_and_verdict(
    client: TestClient, settings: Settings, make_tenant
) -> None:
    tenant = make_tenant()
    for code in ("sandbox_violation", "sandbox_violation", "resource_limit", "time_limit"):
        finished_job(
            settings,
            tenant.id,
            ran=1.0,
            waited=0.1,
            status=JobStatus.FAILED,
            error={"code": code, "message": "..."},
        )
    page = samples(client.get("/metrics").text)
    name = "gauntlet_jail_failures_total"
    assert value(page, name, kind="audit", code="sandbox_violation") == 2
    assert value(page, name, kind="audit", code="resource_limit") == 1
    assert value(page, name, kind="audit", code="time_limit") is None  # not the jail's


def test_jail_failure_codes_are_the_jails_own() -> None:
    codes = {
        jail_errors.RESOURCE_LIMIT,
        jail_errors.SANDBOX_VIOLATION,
        jail_errors.MODEL_CRASHED,
        jail_errors.SANDBOX_UNAVAILABLE,
    }
    assert set(metrics.JAIL_FAILURE_CODES) == codes


def test_lease_expiries_and_reconciler_actions_are_counted_once(
    client: TestClient, settings: Settings, make_tenant
) -> None:
    tenant = make_tenant()
    running_job(settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=1)
    running_job(settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=3)
    counts = reconcile_once(settings)
    assert counts["requeued"] == 1
    assert counts["failed"] == 1
    reconcile_once(settings)  # nothing expired any more: nothing more counted
    page = samples(client.get("/metrics").text)
    assert value(page, "gauntlet_lease_expiries_total", kind="audit") == 2
    actions = "gauntlet_reconciler_actions_total"
    assert value(page, actions, action="requeued", kind="audit") == 1
    assert value(page, actions, action="failed", kind="audit") == 1
    assert value(page, actions, action="resent", kind="") == counts["resent"]


def test_a_405_allows_every_method_of_the_path(client: TestClient, make_tenant) -> None:
    headers = make_tenant().headers
    for path, methods in (
        ("/v1/datasets", "GET, POST"),
        ("/v1/datasets/builtin:digits", "GET, DELETE"),
        ("/v1/jobs/j_x/cancel", "POST"),
        ("/metrics", "GET"),
    ):
        response = client.request("PUT", path, headers=headers)
        assert response.status_code == 405, path
        assert response.headers["allow"] == methods, path
        assert response.json()["code"] == "method_not_allowed"


def test_a_json_body_that_is_not_utf8_is_a_422_naming_the_body(
    client: TestClient, make_tenant
) -> None:
    response = client.post(
        "/v1/jobs",
        content=b'{"kind": "\xff"}',
        headers={**make_tenant().headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_json"
    assert body["errors"][0]["field"] == "body"


def test_problems_are_documented_as_problem_json_only() -> None:
    document = yaml.safe_load(openapi_yaml())
    problem_responses = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                readiness = path == "/readyz" and status == "503"  # its own JSON body
                if status.startswith(("4", "5")) and "content" in response and not readiness:
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
                    problem_responses += 1
    assert problem_responses > 50
    paths = document["paths"]
    assert "409" in paths["/v1/datasets/{dataset_id}"]["delete"]["responses"]
    assert "409" in paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    artifact = paths["/v1/jobs/{job_id}/artifacts/{name}"]["get"]["responses"]["200"]
    assert "application/json" not in artifact["content"]


def test_a_request_id_is_kept_when_plain_and_made_otherwise(client: TestClient) -> None:
    kept = client.get("/healthz", headers={"X-Request-ID": "ci-run-42.step:3"})
    assert kept.headers["x-request-id"] == "ci-run-42.step:3"
    made = client.get("/healthz", headers={"X-Request-ID": "x" * 200})
    assert len(made.headers["x-request-id"]) == 16
    assert made.headers["x-request-id"] != client.get("/healthz").headers["x-request-id"]


def test_json_log_lines_carry_the_job_id_and_the_traceback() -> None:
    handler = logging.StreamHandler(io.StringIO())
    logs.install([handler], "json")
    record = logging.LogRecord(
        "worker.execution", logging.ERROR, __file__, 1, "boom %s", ("x",), None
    )
    token = logs.job_id.set("j_0123abcd")
    try:
        try:
            raise RuntimeError("inner")
        except RuntimeError:
            record.exc_info = sys.exc_info()
        assert handler.filter(record)
        entry = json.loads(handler.format(record))
    finally:
        logs.job_id.reset(token)
    assert entry["job_id"] == "j_0123abcd"
    assert entry["message"] == "boom x"
    assert entry["level"] == "ERROR"
    assert "RuntimeError: inner" in entry["exception"]
    assert "request_id" not in entry


def test_celery_task_lines_name_the_job_of_their_task() -> None:
    record = logging.LogRecord(
        "celery.worker.strategy",
        logging.INFO,
        __file__,
        1,
        "Task %(name)s[%(id)s] received",
        ({"name": "jobs.run", "id": "c0ffee", "args": "('j_00ff',)", "kwargs": "{}"},),
        None,
    )
    assert logs.ContextFilter().filter(record)
    assert record.job_id == "j_00ff"
