"""POST /v1/jobs with kind "transfer": admission names the field and the reason; black-box
models (ai.onnx.ml graphs) are found at upload validation and are never sources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import dataset_row, job_row, model_row
from tests.sklearn_models import sklearn_onnx
from worker.execution import execute_job

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts


@pytest.fixture
def tenant(make_tenant):  # type: ignore[no-untyped-def]
    return make_tenant()


def transfer(sources: list[Any], targets: list[str], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kind": "transfer",
        "sources": sources,
        "targets": targets,
        "dataset_id": "builtin:digits",
        "limit": 60,
        "attack": {"name": "pgd", "norm": "linf", "eps": [0.05, 0.1], "steps": 5},
    }
    spec.update(overrides)
    return spec


def submit(client: TestClient, tenant, spec: dict[str, Any], key: str | None = None):  # type: ignore[no-untyped-def]
    extra = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/jobs", headers={**tenant.headers, **extra}, json=spec)


def field_errors(response) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    assert response.headers["content-type"].startswith("application/problem+json")
    return [(e["field"], e["reason"]) for e in response.json()["errors"]]


def test_a_transfer_is_admitted_counted_and_replayed(client, tenant) -> None:  # type: ignore[no-untyped-def]
    a, b = model_row(tenant.id, name="a"), model_row(tenant.id, name="b")
    box = model_row(tenant.id, name="lr", black_box=True)
    spec = transfer([a, [a, b]], [a, b, box])
    first = submit(client, tenant, spec, key="t-1")
    assert first.status_code == 202, first.text
    job = first.json()
    assert (job["kind"], job["status"]) == ("transfer", "queued")
    assert job["spec"]["sources"] == [a, [a, b]]
    assert job["engine_version"]
    replay = submit(client, tenant, spec, key="t-1")
    assert (replay.status_code, replay.json()["id"]) == (200, job["id"])
    other = submit(client, tenant, {**spec, "seed": 1}, key="t-1")
    assert other.status_code == 422
    assert field_errors(other)[0][0] == "Idempotency-Key"
    listed = client.get("/v1/jobs", headers=tenant.headers, params={"kind": "transfer"})
    assert job["id"] in [j["id"] for j in listed.json()["items"]]


def test_a_black_box_source_is_refused(client, tenant) -> None:  # type: ignore[no-untyped-def]
    a, box = model_row(tenant.id), model_row(tenant.id, black_box=True)
    for sources, where in (([box], "sources[0]"), ([a, [a, box]], "sources[1][1]")):
        refused = submit(client, tenant, transfer(sources, [a]))
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "black_box_source"
        ((field, reason),) = field_errors(refused)
        assert field == where
        assert "black box" in reason


def test_models_that_disagree_on_inputs_or_classes_are_refused(client, tenant) -> None:  # type: ignore[no-untyped-def]
    a, b = model_row(tenant.id), model_row(tenant.id)
    wide = model_row(tenant.id, input_shape=[3, 8, 8])
    fewer = model_row(tenant.id, num_classes=5)
    shifted = model_row(tenant.id, input_range=[-1.0, 1.0])
    cases = [
        (transfer([a, wide], [a]), "sources[1]", "takes inputs [3, 8, 8]"),
        (transfer([a], [a, b, wide]), "targets[2]", "takes inputs [3, 8, 8]"),
        (transfer([a], [b, fewer]), "targets[1]", "has 5 classes"),
        (transfer([[a, fewer]], [a]), "sources[0][1]", "has 5 classes"),
        (transfer([a], [shifted]), "targets[0]", "input_range"),
    ]
    for spec, where, needle in cases:
        refused = submit(client, tenant, spec)
        assert refused.status_code == 422, refused.text
        ((field, reason),) = field_errors(refused)
        assert field == where
        assert needle in reason


def test_unknown_and_other_tenants_models_are_refused_alike(client, tenant, make_tenant) -> None:  # type: ignore[no-untyped-def]
    a = model_row(tenant.id)
    theirs = model_row(make_tenant().id)
    bad = model_row(tenant.id, status="invalid", error={"code": "x", "message": "broken"})
    for spec, where in (
        (transfer([a], [a, "m_nope"]), "targets[1]"),
        (transfer([theirs], [a]), "sources[0]"),
    ):
        refused = submit(client, tenant, spec)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "not_found"
        assert field_errors(refused)[0][0] == where
    assert "m_nope" in submit(client, tenant, transfer([a], [a, "m_nope"])).json()["detail"]
    invalid = submit(client, tenant, transfer([a], [bad]))
    assert (invalid.status_code, invalid.json()["code"]) == (422, "model_invalid")


def test_the_spec_data_and_budget_are_checked(client, tenant, settings) -> None:  # type: ignore[no-untyped-def]
    a = model_row(tenant.id)
    cases = [
        (transfer([a, a], [a]), "sources", "repeats sources[0]"),
        (transfer([[a, a]], [a]), "sources", "twice"),
        (transfer([a], [a, a]), "targets", "repeats targets[0]"),
        (transfer([], [a]), "sources", "at least 1"),
        (transfer([a], [a], attack={"name": "square"}), "attack.name", "fgsm"),
        (transfer([a], [a], attack={"name": "fgsm", "steps": 3}), "attack", "one step"),
        (transfer([a], [a], attack={"eps": [0.1, 0.1]}), "attack.eps", "twice"),
        (transfer([a], [a], attack={"eps": 2.0}), "attack.eps", "beyond the input range"),
        (
            transfer([a], [a], dataset_id=dataset_row(tenant.id, example_shape=[1, 4, 4])),
            "dataset_id",
            "shape",
        ),  # fmt: skip
    ]
    for spec, where, needle in cases:
        refused = submit(client, tenant, spec)
        assert refused.status_code == 422, (spec, refused.text)
        fields = field_errors(refused)
        assert any(f.startswith(where) and needle in r for f, r in fields), (where, fields)


def test_the_gradient_budget_counts_every_ensemble_member(client, tenant) -> None:  # type: ignore[no-untyped-def]
    members = [model_row(tenant.id) for _ in range(8)]
    sources = [members[i:] + members[:i] for i in range(8)]  # 8 ensembles of 8
    eps = [0.01 * (i + 1) for i in range(16)]
    spec = transfer(sources, members[:1], split="train", limit=None)
    spec["attack"] = {"name": "pgd", "eps": eps, "steps": 1000}
    refused = submit(client, tenant, spec)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "budget_exceeded"
    # The digits' train split: 1,437 examples x 64 source models x 16 eps x 1,000 steps.
    assert f"{1437 * 64 * 16 * 1000:,}" in refused.json()["detail"]
    assert field_errors(refused)[0][0] == "attack"


def test_internal_transfer_kinds_cannot_be_submitted(client, tenant) -> None:  # type: ignore[no-untyped-def]
    a = model_row(tenant.id)
    for kind in ("transfer_craft", "transfer_score"):
        refused = submit(client, tenant, {"kind": kind, "transfer": transfer([a], [a])})
        assert refused.status_code == 422, refused.text


def test_an_sklearn_onnx_upload_validates_as_a_black_box(client, tenant) -> None:  # type: ignore[no-untyped-def]
    meta = {"name": "lr", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}
    uploaded = client.post(
        "/v1/models",
        headers=tenant.headers,
        files={"file": ("lr.onnx", sklearn_onnx("logistic_regression"))},
        data={"meta": json.dumps(meta)},
    )
    assert uploaded.status_code == 202, uploaded.text
    model = uploaded.json()
    assert model["black_box"] is False  # not known until validation has read the graph
    job_id = model["validation_job_id"]
    assert execute_job(job_id) == "succeeded", job_row(job_id).error  # type: ignore[union-attr]
    validated = client.get(f"/v1/models/{model['id']}", headers=tenant.headers).json()
    assert validated["status"] == "ready", validated
    assert validated["black_box"] is True
    cnn = model_row(tenant.id)
    refused = submit(client, tenant, transfer([validated["id"]], [cnn]))
    assert refused.json()["code"] == "black_box_source"
    assert submit(client, tenant, transfer([cnn], [validated["id"]])).status_code == 202


def test_black_box_is_only_for_onnx(client, tenant) -> None:  # type: ignore[no-untyped-def]
    meta = {
        "name": "x",
        "format": "safetensors",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "architecture": {"name": "small_cnn"},
        "black_box": True,
    }
    refused = client.post(
        "/v1/models",
        headers=tenant.headers,
        files={"file": ("x.safetensors", b"\x00")},
        data={"meta": json.dumps(meta)},
    )
    assert refused.status_code == 422
    assert "only an onnx model can be a black box" in refused.text


def test_openapi_documents_transfer(client) -> None:  # type: ignore[no-untyped-def]
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert {"TransferSpec", "TransferAttack", "TransferResult", "TransferCellResult"} <= set(
        schemas
    )
    assert "black_box" in schemas["ModelRead"]["properties"]
    assert "black_box" in schemas["ModelRead"]["required"]
