"""/v1/datasets: uploads are checked before they are stored."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.factories import deflate_bomb, npz_bytes

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts

RNG = np.random.default_rng(0)
GOOD_X = RNG.random((20, 1, 8, 8)).astype(np.float32)
GOOD_Y = RNG.integers(0, 10, 20)


def upload(client: TestClient, headers: dict[str, str], data: bytes, filename: str = "d.npz"):
    return client.post(
        "/v1/datasets", headers=headers, files={"file": (filename, data)}, data={"name": "mine"}
    )


def test_npz_upload_is_summarized(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = upload(client, tenant.headers, npz_bytes(x=GOOD_X, y=GOOD_Y))
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["num_examples"] == 20
    assert dataset["example_shape"] == [1, 8, 8]
    assert dataset["num_classes"] == int(GOOD_Y.max()) + 1
    assert dataset["splits"] == {"test": 20}
    fetched = client.get(f"/v1/datasets/{dataset['id']}", headers=tenant.headers).json()
    assert fetched["id"] == dataset["id"]


def test_safetensors_upload(client: TestClient, make_tenant) -> None:
    from safetensors.numpy import save

    data = save({"x": GOOD_X[:, 0], "y": GOOD_Y.astype(np.int64)})
    response = upload(client, make_tenant().headers, data, "d.safetensors")
    assert response.status_code == 201, response.text
    assert response.json()["example_shape"] == [1, 8, 8]


def test_list_includes_builtin_digits(client: TestClient, make_tenant) -> None:
    items = client.get("/v1/datasets", headers=make_tenant().headers).json()["items"]
    digits = next(d for d in items if d["id"] == "builtin:digits")
    assert digits["splits"] == {"train": 1437, "test": 360}


NAN_X = GOOD_X.copy()
NAN_X[3, 0, 2, 2] = np.nan
INF_X = GOOD_X.copy()
INF_X[0, 0, 0, 0] = np.inf


@pytest.mark.parametrize(
    ("arrays", "field", "needle"),
    [
        ({"x": NAN_X, "y": GOOD_Y}, "x", "NaN or infinite"),
        ({"x": INF_X, "y": GOOD_Y}, "x", "NaN or infinite"),
        ({"x": GOOD_X}, "y", "no array named 'y'"),
        ({"y": GOOD_Y}, "x", "no array named 'x'"),
        ({"x": GOOD_X[:, 0, 0], "y": GOOD_Y}, "x", "[N, C, H, W]"),
        ({"x": GOOD_X, "y": GOOD_Y[:5]}, "y", "N=20"),
        ({"x": GOOD_X, "y": GOOD_Y - 20}, "y", ">= 0"),
        ({"x": GOOD_X, "y": GOOD_Y + 0.5}, "y", "whole numbers"),
        ({"x": np.array(["a"] * 20), "y": GOOD_Y}, "x", "numeric"),
    ],
)
def test_bad_arrays_are_422(client: TestClient, make_tenant, arrays, field, needle) -> None:
    response = upload(client, make_tenant().headers, npz_bytes(**arrays))
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == field, error
    assert needle in error["reason"], error


def test_pickled_object_arrays_are_refused(client: TestClient, make_tenant) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([object()] * 3, dtype=object), y=np.zeros(3))
    response = upload(client, make_tenant().headers, buffer.getvalue())
    assert response.status_code == 422
    body = response.json()
    # Refused from the .npy header's dtype, before any of the pickled data is read.
    assert body["code"] == "dataset_dtype"
    assert body["errors"][0]["field"] == "x"
    assert "object" in body["errors"][0]["reason"]


def test_not_a_dataset_is_422(client: TestClient, make_tenant) -> None:
    response = upload(client, make_tenant().headers, b"hello world, not arrays", "d.bin")
    assert response.status_code == 422


def test_other_tenants_dataset_is_404(client: TestClient, make_tenant) -> None:
    owner, intruder = make_tenant(), make_tenant()
    dataset_id = upload(client, owner.headers, npz_bytes(x=GOOD_X, y=GOOD_Y)).json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}", headers=intruder.headers).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=intruder.headers).status_code == 404
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=owner.headers).status_code == 204
    assert client.get(f"/v1/datasets/{dataset_id}", headers=owner.headers).status_code == 404


@pytest.mark.parametrize(
    ("arrays", "field", "code"),
    [
        ({"x": GOOD_X, "y": np.full(20, 2**63 - 1)}, "y", "dataset_values"),
        ({"x": GOOD_X, "y": np.full(20, 2**31)}, "y", "dataset_values"),
        ({"x": GOOD_X, "y": np.full(20, 100_000)}, "y", "dataset_values"),
        ({"x": np.zeros((20, 0, 8, 8), np.float32), "y": GOOD_Y}, "x", "dataset_shape"),
        ({"x": np.zeros((0, 1, 8, 8), np.float32), "y": GOOD_Y[:0]}, "x", "dataset_shape"),
        ({"x": GOOD_X.astype(bool), "y": GOOD_Y}, "x", "dataset_dtype"),
        ({"x": GOOD_X, "y": GOOD_Y, "z": GOOD_Y}, "file", "dataset_entries"),
    ],
    ids=[
        "label-2^63-1",
        "label-2^31",
        "label-at-class-cap",
        "zero-size-x",
        "no-examples",
        "bool-x",
        "extra-entry",
    ],
)
def test_hostile_arrays_get_a_stable_code(
    client: TestClient, make_tenant, arrays, field, code
) -> None:
    response = upload(client, make_tenant().headers, npz_bytes(**arrays))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == code
    assert problem["errors"][0]["field"] == field


def test_the_largest_label_fits_the_database(
    client: TestClient, make_tenant, settings, monkeypatch
) -> None:
    """num_classes = 2^31 - 1 is the largest an Integer column (Postgres) holds."""
    monkeypatch.setattr(settings, "max_num_classes", 2**31 - 1)
    tenant = make_tenant()
    accepted = upload(client, tenant.headers, npz_bytes(x=GOOD_X, y=np.full(20, 2**31 - 2)))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["num_classes"] == 2**31 - 1
    refused = upload(client, tenant.headers, npz_bytes(x=GOOD_X, y=np.full(20, 2**31 - 1)))
    assert refused.status_code == 422


def test_a_deflate_bomb_is_413(client: TestClient, make_tenant) -> None:
    response = upload(client, make_tenant().headers, deflate_bomb())
    assert response.status_code == 413
    assert response.json()["code"] == "deflate_bomb"


def test_decoded_size_is_capped(client: TestClient, make_tenant, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "max_dataset_decoded_bytes", 4096)
    response = upload(client, make_tenant().headers, npz_bytes(x=GOOD_X, y=GOOD_Y))
    assert response.status_code == 413
    assert response.json()["code"] == "dataset_too_large"


def test_example_size_is_capped_like_a_model_input(
    client: TestClient, make_tenant, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "max_input_values", 63)
    response = upload(client, make_tenant().headers, npz_bytes(x=GOOD_X, y=GOOD_Y))
    assert response.status_code == 422
    assert response.json()["code"] == "dataset_shape"


def test_upload_over_the_file_cap_is_413(
    client: TestClient, make_tenant, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "max_dataset_bytes", 1000)
    response = upload(client, make_tenant().headers, npz_bytes(x=GOOD_X, y=GOOD_Y))
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_names_are_storable(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    data = npz_bytes(x=GOOD_X, y=GOOD_Y)
    refused = client.post(
        "/v1/datasets",
        headers=tenant.headers,
        files={"file": ("d.npz", data)},
        data={"name": "a\x00b"},
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_characters"
    long_name = "n" * 300 + ".npz"
    from_file = client.post(
        "/v1/datasets", headers=tenant.headers, files={"file": (long_name, data)}
    )
    assert from_file.status_code == 201, from_file.text
    assert from_file.json()["name"] == long_name[:200]
