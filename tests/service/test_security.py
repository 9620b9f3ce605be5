"""Report-link tokens: anything that is not a well-formed, valid token is the missing job's 404."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.security import report_token, report_token_valid
from tests.factories import audit_spec, model_row, queued_job

HEX64 = "ab" * 32
LATER = int(time.time()) + 3600

HOSTILE_TOKENS = [
    pytest.param(f"{LATER}.{'é' * 64}", id="non-ascii-signature"),
    pytest.param(f"{LATER}.é", id="short-non-ascii-signature"),
    pytest.param(f"{'²' * 10}.{HEX64}", id="superscript-digits-expiry"),
    pytest.param(f"{'١' * 10}.{HEX64}", id="arabic-indic-digits-expiry"),
    pytest.param(f"{'𝟗' * 10}.{HEX64}", id="mathematical-digits-expiry"),
    pytest.param(f"{LATER}.{HEX64[:-1]}", id="signature-too-short"),
    pytest.param(f"{LATER}.{HEX64}0", id="signature-too-long"),
    pytest.param(f"{LATER}.{HEX64.upper()}", id="signature-upper-case"),
    pytest.param(f"{'9' * 13}.{HEX64}", id="expiry-too-long"),
    pytest.param(f"+{LATER}.{HEX64}", id="signed-expiry"),
    pytest.param(f" {LATER}.{HEX64}", id="space-before-expiry"),
    pytest.param(f"{LATER}.{HEX64}\n", id="trailing-newline"),
    pytest.param("q83v3q==.Zm9vYmFy+/==", id="base64-garbage"),
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param(f"{LATER}", id="no-signature"),
]


@pytest.mark.parametrize("token", HOSTILE_TOKENS)
def test_hostile_report_token_is_the_missing_jobs_404(
    client: TestClient, settings, make_tenant, token: str
) -> None:
    tenant = make_tenant()
    job_id = queued_job(settings, tenant.id, audit_spec(model_row(tenant.id)))
    response = client.get(f"/v1/jobs/{job_id}/report", params={"token": token})
    missing = client.get("/v1/jobs/j_missing/report", params={"token": token})
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == missing.json()["code"] == "not_found"
    assert response.json()["detail"].replace(job_id, "X") == missing.json()["detail"].replace(
        "j_missing", "X"
    )


def test_nul_in_a_token_is_refused_alike_for_every_job(
    client: TestClient, settings, make_tenant
) -> None:
    """NUL is refused in every query (Postgres cannot compare it), before any lookup."""
    tenant = make_tenant()
    job_id = queued_job(settings, tenant.id, audit_spec(model_row(tenant.id)))
    response = client.get(f"/v1/jobs/{job_id}/report", params={"token": f"{LATER}.\x00"})
    missing = client.get("/v1/jobs/j_missing/report", params={"token": f"{LATER}.\x00"})
    assert response.status_code == missing.status_code == 422
    assert response.json() == missing.json()
    assert response.json()["code"] == "invalid_characters"


@pytest.mark.parametrize("token", [*HOSTILE_TOKENS, "\x00"])
def test_hostile_report_token_is_invalid_not_an_error(settings, token: str) -> None:
    assert report_token_valid(token, "t_1", "j_1", time.time()) is False


def test_a_real_token_still_opens_its_report(settings) -> None:
    token = report_token("t_1", "j_1", LATER)
    assert report_token_valid(token, "t_1", "j_1", time.time())
    assert not report_token_valid(token, "t_1", "j_2", time.time())
    assert not report_token_valid(token, "t_1", "j_1", LATER + 1)


def test_an_overlong_token_is_refused_alike_for_every_job(
    client: TestClient, settings, make_tenant
) -> None:
    """Past the query's 200 characters the token is a validation error, before any lookup."""
    tenant = make_tenant()
    job_id = queued_job(settings, tenant.id, audit_spec(model_row(tenant.id)))
    token = f"{LATER}." + "ab" * 500
    response = client.get(f"/v1/jobs/{job_id}/report", params={"token": token})
    missing = client.get("/v1/jobs/j_missing/report", params={"token": token})
    assert response.status_code == missing.status_code == 422
    assert response.json()["code"] == missing.json()["code"] == "validation_error"
