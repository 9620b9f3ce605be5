"""End to end: HTTP to a real API server, jobs run by a real Celery worker process."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import torch

from adversarial.datasets import load_builtin
from adversarial.evaluation import AttackConfig, evaluate
from adversarial.models.loading import ModelSpec, load_model
from tests.e2e.conftest import LiveService
from tests.factories import npz_bytes
from tests.model_files import digits_onnx, malicious_pt, meta

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

FINAL = ("succeeded", "failed", "cancelled")


def upload_model(service: LiveService, data: bytes, model_meta: dict, filename: str) -> dict:
    with service.client() as client:
        response = client.post(
            "/v1/models", files={"file": (filename, data)}, data={"meta": json.dumps(model_meta)}
        )
    assert response.status_code == 202, response.text
    return service.wait_for(
        f"/v1/models/{response.json()['id']}", lambda m: m["status"] != "validating"
    )


def test_audit_over_http(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    assert model["status"] == "ready", model

    # The user's own copy of the digits test split, uploaded as .npz.
    x, y = load_builtin("digits", "test")
    with live_service.client() as client:
        dataset = client.post(
            "/v1/datasets",
            files={"file": ("digits.npz", npz_bytes(x=x.numpy(), y=y.numpy()))},
            data={"name": "digits-test"},
        ).json()
        spec = {
            "kind": "audit",
            "model_id": model["id"],
            "dataset_id": dataset["id"],
            "attacks": [
                {"name": "fgsm", "eps": [0.05, 0.1]},
                {
                    "name": "pgd",
                    "eps": [0.1],
                    "steps": 10,
                    "step_size": 0.02,
                    "random_start": False,
                },
            ],
            "gate": {
                "min_clean_accuracy": 0.9,
                "min_robust_accuracy": [{"attack": "pgd", "eps": 0.1, "value": 0.01}],
            },
        }
        response = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "e2e-1"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

    job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["num_examples"] == 360
    assert [(a["name"], a["eps"]) for a in result["attacks"]] == [
        ("fgsm", 0.05),
        ("fgsm", 0.1),
        ("pgd", 0.1),
    ]
    assert result["attacks"][2]["robust_accuracy"] <= result["attacks"][1]["robust_accuracy"]
    assert result["gate"]["passed"] is True
    assert job["attempt"] == 1
    assert job["progress"]["fraction"] == 1.0

    # The numbers are the engine's, on the same model and data.
    engine_model = load_model(digits_onnx(), ModelSpec("onnx", (1, 8, 8), 10))
    direct = evaluate(
        engine_model,
        x,
        y,
        [
            AttackConfig("fgsm", "linf", 0.05),
            AttackConfig("fgsm", "linf", 0.1),
            AttackConfig(
                "pgd", "linf", 0.1, {"steps": 10, "step_size": 0.02, "random_start": False}
            ),
        ],
        num_classes=10,
    )
    assert result["clean_accuracy"] == direct.clean_accuracy
    assert [a["robust_accuracy"] for a in result["attacks"]] == [
        o.robust_accuracy for o in direct.outcomes
    ]

    with live_service.client() as client:
        report = client.get(f"/v1/jobs/{job_id}/report")
        assert report.status_code == 200
        assert "PASSED" in report.text
        replay = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "e2e-1"})
        assert replay.status_code == 200
        assert replay.json()["id"] == job_id


def test_worker_killed_mid_audit_finishes_once_on_a_new_worker(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    spec = {
        "kind": "audit",
        "model_id": model["id"],
        "limit": 200,
        "seed": 5,
        "attacks": [
            {"name": "pgd", "eps": [0.03], "steps": 1500, "step_size": 0.002, "early_stop": False}
        ],
    }
    with live_service.client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
    running = live_service.wait_for(
        f"/v1/jobs/{job_id}",
        lambda j: (
            j["status"] in FINAL or (j["status"] == "running" and j["progress"]["fraction"] > 0.2)
        ),
    )
    assert running["status"] == "running", "the audit finished before it could be killed"

    first_worker = live_service.workers[0]
    live_service.kill(first_worker)  # the whole process group: main process and pool child
    killed_at = time.monotonic()
    live_service.start_worker()

    job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 2  # the killed run, then exactly one more
    assert time.monotonic() - killed_at < 240

    # One result, and it is the right one: what the engine computes for this spec and seed.
    from worker.loading import subset

    x, y = load_builtin("digits", "test")
    x, y, indices = subset(x, y, 200, 5)
    direct = evaluate(
        load_model(digits_onnx(), ModelSpec("onnx", (1, 8, 8), 10)),
        x,
        y,
        [
            AttackConfig(
                "pgd", "linf", 0.03, {"steps": 1500, "step_size": 0.002, "early_stop": False}
            )
        ],
        num_classes=10,
        seed=5,
        example_ids=torch.from_numpy(indices),
    )
    assert job["result"]["attacks"][0]["robust_accuracy"] == direct.outcomes[0].robust_accuracy


def test_malicious_pickle_upload_never_runs(live_service: LiveService, tmp_path) -> None:
    canary = tmp_path / "canary-written-by-the-payload"
    model = upload_model(
        live_service, malicious_pt(canary), meta("pt", architecture={"name": "mlp"}), "evil.pt"
    )
    assert model["status"] == "invalid"
    assert model["error"]["code"] == "pickle_refused"
    assert not canary.exists()


def test_invalid_onnx_output_is_reported(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx", num_classes=3), "x.onnx")
    assert model["status"] == "invalid"
    assert model["error"]["code"] == "bad_output_shape"


def _raw_request(url: str, head: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode())
    return sock


def test_oversized_bodies_are_refused_before_they_arrive(live_service: LiveService) -> None:
    auth = live_service.tenant.headers["Authorization"]
    # A declared 10 GB body: answered at once, before any of it is sent.
    sock = _raw_request(
        live_service.url,
        f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 10000000000\r\n\r\n",
    )
    answer = sock.recv(65536).decode(errors="replace")
    sock.close()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "application/problem+json" in answer

    # A chunked body with no length: refused once it passes the 1 MiB JSON cap, long
    # before the 64 MiB the client would send.
    sock = _raw_request(
        live_service.url,
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    chunk = b"x" * 65536
    sent = 0
    sock.settimeout(0.05)
    answer = b""
    while sent < 64 * 2**20:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        try:
            answer = sock.recv(65536)
            if answer:
                break
        except TimeoutError:
            continue
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 * 2**20, f"the server read {sent} bytes before refusing"


def test_cancel_a_running_audit(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    spec = {
        "kind": "audit",
        "model_id": model["id"],
        "attacks": [{"name": "pgd", "eps": [0.03], "steps": 5000, "early_stop": False}],
    }
    with live_service.client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] == "running")
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL, timeout=60)
    assert job["status"] == "cancelled"
    assert job["result"] is None


def test_uploaded_dataset_label_checks(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    rng = np.random.default_rng(0)
    with live_service.client() as client:
        dataset = client.post(
            "/v1/datasets",
            files={"file": ("d.npz", npz_bytes(x=rng.random((8, 1, 8, 8)), y=np.arange(8) + 5))},
        ).json()
        response = client.post(
            "/v1/jobs",
            json={
                "kind": "audit",
                "model_id": model["id"],
                "dataset_id": dataset["id"],
                "attacks": [{"name": "fgsm", "eps": [0.1]}],
            },
        )
    assert response.status_code == 422
    assert "labels go up to 12" in response.json()["errors"][0]["reason"]
