"""Admission that refuses what the engine would refuse, budgets, and verdicts that do not
outlive their engine: idempotency across engine versions and the idempotency window."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.database import session_scope
from service.jobs import service as jobs_service
from service.tables import Job, JobStatus
from tests.factories import audit_spec, dataset_row, model_row

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


@pytest.fixture
def model_id(tenant) -> str:
    return model_row(tenant.id)


def submit(client: TestClient, tenant, spec: dict, key: str | None = None):
    extra = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/jobs", headers={**tenant.headers, **extra}, json=spec)


def reason(response) -> str:  # type: ignore[no-untyped-def]
    body = response.json()
    return " ".join([body["detail"], *(e["reason"] for e in body.get("errors") or [])])


def test_a_gate_without_validity_checks_needs_allow_unchecked(client, tenant, model_id) -> None:
    gate = {"min_clean_accuracy": 0.5}
    refused = submit(client, tenant, audit_spec(model_id, checks=False, gate=gate))
    assert refused.status_code == 422
    assert "allow_unchecked" in reason(refused)
    accepted = submit(
        client, tenant, audit_spec(model_id, checks=False, gate={**gate, "allow_unchecked": True})
    )
    assert accepted.status_code == 202, accepted.text
    # Without a gate there is no verdict to protect: checks may be off.
    assert submit(client, tenant, audit_spec(model_id, checks=False)).status_code == 202


def test_waivers_name_known_warnings(client, tenant, model_id) -> None:
    gate = {"allow_warnings": ["randomized_model"]}
    assert submit(client, tenant, audit_spec(model_id, gate=gate)).status_code == 202
    unknown = submit(client, tenant, audit_spec(model_id, gate={"allow_warnings": ["meh"]}))
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "gate.allow_warnings[0]"


@pytest.mark.parametrize(
    ("attacks", "num_classes", "needle"),
    [
        ([{"name": "rfgsm", "eps": [0.05, 0.1], "alpha": 0.08}], 10, "alpha 0.08 exceeds eps 0.05"),
        ([{"name": "apgd-t", "eps": [0.1], "target_classes": 10}], 10, "target_classes 10"),
        ([{"name": "apgd-t", "eps": [0.1]}], 2, "at least 3 classes"),
        ([{"name": "fgsm", "eps": [0.1], "target": 5}], 3, "target class 5 does not exist"),
    ],
)
def test_the_spec_refuses_what_the_engine_would(
    client, tenant, attacks, num_classes, needle
) -> None:
    model = model_row(tenant.id, num_classes=num_classes)
    data = dataset_row(tenant.id, num_classes=2)
    response = submit(client, tenant, audit_spec(model, dataset_id=data, attacks=attacks))
    assert response.status_code == 422, response.text
    assert needle in reason(response)
    assert response.json()["errors"][0]["field"] == "attacks[0]"


def test_the_autoattack_ensemble_adapts_to_two_classes(client, tenant) -> None:
    # The ensemble leaves APGD-T out below three classes (it cannot work there): accepted.
    model = model_row(tenant.id, num_classes=2)
    data = dataset_row(tenant.id, num_classes=2)
    spec = audit_spec(model, dataset_id=data, attacks=[{"name": "autoattack", "eps": [0.1]}])
    assert submit(client, tenant, spec).status_code == 202


def test_the_gradient_budget_is_checked_with_its_figures(client, tenant, model_id) -> None:
    heavy = [
        {"name": "pgd", "eps": [0.01 * (i + 1) for i in range(32)], "steps": 10_000,
         "restarts": 100, "step_size": 0.01 + i / 1000}
        for i in range(32)
    ]  # fmt: skip
    response = submit(client, tenant, audit_spec(model_id, attacks=heavy))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "budget_exceeded"
    # 360 examples x 32 attacks x 32 eps x 10,000 steps x 100 restarts, plus the checks
    # (256 gradients of the model checks, PGD-20 on 100 examples at the large eps).
    assert f"{360 * 32 * 32 * 10_000 * 100 + 256 + 2000:,}" in body["detail"]
    assert "1,000,000,000" in body["detail"]


def test_an_omitted_limit_is_no_way_around_the_example_cap(
    client, tenant, model_id, monkeypatch
) -> None:
    big = dataset_row(tenant.id, num_examples=4_190_000)
    response = submit(client, tenant, audit_spec(model_id, dataset_id=big))
    assert response.status_code == 422
    assert "4190000 examples" in reason(response)
    assert response.json()["errors"][0]["field"] == "limit"
    assert (
        submit(client, tenant, audit_spec(model_id, dataset_id=big, limit=100)).status_code == 202
    )


def test_the_result_size_is_bounded(client, tenant) -> None:
    model = model_row(tenant.id, num_classes=100)
    eps = [0.001 * (i + 1) for i in range(32)]
    attacks = [{"name": "fgsm", "eps": eps, "target": i} for i in range(32)]
    response = submit(client, tenant, audit_spec(model, attacks=attacks))
    assert response.status_code == 422
    assert "per-class numbers" in reason(response)


def test_active_jobs_per_tenant_are_capped_with_429(
    client, tenant, model_id, settings, make_tenant
) -> None:
    cap = settings.max_active_jobs_per_tenant
    for index in range(cap):
        assert submit(client, tenant, audit_spec(model_id, seed=index)).status_code == 202
    response = submit(client, tenant, audit_spec(model_id, seed=cap))
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_active_jobs"
    assert int(response.headers["Retry-After"]) > 0
    # Another tenant is not affected; a finished job frees a slot.
    other = make_tenant()
    assert submit(client, other, audit_spec(model_row(other.id))).status_code == 202
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.tenant_id == tenant.id).values(status=JobStatus.SUCCEEDED)
        )
    assert submit(client, tenant, audit_spec(model_id, seed=cap)).status_code == 202


def test_a_replay_after_an_engine_change_audits_afresh(
    client, tenant, model_id, monkeypatch
) -> None:
    spec = audit_spec(model_id)
    first = submit(client, tenant, spec, key="ci-run-1")
    assert first.status_code == 202
    replay = submit(client, tenant, spec, key="ci-run-1")
    assert (replay.status_code, replay.json()["id"]) == (200, first.json()["id"])

    monkeypatch.setattr(jobs_service, "engine_version", lambda: "9.9.9+upgraded")
    upgraded = submit(client, tenant, spec, key="ci-run-1")
    assert upgraded.status_code == 202, upgraded.text
    assert upgraded.json()["id"] != first.json()["id"]
    # The new job holds the key now; the old one still exists, without it.
    again = submit(client, tenant, spec, key="ci-run-1")
    assert (again.status_code, again.json()["id"]) == (200, upgraded.json()["id"])
    old = client.get(f"/v1/jobs/{first.json()['id']}", headers=tenant.headers)
    assert old.status_code == 200
    # Another body under the same key is still refused, whatever the engine.
    other = submit(client, tenant, audit_spec(model_id, seed=7), key="ci-run-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_idempotency_keys_expire(client, tenant, model_id, settings) -> None:
    spec = audit_spec(model_id)
    first = submit(client, tenant, spec, key="nightly").json()
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == first["id"])
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=25))
        )
    later = submit(client, tenant, spec, key="nightly")
    assert later.status_code == 202
    assert later.json()["id"] != first["id"]


def test_presets_and_version_come_from_the_server(client, tenant) -> None:
    presets = client.get("/v1/presets", headers=tenant.headers).json()
    assert presets["default"] == "autoattack"
    assert {p["name"]: p["strength"] for p in presets["items"]} == {
        "quick": "weak",
        "standard": "standard",
        "autoattack": "strong",
        "corruptions": "none",
    }
    assert presets["default_eps"] == {"linf": [8 / 255], "l2": [0.5]}
    gating = {w["code"] for w in presets["warnings"] if w["fails_gate"]}
    assert {"zero_gradients", "not_broken_at_large_eps", "randomized_model"} <= gating
    version = client.get("/v1/version", headers=tenant.headers).json()
    assert version["engine_version"] == presets["engine_version"]
    assert version["engine_version"].startswith(version["version"] + "+")


def test_internal_jobs_cannot_be_cancelled(client, tenant) -> None:
    # A model's validation ends on its own: cancelling it would strand the model.
    upload = client.post(
        "/v1/models",
        headers=tenant.headers,
        files={"file": ("m.onnx", b"bytes")},
        data={"meta": '{"name": "m", "format": "onnx", "input_shape": [1, 8, 8], '
              '"num_classes": 10}'},
    ).json()  # fmt: skip
    response = client.post(f"/v1/jobs/{upload['validation_job_id']}/cancel", headers=tenant.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "job_not_cancellable"
    model = client.get(f"/v1/models/{upload['id']}", headers=tenant.headers).json()
    assert model["status"] == "validating"  # still on its way to ready or invalid
