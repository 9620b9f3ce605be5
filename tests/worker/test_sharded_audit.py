"""A sharded audit through the job core: parts run as jobs of their own, the parent waits,
merges, and gives the numbers of the same audit unsharded."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.database import session_scope
from service.jobs import repository
from tests.factories import job_row, model_row
from tests.model_files import digits_onnx
from worker.execution import execute_job

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts

SPEC = {
    "kind": "audit",
    "dataset_id": "builtin:digits",
    "limit": 150,
    "seed": 2,
    "attacks": [
        {"name": "fgsm", "eps": [0.05, 0.1]},
        {"name": "pgd", "eps": [0.1], "steps": 5, "restarts": 2},
        {"name": "autoattack", "eps": [0.1], "steps": 5, "target_classes": 2, "queries": 40},
    ],
}
TIMING = {"seconds", "verification_seconds", "batch_size", "final_batch_size"}


def numbers(result: dict) -> dict:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    kept = {k: result[k] for k in ("clean_accuracy", "worst_case", "noise_baseline", "warnings")}
    kept["attacks"] = [
        {
            k: a[k]
            for k in (
                "name",
                "eps",
                "robust_accuracy",
                "success_rate",
                "per_class_accuracy",
                "confusion",
                "components",
            )
        }  # fmt: skip
        for a in result["attacks"]
    ]
    kept["large_eps_accuracy"] = result["large_eps_accuracy"]
    return strip(kept)  # type: ignore[return-value]


def test_a_sharded_audit_merges_to_the_unsharded_numbers(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    model_id = model_row(tenant.id, data=digits_onnx())
    with TestClient(create_app()) as client:
        whole = client.post("/v1/jobs", headers=tenant.headers, json={**SPEC, "model_id": model_id})
        sharded = client.post(
            "/v1/jobs", headers=tenant.headers, json={**SPEC, "model_id": model_id, "shards": 3}
        )
    assert whole.status_code == sharded.status_code == 202
    parent = sharded.json()
    assert parent["status"] == "running"  # waiting for its parts
    with session_scope() as session:
        parts = sorted(repository.children(session, parent["id"]), key=lambda p: p.spec["start"])
    assert [(p.kind, p.spec["start"], p.spec["stop"]) for p in parts] == [
        ("audit_shard", 0, 50),
        ("audit_shard", 50, 100),
        ("audit_shard", 100, 150),
    ]
    assert execute_job(parent["id"]) == "skipped"  # not claimable before its parts finish
    for part in parts:
        assert execute_job(part.id) == "succeeded", job_row(part.id).error
    merged = job_row(parent["id"])
    assert merged.status == "queued"  # woken by its last part
    assert execute_job(parent["id"]) == "succeeded", job_row(parent["id"]).error
    assert execute_job(whole.json()["id"]) == "succeeded"
    ours, theirs = job_row(parent["id"]).result, job_row(whole.json()["id"]).result
    assert ours["shards"] == 3
    assert ours["num_examples"] == theirs["num_examples"] == 150
    assert numbers(ours) == numbers(theirs)
    assert ours["gate"] == theirs["gate"]
