"""/v1/models: upload, metadata validation, tenant isolation, size caps."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.factories import model_row

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts

ONNX_META = {"name": "cnn", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}


def upload(
    client: TestClient,
    headers: dict[str, str],
    meta: object,
    data: bytes = b"\x08\x01",
    filename: str = "model.onnx",
):
    meta_text = meta if isinstance(meta, str) else json.dumps(meta)
    return client.post(
        "/v1/models", headers=headers, files={"file": (filename, data)}, data={"meta": meta_text}
    )


def test_upload_is_accepted_and_queues_validation(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, ONNX_META, b"onnx bytes")
    assert response.status_code == 202, response.text
    model = response.json()
    assert model["status"] == "validating"
    assert model["file_size"] == len(b"onnx bytes")
    job = client.get(f"/v1/jobs/{model['validation_job_id']}", headers=tenant.headers).json()
    assert job["kind"] == "validate_model"
    assert job["status"] == "queued"
    listed = client.get("/v1/models", headers=tenant.headers).json()
    assert [m["id"] for m in listed["items"]] == [model["id"]]


@pytest.mark.parametrize("model_format", ["torchscript", "pt2"])
def test_code_formats_are_accepted_for_validation_in_the_jail(
    client: TestClient, make_tenant, model_format: str
) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, {**ONNX_META, "format": model_format})
    assert response.status_code == 202, response.text
    assert response.json()["format"] == model_format
    assert response.json()["status"] == "validating"


@pytest.mark.parametrize(
    ("meta", "field", "needle"),
    [
        ("{not json", "meta", "not valid JSON"),
        ({**ONNX_META, "format": "pickle"}, "meta.format", "Input should be"),
        ({**ONNX_META, "input_shape": [8, 8]}, "meta.input_shape", "at least 3"),
        ({**ONNX_META, "num_classes": 1}, "meta.num_classes", "greater than or equal to 2"),
        ({**ONNX_META, "input_range": [1, 0]}, "meta", "lower < upper"),
        ({**ONNX_META, "format": "safetensors"}, "meta", "needs 'architecture'"),
        (
            {**ONNX_META, "format": "pt", "architecture": {"name": "resnet9000"}},
            "meta.architecture",
            "unknown architecture",
        ),
        (
            {**ONNX_META, "format": "pt", "architecture": {"name": "mlp", "kwargs": {"depth": 3}}},
            "meta.architecture",
            "takes no argument(s) depth",
        ),
        (
            {**ONNX_META, "normalization": {"mean": [0.5], "std": [0.0]}},
            "meta.normalization",
            "std must be positive",
        ),
        ({**ONNX_META, "extra": 1}, "meta.extra", "Extra inputs"),
        (
            {**ONNX_META, "format": "pt2", "architecture": {"name": "mlp"}},
            "meta",
            "carries its own architecture",
        ),
    ],
)
def test_bad_meta_is_422_naming_the_field(
    client: TestClient, make_tenant, meta, field, needle
) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, meta)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert any(e["field"] == field and needle in e["reason"] for e in errors), errors


def test_missing_file_is_422(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.post(
        "/v1/models", headers=tenant.headers, data={"meta": json.dumps(ONNX_META)}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "file"


def test_empty_file_is_422(client: TestClient, make_tenant) -> None:
    response = upload(client, make_tenant().headers, ONNX_META, b"")
    assert response.status_code == 422
    assert response.json()["code"] == "empty_file"


def test_model_over_cap_is_413(client: TestClient, make_tenant, monkeypatch, settings) -> None:
    monkeypatch.setattr(settings, "max_model_bytes", 1000)
    response = upload(client, make_tenant().headers, ONNX_META, b"x" * 5000)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_other_tenants_model_is_an_identical_404(client: TestClient, make_tenant) -> None:
    owner, intruder = make_tenant("owner"), make_tenant("intruder")
    model_id = model_row(owner.id)
    assert client.get(f"/v1/models/{model_id}", headers=owner.headers).status_code == 200
    theirs = client.get(f"/v1/models/{model_id}", headers=intruder.headers)
    missing = client.get("/v1/models/m_missing", headers=intruder.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "not_found"
    assert theirs.json()["detail"].replace(model_id, "X") == missing.json()["detail"].replace(
        "m_missing", "X"
    )
    assert client.delete(f"/v1/models/{model_id}", headers=intruder.headers).status_code == 404
    assert client.get("/v1/models", headers=intruder.headers).json()["items"] == []


def test_delete_hides_the_model(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    model_id = model_row(tenant.id)
    assert client.delete(f"/v1/models/{model_id}", headers=tenant.headers).status_code == 204
    assert client.get(f"/v1/models/{model_id}", headers=tenant.headers).status_code == 404


def test_list_paginates_with_a_cursor(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    ids = [model_row(tenant.id) for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/models", headers=tenant.headers, params=params).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_architectures_are_listed(client: TestClient, make_tenant) -> None:
    names = {
        a["name"] for a in client.get("/v1/architectures", headers=make_tenant().headers).json()
    }
    assert {"mlp", "small_cnn", "lenet5", "preact_resnet18"} <= names


def test_meta_nested_100000_levels_is_json_too_deep(client: TestClient, make_tenant) -> None:
    meta = '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = upload(client, make_tenant().headers, meta)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "json_too_deep"
    assert problem["errors"][0]["field"] == "meta"


@pytest.mark.parametrize(
    ("meta", "code"),
    [
        (json.dumps(ONNX_META)[:-1] + ', "input_range": [0, NaN]}', "json_non_finite"),
        (json.dumps(ONNX_META)[:-1] + ', "input_range": [0, 1e999]}', "json_non_finite"),
        (json.dumps({**ONNX_META, "name": "a\x00b"}), "invalid_characters"),
        (
            '{"name": "m", "format": "pt", "input_shape": [1, 8, 8], "num_classes": 10, '
            '"architecture": {"name": "mlp", "kwargs": {"hidden": "\\u0000"}}}',
            "invalid_characters",
        ),
    ],
)
def test_meta_the_database_cannot_store_is_422(
    client: TestClient, make_tenant, meta: str, code: str
) -> None:
    response = upload(client, make_tenant().headers, meta)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_input_shape_over_the_value_cap_is_422(client: TestClient, make_tenant, settings) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, {**ONNX_META, "input_shape": [64, 4096, 4096]})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors[0]["field"] == "meta.input_shape"
    assert "over the cap of 786432" in errors[0]["reason"]
    # The largest allowed input (3 x 512 x 512 by default) is accepted.
    largest = upload(client, tenant.headers, {**ONNX_META, "input_shape": [3, 512, 512]})
    assert largest.status_code == 202, largest.text


def test_num_classes_over_the_cap_is_422(
    client: TestClient, make_tenant, settings, monkeypatch
) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, {**ONNX_META, "num_classes": 100_001})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "meta.num_classes"
    monkeypatch.setattr(settings, "max_num_classes", 10)
    assert upload(client, tenant.headers, ONNX_META).status_code == 202
    refused = upload(client, tenant.headers, {**ONNX_META, "num_classes": 11})
    assert refused.status_code == 422
    assert "at most 10 classes" in refused.json()["errors"][0]["reason"]


def test_a_models_file_downloads_as_uploaded(client, make_tenant) -> None:  # type: ignore[no-untyped-def]
    owner, other = make_tenant(), make_tenant()
    payload = bytes(range(256)) * 4096  # 1 MiB: streamed in chunks
    model_id = model_row(owner.id, data=payload)
    response = client.get(f"/v1/models/{model_id}/file", headers=owner.headers)
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["content-type"] == "application/octet-stream"
    assert f'filename="{model_id}.onnx"' in response.headers["content-disposition"]
    hidden = client.get(f"/v1/models/{model_id}/file", headers=other.headers)
    assert hidden.status_code == 404
