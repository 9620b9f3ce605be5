"""Training through the real service: a worker SIGKILLed mid-training, and the job resumes
from its last checkpoint on a new worker with the numbers of an uninterrupted run."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import LiveService

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

FINAL = ("succeeded", "failed", "cancelled")
TIMING = {"seconds", "validation_seconds"}

SPEC = {
    "kind": "train",
    "name": "digits-pgd",
    "architecture": {"name": "small_cnn", "kwargs": {"channels": [8, 16]}},
    "method": {"name": "pgd", "eps": 0.1, "steps": 3},
    "epochs": 6,
    "validation": {"fraction": 0.15, "pgd_steps": 3},
    "seed": 11,
}


def epochs_without_timing(job: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in job["result"]["epochs"]]


def test_a_worker_killed_mid_training_resumes_from_its_checkpoint(
    live_service: LiveService,
) -> None:
    with live_service.client() as client:
        job_id = client.post("/v1/jobs", json={**SPEC, "seed": 11}).json()["id"]

        def checkpointed(job: dict) -> bool:
            names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
            return job["status"] in FINAL or "checkpoint.bin" in names

        live_service.wait_for(f"/v1/jobs/{job_id}", checkpointed, timeout=240)
    running = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: True)
    assert running["status"] == "running", "training ended before its worker could be killed"
    live_service.kill(live_service.workers[0])
    live_service.start_worker()
    resumed = live_service.wait_for(
        f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL, timeout=300
    )
    assert resumed["status"] == "succeeded", resumed
    assert resumed["attempt"] == 2
    assert resumed["result"]["resumed_from_epoch"] >= 1

    # The same spec, uninterrupted (another name, so it is not an idempotent replay).
    with live_service.client() as client:
        whole_id = client.post("/v1/jobs", json={**SPEC, "name": "uninterrupted"}).json()["id"]
    whole = live_service.wait_for(f"/v1/jobs/{whole_id}", lambda j: j["status"] in FINAL, 300)
    assert whole["status"] == "succeeded", whole
    assert whole["attempt"] == 1
    assert epochs_without_timing(resumed) == epochs_without_timing(whole)
    assert [s["robust_accuracy"] for s in resumed["result"]["scores"]] == [
        s["robust_accuracy"] for s in whole["result"]["scores"]
    ]
    with live_service.client() as client:
        ours = client.get(f"/v1/models/{resumed['result']['model_id']}").json()
        theirs = client.get(f"/v1/models/{whole['result']['model_id']}").json()
        assert ours["file_sha256"] == theirs["file_sha256"]  # bit-identical weights
        assert ours["source_job_id"] == job_id
        download = client.get(f"/v1/models/{ours['id']}/file")
        assert download.status_code == 200
        assert len(download.content) == ours["file_size"]
