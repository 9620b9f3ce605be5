"""POST /v1/jobs with kind train: what admission refuses, and what it accepts."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import dataset_row, model_row

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


def submit(client: TestClient, tenant, spec: dict):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", headers=tenant.headers, json={"kind": "train", **spec})


SMALL = {"architecture": {"name": "small_cnn"}, "method": {"name": "free", "eps": 0.1}}


def test_a_train_job_is_queued(client, tenant) -> None:
    response = submit(client, tenant, {**SMALL, "epochs": 3})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["status"], job["dataset_id"]) == ("train", "queued", "builtin:digits")
    assert job["spec"]["method"] == {"name": "free", "eps": 0.1, "norm": "linf", "replays": 4,
                                     "step_size": None}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "field", "needle"),
    [
        ({"method": {"name": "pgd", "eps": 0.1}}, "body", "either 'architecture'"),
        (
            {**SMALL, "fine_tune": {"model_id": "m_x"}},
            "body",
            "either 'architecture'",
        ),
        ({**SMALL, "method": {"name": "fgsm", "eps": 2.0}}, "method.eps", "beyond the input"),
        ({**SMALL, "architecture": {"name": "resnet1000"}}, "architecture", "unknown architecture"),
        ({**SMALL, "audit": {"kind": "audit"}}, "body", "leave out 'kind'"),
        ({**SMALL, "audit": {"attacks": [{"name": "nope"}]}}, "attacks", "does not match"),
        ({**SMALL, "method": {"name": "dropout"}}, "method", "does not match"),
    ],
)  # fmt: skip
def test_what_training_admission_refuses(client, tenant, spec, field, needle) -> None:
    response = submit(client, tenant, spec)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"].startswith(field) and needle in e["reason"] for e in errors), errors


def test_fine_tuning_needs_a_ready_model_of_a_writable_format(client, tenant) -> None:
    missing = submit(client, tenant, {"fine_tune": {"model_id": "m_missing"}})
    assert missing.status_code == 404
    scripted = model_row(tenant.id, format="torchscript")
    refused = submit(client, tenant, {"fine_tune": {"model_id": scripted}})
    assert refused.status_code == 422
    assert "cannot be fine-tuned" in refused.json()["detail"]
    onnx = model_row(tenant.id)
    small = dataset_row(tenant.id, example_shape=[3, 32, 32])
    mismatch = submit(client, tenant, {"fine_tune": {"model_id": onnx}, "dataset_id": small})
    assert mismatch.status_code == 422
    assert "the model expects [1, 8, 8]" in mismatch.json()["detail"]
    accepted = submit(client, tenant, {"fine_tune": {"model_id": onnx, "layers": "last"}})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["model_id"] == onnx


def test_the_training_budget_is_checked_with_its_figures(client, tenant) -> None:
    big = dataset_row(tenant.id, num_examples=100_000)
    spec = {**SMALL, "dataset_id": big, "epochs": 1000, "method": {"name": "pgd", "eps": 0.1,
            "steps": 100}}  # fmt: skip
    response = submit(client, tenant, spec)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "budget_exceeded"
    assert "gradient computations" in body["detail"]
    assert body["errors"][0]["field"] == "epochs"
