"""The leaderboard page, its signed link, and the headers of every HTML page."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import update

from service.database import session_scope
from service.settings import Settings, get_settings
from service.tables import Job, JobStatus
from tests.factories import audit_spec, model_row, queued_job

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts


def succeed(
    settings: Settings,
    tenant_id: str,
    model_id: str,
    *,
    clean: float,
    worst: dict[float, float],
    warnings: tuple[str, ...] = (),
    finished: dt.datetime | None = None,
    **spec: Any,
) -> str:
    """A succeeded audit of ``model_id`` with the given numbers (no worker involved)."""
    job_id = queued_job(settings, tenant_id, audit_spec(model_id, **spec))
    result = {
        "clean_accuracy": clean,
        "worst_case": [
            {"norm": "linf", "eps": eps, "attacks": ["fgsm", "pgd"], "robust_accuracy": value}
            for eps, value in worst.items()
        ],
        "warnings": [{"code": code, "message": code} for code in warnings],
    }
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.SUCCEEDED,
                result=result,
                finished_at=finished or dt.datetime.now(dt.UTC),
            )
        )
    return job_id


def _rows(page: str) -> list[str]:
    return re.findall(r"<tr data-model='([^']+)'>", page)


def test_leaderboard_lists_every_version_with_its_latest_audit(
    client: TestClient, settings: Settings, make_tenant
) -> None:
    owner, other = make_tenant(), make_tenant()
    v1, v2, v3 = (model_row(owner.id, name="cnn", data=f"w{n}".encode()) for n in range(3))
    unaudited = model_row(owner.id, name="mlp")
    theirs = model_row(other.id, name="cnn")
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    succeed(settings, owner.id, v1, clean=0.5, worst={0.1: 0.05}, finished=earlier)
    latest_v1 = succeed(settings, owner.id, v1, clean=0.9, worst={0.1: 0.2, 0.2: 0.1})
    succeed(
        settings, owner.id, v2, clean=0.91, worst={0.1: 0.4}, warnings=("robust_rises_with_eps",)
    )
    succeed(settings, owner.id, v3, clean=0.92, worst={0.1: 0.6}, preset="quick", attacks=[])
    succeed(settings, other.id, theirs, clean=0.99, worst={0.3: 0.98})

    response = client.get("/v1/leaderboard", headers=owner.headers)
    assert response.status_code == 200, response.text
    page = response.text
    # Only the caller's models: by name, then version; the other team's never appear.
    assert _rows(page) == [v1, v2, v3, unaudited]
    assert theirs not in page
    assert "98.0%" not in page
    assert "ε=0.3" not in page
    # One worst-case column per eps present; the latest audit's numbers, not the older one's.
    assert "worst case linf ε=0.1" in page
    assert "worst case linf ε=0.2" in page
    row_v1 = page.split(f"<tr data-model='{v1}'>")[1].split("</tr>")[0]
    assert "90.0%" in row_v1
    assert "20.0%" in row_v1
    assert "10.0%" in row_v1
    assert "50.0%" not in row_v1
    assert latest_v1 in row_v1
    assert "custom" in row_v1
    row_v2 = page.split(f"<tr data-model='{v2}'>")[1].split("</tr>")[0]
    assert "robust_rises_with_eps" in row_v2
    assert "n/a" in row_v2
    row_v3 = page.split(f"<tr data-model='{v3}'>")[1].split("</tr>")[0]
    assert "quick" in row_v3
    assert "no succeeded audit" in page.split(f"<tr data-model='{unaudited}'>")[1]
    # The trend chart of "cnn": one point per version at eps 0.1, one at eps 0.2 (v1 only).
    trend = page.split("<section class='trend' data-name='cnn'>")[1].split("</section>")[0]
    assert trend.count("<circle") == 4
    assert "data-name='mlp'" not in page  # never audited: nothing to draw
    # No script, no external requests.
    assert "<script" not in page
    assert "<link" not in page
    assert "url(" not in page
    assert not re.search(r"src=['\"](?!data:)", page)

    # Each row links to its report through a signed link that opens without the key.
    href = re.search(r"href='([^']+)'", row_v1)
    assert href is not None
    report = client.get(href.group(1).replace("&amp;", "&"))
    assert report.status_code == 200, report.text
    assert latest_v1 in report.text


def test_leaderboard_link_opens_the_page_without_the_key(
    client: TestClient, settings: Settings, make_tenant
) -> None:
    owner, other = make_tenant(), make_tenant()
    mine = model_row(owner.id, name="cnn")
    theirs = model_row(other.id, name="cnn")
    response = client.post("/v1/leaderboard-link", headers=owner.headers)
    assert response.status_code == 200, response.text
    link = response.json()
    expires = dt.datetime.fromisoformat(link["expires_at"])
    lifetime = expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < lifetime <= dt.timedelta(days=7)
    page = client.get(link["url"])
    assert page.status_code == 200
    assert _rows(page.text) == [mine]
    # The token is for that tenant only: pointing it at another is refused.
    forged = link["url"].replace(owner.id, other.id)
    refused = client.get(forged)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "invalid_link"
    assert theirs not in refused.text
    assert client.get("/v1/leaderboard").status_code == 401
    assert client.post("/v1/leaderboard-link").status_code == 401


def test_expired_leaderboard_link_is_a_410_that_says_so(client: TestClient, make_tenant) -> None:
    from service.security import leaderboard_token

    tenant = make_tenant()
    expired = leaderboard_token(tenant.id, 1_000_000)
    response = client.get("/v1/leaderboard", params={"tenant": tenant.id, "token": expired})
    assert response.status_code == 410
    assert response.json()["code"] == "link_expired"
    assert "leaderboard-link" in response.json()["detail"]


def test_link_lifetime_is_a_setting(
    client: TestClient, make_tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAUNTLET_REPORT_LINK_SECONDS", "600")
    get_settings.cache_clear()
    tenant = make_tenant()
    job_id = queued_job(get_settings(), tenant.id, audit_spec(model_row(tenant.id)))
    for path in (f"/v1/jobs/{job_id}/report-link", "/v1/leaderboard-link"):
        link = client.post(path, headers=tenant.headers).json()
        lifetime = dt.datetime.fromisoformat(link["expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(minutes=9) < lifetime <= dt.timedelta(minutes=10), path


def test_rotating_the_pepper_keeps_links_valid_and_rotating_the_link_secret_ends_them(
    client: TestClient, settings: Settings, make_tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GAUNTLET_LINK_SIGNING_SECRET", "links-one")
    get_settings.cache_clear()
    tenant = make_tenant()
    job_id = queued_job(get_settings(), tenant.id, audit_spec(model_row(tenant.id)))
    report = client.post(f"/v1/jobs/{job_id}/report-link", headers=tenant.headers).json()["url"]
    board = client.post("/v1/leaderboard-link", headers=tenant.headers).json()["url"]

    monkeypatch.setenv("GAUNTLET_API_KEY_PEPPER", "a-new-pepper")
    get_settings.cache_clear()
    assert client.get(report).status_code == 200
    assert client.get(board).status_code == 200
    # The old key no longer matches its stored hash: the pepper did rotate.
    assert client.get("/v1/models", headers=tenant.headers).status_code == 401

    monkeypatch.setenv("GAUNTLET_LINK_SIGNING_SECRET", "links-two")
    get_settings.cache_clear()
    assert client.get(report).status_code == 404
    assert client.get(board).status_code == 403


def test_production_needs_its_own_link_secret() -> None:
    production = {
        "environment": "production",
        "database_url": "postgresql://x/y",
        "metrics_token": "m" * 32,
    }
    pepper = SecretStr("a-real-pepper")
    with pytest.raises(ValueError, match="LINK_SIGNING_SECRET must be set"):
        Settings(**production, api_key_pepper=pepper)
    with pytest.raises(ValueError, match="must differ from the pepper"):
        Settings(**production, api_key_pepper=pepper, link_signing_secret=pepper)
    Settings(**production, api_key_pepper=pepper, link_signing_secret=SecretStr("another"))
    # An empty value (``GAUNTLET_LINK_SIGNING_SECRET=`` in a compose file) is no secret.
    with pytest.raises(ValueError, match="LINK_SIGNING_SECRET must be set"):
        Settings(**production, api_key_pepper=pepper, link_signing_secret=SecretStr(""))
    assert Settings(link_signing_secret=SecretStr("")).link_signing_secret is None


@pytest.mark.parametrize("signed", [False, True])
def test_html_pages_send_a_strict_content_security_policy(
    client: TestClient, settings: Settings, make_tenant, signed: bool
) -> None:
    tenant = make_tenant()
    job_id = queued_job(settings, tenant.id, audit_spec(model_row(tenant.id)))
    if signed:
        urls = [
            client.post(f"/v1/jobs/{job_id}/report-link", headers=tenant.headers).json()["url"],
            client.post("/v1/leaderboard-link", headers=tenant.headers).json()["url"],
        ]
        responses = [client.get(url) for url in urls]
    else:
        responses = [
            client.get(path, headers=tenant.headers)
            for path in (f"/v1/jobs/{job_id}/report", "/v1/leaderboard")
        ]
    for response in responses:
        assert response.status_code == 200
        policy = {
            part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1]
            for part in response.headers["content-security-policy"].split(";")
        }
        assert policy["default-src"] == "'none'"
        assert policy["img-src"] == "data:"
        assert policy["style-src"] == "'unsafe-inline'"
        assert "script-src" not in policy  # falls back to 'none'
        assert response.headers["referrer-policy"] == "no-referrer"
