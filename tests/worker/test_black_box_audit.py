"""An audit of a black-box model (a scikit-learn graph in onnxruntime) runs in the jail with
score-based attacks only, and its result says so."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.factories import job_row, model_row
from tests.sklearn_models import sklearn_onnx
from worker.execution import execute_job

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts


def test_a_black_box_audit_runs_square_and_notes_it(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    box = model_row(tenant.id, data=sklearn_onnx("logistic_regression"), black_box=True)
    spec = {
        "kind": "audit",
        "model_id": box,
        "limit": 40,
        "attacks": [{"name": "square", "eps": [0.1, 0.3], "queries": 60}],
    }
    with TestClient(create_app()) as client:
        response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert execute_job(job_id) == "succeeded", job_row(job_id).error  # type: ignore[union-attr]
    result = job_row(job_id).result  # type: ignore[union-attr]
    assert [(a["name"], a["eps"]) for a in result["attacks"]] == [("square", 0.1), ("square", 0.3)]
    assert result["clean_accuracy"] > 0.8
    assert result["attacks"][1]["robust_accuracy"] < result["clean_accuracy"]
    assert "black_box_model" in {note["code"] for note in result["notes"]}
    assert result["large_eps_accuracy"] is None  # PGD needs gradients: skipped
    codes = {warning["code"] for warning in result["warnings"]}
    assert not codes & {"zero_gradients", "probability_outputs", "nan_gradients"}
