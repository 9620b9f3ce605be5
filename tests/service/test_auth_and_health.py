"""Authentication, problem documents, health and metrics."""

from __future__ import annotations

import json
import subprocess
import sys

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def test_missing_key_is_401_problem(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == "unauthenticated"
    assert body["status"] == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_key_is_401(client: TestClient, make_tenant) -> None:
    make_tenant()
    response = client.get("/v1/models", headers={"Authorization": "Bearer gk_nope"})
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown or revoked API key"


def test_wrong_scheme_is_401(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.get("/v1/models", headers={"Authorization": f"Basic {tenant.key}"})
    assert response.status_code == 401


def test_keys_are_stored_hashed(client: TestClient, make_tenant, settings) -> None:
    tenant = make_tenant()
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(text("SELECT key_hash FROM api_keys"))]
    engine.dispose()
    assert tenant.key not in stored
    assert all(len(value) == 64 for value in stored)


def test_unknown_route_is_problem(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


def test_health_ready_metrics(client: TestClient, make_tenant) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    tenant = make_tenant()
    client.get("/v1/models", headers=tenant.headers)
    metrics = client.get("/metrics").text
    assert 'gauntlet_http_requests_total{method="GET",route="/v1/models",status="200"}' in metrics
    assert 'gauntlet_jobs{status="queued"}' in metrics


def test_readyz_reports_unreachable_broker(settings, monkeypatch) -> None:
    from tests.conftest import clear_caches

    monkeypatch.setenv("GAUNTLET_BROKER_URL", "redis://127.0.0.1:1/0")
    clear_caches()
    from service.app import create_app

    with TestClient(create_app()) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "unreachable"


def test_service_imports_no_torch() -> None:
    """The API process stays small: importing the app must not import torch."""
    code = (
        "import sys, json; import service.main, service.admin, service.serve; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'adversarial', 'worker', 'sklearn', 'onnx'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(output) == []
