"""A transfer matrix through the real service: uploads validated by a real worker (the
scikit-learn graphs found to be black boxes), a worker SIGKILLed while a crafting part runs,
and the parent still completing with every cell once, equal to the one-process matrix."""

from __future__ import annotations

import json
import time

import pytest
import torch

from adversarial.datasets import load_builtin
from adversarial.models.blackbox import load_black_box
from adversarial.models.loading import ModelSpec, load_model
from adversarial.models.wrapper import InputSpaceModel
from adversarial.transfer import attack_curve, transfer_matrix
from tests.e2e.conftest import LiveService
from tests.model_files import digits_onnx, onnx_bytes
from tests.sklearn_models import sklearn_onnx
from tests.trained import trained_digits_cnn
from worker.loading import subset

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

FINAL = ("succeeded", "failed", "cancelled")
LIMIT = 200
ATTACK = {"name": "pgd", "norm": "linf", "eps": 0.1, "steps": 20}
NUMBERS = (
    "examples",
    "target_clean_correct",
    "target_adversarial_correct",
    "fooled",
    "agreeing",
    "clean_accuracy",
    "accuracy",
    "error_rate",
    "wrong_class_agreement",
)


def files() -> dict[str, bytes]:
    return {
        "cnn-a": digits_onnx(),
        "cnn-b": onnx_bytes(trained_digits_cnn(1), torch.rand(2, 1, 8, 8)),
        "logreg": sklearn_onnx("logistic_regression"),
        "tree": sklearn_onnx("decision_tree"),
    }


def upload(live_service: LiveService, name: str, data: bytes) -> dict:
    meta = {"name": name, "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}
    with live_service.client() as client:
        response = client.post(
            "/v1/models", files={"file": (f"{name}.onnx", data)}, data={"meta": json.dumps(meta)}
        )
    assert response.status_code == 202, response.text
    return live_service.wait_for(
        f"/v1/models/{response.json()['id']}", lambda m: m["status"] != "validating"
    )


def parts(live_service: LiveService, parent_id: str, kind: str) -> list[dict]:
    with live_service.client() as client:
        items = client.get("/v1/jobs", params={"kind": kind, "limit": 100}).json()["items"]
    return [job for job in items if job["parent_id"] == parent_id]


def reference(data: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def load(name: str) -> torch.nn.Module:
        if name in ("logreg", "tree"):
            box = load_black_box(data[name], input_shape=(1, 8, 8), num_classes=10)
            return InputSpaceModel(box, input_shape=(1, 8, 8), num_classes=10).eval()
        return load_model(data[name], ModelSpec("onnx", (1, 8, 8), 10))

    models = {name: load(name) for name in data}
    x, y = load_builtin("digits", "test")
    x, y, indices = subset(x, y, LIMIT, 0)
    return transfer_matrix(
        {
            "cnn-a": models["cnn-a"],
            "cnn-b": models["cnn-b"],
            "ensemble(cnn-a+cnn-b)": [models["cnn-a"], models["cnn-b"]],
        },
        {name: models[name] for name in ("cnn-a", "cnn-b", "logreg", "tree")},
        x,
        y,
        attack_curve("pgd", "linf", [0.1], {"steps": 20, "early_stop": False}),
        seed=0,
        example_ids=torch.from_numpy(indices),
        batch_size=256,
    )


def test_a_transfer_survives_a_worker_killed_mid_craft(live_service: LiveService) -> None:
    data = files()
    models = {name: upload(live_service, name, blob) for name, blob in data.items()}
    assert {name: m["status"] for name, m in models.items()} == dict.fromkeys(data, "ready")
    assert {name: m["black_box"] for name, m in models.items()} == {
        "cnn-a": False,
        "cnn-b": False,
        "logreg": True,
        "tree": True,
    }
    ids = {name: m["id"] for name, m in models.items()}
    spec = {
        "kind": "transfer",
        "sources": [ids["cnn-a"], ids["cnn-b"], [ids["cnn-a"], ids["cnn-b"]]],
        "targets": [ids["cnn-a"], ids["cnn-b"], ids["logreg"], ids["tree"]],
        "limit": LIMIT,
        "attack": ATTACK,
    }
    with live_service.client() as client:
        response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    # SIGKILL the worker while a crafting part runs (it holds the part's lease).
    deadline = time.monotonic() + 120
    while True:
        running = [
            p for p in parts(live_service, job_id, "transfer_craft") if p["status"] == "running"
        ]
        if running:
            break
        assert time.monotonic() < deadline, live_service.log_text()
        time.sleep(0.05)
    killed = running[0]["id"]
    live_service.kill(live_service.workers[0])
    live_service.start_worker()

    done = live_service.wait_for(f"/v1/jobs/{job_id}", lambda j: j["status"] in FINAL, 300)
    assert done["status"] == "succeeded", done
    result = done["result"]

    crafts = parts(live_service, job_id, "transfer_craft")
    scores = parts(live_service, job_id, "transfer_score")
    assert len(crafts) == 3  # one per source (one eps)
    assert len(scores) == 4  # one per target
    assert {p["status"] for p in crafts + scores} == {"succeeded"}
    assert next(p for p in crafts if p["id"] == killed)["attempt"] == 2, "the kill came too late"
    with live_service.client() as client:
        for part in crafts:
            names = [a["name"] for a in client.get(f"/v1/jobs/{part['id']}/artifacts").json()]
            assert len(names) == 1  # each crafted set written once
            assert names[0].startswith("crafted-")
        listed = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert listed == {c["artifact"] for c in result["crafted"]}
    assert len(listed) == 3

    cells = result["cells"]
    keys = [(c["source"], c["target"], c["eps"]) for c in cells]
    assert len(keys) == len(set(keys)) == 3 * 4  # every cell, once
    assert [t["black_box"] for t in result["targets"]] == [False, False, True, True]
    assert not any(c["reused"] for c in cells)
    matrix = reference(data)
    assert keys == [(e.source, e.target, e.attack.eps) for e in matrix.entries]
    for cell, entry in zip(cells, matrix.entries, strict=True):
        assert {n: cell[n] for n in NUMBERS} == {n: getattr(entry.cell, n) for n in NUMBERS}
    # Transfer to the black boxes is real: PGD on the CNNs fools the scikit-learn models.
    assert any(c["fooled"] > 0 for c in cells if c["target"] in ("logreg", "tree"))
