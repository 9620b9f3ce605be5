"""Transfer jobs through the job core: the parent stages crafting parts, then scoring parts,
then merges; the numbers are those of ``transfer_matrix`` in one process; a later job
reuses stored crafted sets; cancelling the parent cancels its parts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from adversarial.datasets import load_builtin
from adversarial.models.blackbox import load_black_box
from adversarial.models.loading import ModelSpec, load_model
from adversarial.models.wrapper import InputSpaceModel
from adversarial.transfer import attack_curve, crafted_from_bytes, transfer_matrix
from service.app import create_app
from service.database import session_scope, utcnow
from service.jobs import repository
from service.jobs.service import create_job
from service.storage import get_store
from service.tables import Job
from tests.e2e.test_transfer import NUMBERS as CELL_NUMBERS
from tests.factories import job_row, model_row
from tests.model_files import digits_onnx, onnx_bytes
from tests.sklearn_models import sklearn_onnx
from tests.trained import trained_digits_cnn
from worker.execution import execute_job
from worker.lease import Lease
from worker.loading import subset

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts

LIMIT = 60
ATTACK = {"name": "pgd", "norm": "linf", "eps": [0.1, 0.2], "steps": 4}


def second_cnn() -> bytes:
    return onnx_bytes(trained_digits_cnn(1), torch.rand(2, 1, 8, 8))


def children(job_id: str) -> list[Job]:
    with session_scope() as session:
        return repository.children(session, job_id)


def run_parts(job_id: str, kind: str) -> list[Job]:
    parts = [part for part in children(job_id) if part.kind == kind]
    for part in parts:
        assert execute_job(part.id) == "succeeded", job_row(part.id).error  # type: ignore[union-attr]
    return parts


def run_transfer(job_id: str, *, crafts: int) -> dict[str, Any]:
    """Drive a transfer job through its runs; ``crafts``: the crafting parts it must stage."""
    assert execute_job(job_id) == "waiting"
    if crafts:
        assert len(run_parts(job_id, "transfer_craft")) == crafts
        assert job_row(job_id).status == "queued"  # type: ignore[union-attr]  # woken
        assert execute_job(job_id) == "waiting"
    else:
        assert not [p for p in children(job_id) if p.kind == "transfer_craft"]
    run_parts(job_id, "transfer_score")
    assert execute_job(job_id) == "succeeded", job_row(job_id).error  # type: ignore[union-attr]
    row = job_row(job_id)
    assert row is not None
    assert row.result is not None
    return row.result


def reference_matrix(files: dict[str, bytes], black_boxes: set[str]) -> Any:
    def load(name: str) -> torch.nn.Module:
        if name in black_boxes:
            box = load_black_box(files[name], input_shape=(1, 8, 8), num_classes=10)
            return InputSpaceModel(box, input_shape=(1, 8, 8), num_classes=10).eval()
        return load_model(files[name], ModelSpec("onnx", (1, 8, 8), 10))

    models = {name: load(name) for name in files}
    x, y = load_builtin("digits", "test")
    x, y, indices = subset(x, y, LIMIT, 0)
    return transfer_matrix(
        {"cnn-a": models["cnn-a"], "ensemble(cnn-a+cnn-b)": [models["cnn-a"], models["cnn-b"]]},
        {name: models[name] for name in ("cnn-a", "cnn-b", "logreg", "tree")},
        x,
        y,
        attack_curve("pgd", "linf", [0.1, 0.2], {"steps": 4, "early_stop": False}),
        seed=0,
        example_ids=torch.from_numpy(indices),
        batch_size=256,
    )


def test_a_transfer_matrix_through_parts_equals_the_one_process_matrix(  # type: ignore[no-untyped-def]
    settings, make_tenant
) -> None:
    tenant = make_tenant()
    files = {
        "cnn-a": digits_onnx(),
        "cnn-b": second_cnn(),
        "logreg": sklearn_onnx("logistic_regression"),
        "tree": sklearn_onnx("decision_tree"),
    }
    ids = {
        name: model_row(tenant.id, data=data, name=name, black_box=name in ("logreg", "tree"))
        for name, data in files.items()
    }
    spec = {
        "kind": "transfer",
        "sources": [ids["cnn-a"], [ids["cnn-a"], ids["cnn-b"]]],
        "targets": [ids["cnn-a"], ids["cnn-b"], ids["logreg"], ids["tree"]],
        "limit": LIMIT,
        "attack": ATTACK,
    }
    with TestClient(create_app()) as client:
        response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        result = run_transfer(job_id, crafts=4)

        reference = reference_matrix(files, {"logreg", "tree"})
        assert result["examples"] == LIMIT
        assert result["attack"] == {"name": "pgd", "norm": "linf", "eps": [0.1, 0.2], "steps": 4}
        assert [s["name"] for s in result["sources"]] == ["cnn-a", "ensemble(cnn-a+cnn-b)"]
        assert [t["black_box"] for t in result["targets"]] == [False, False, True, True]
        assert len(result["cells"]) == 2 * 2 * 4
        assert [(c["source"], c["eps"], c["target"]) for c in result["cells"]] == [
            (e.source, e.attack.eps, e.target) for e in reference.entries
        ]
        for cell, entry in zip(result["cells"], reference.entries, strict=True):
            expected = entry.cell
            for name in CELL_NUMBERS:
                assert cell[name] == getattr(expected, name), (cell, name)
            assert cell["reused"] is False
        for crafted in result["crafted"]:
            eps_index = [0.1, 0.2].index(crafted["eps"])
            expected_set = reference.crafted[crafted["source"]][eps_index]
            assert crafted["source_clean_accuracy"] == expected_set.source_clean_accuracy
            assert crafted["source_success_rate"] == expected_set.source_success_rate
        # The ensemble must differ from its first member, or the test could not tell them.
        assert any(
            a["fooled"] != b["fooled"]
            for a, b in zip(result["cells"][:8], result["cells"][8:], strict=True)
        )

        # Every crafted set was written once, by its part, and is readable without pickle.
        crafts = [p for p in children(job_id) if p.kind == "transfer_craft"]
        with session_scope() as session:
            written = [a for p in crafts for a in repository.list_artifacts(session, p.id)]
        assert sorted(a.name for a in written) == sorted(c["artifact"] for c in result["crafted"])
        for artifact in written:
            crafted_set = crafted_from_bytes(get_store().read_bytes(artifact.sha256))
            assert crafted_set.num_examples == LIMIT
        # Parts are jobs a client can read, with their typed results.
        for part in children(job_id):
            read = client.get(f"/v1/jobs/{part.id}", headers=tenant.headers)
            assert read.status_code == 200, read.text
            assert read.json()["parent_id"] == job_id
            assert read.json()["result"] == part.result
        listed = client.get(f"/v1/jobs/{job_id}/artifacts", headers=tenant.headers).json()
        assert {a["name"] for a in listed} >= {c["artifact"] for c in result["crafted"]}
        report = client.get(f"/v1/jobs/{job_id}/report", headers=tenant.headers)
        assert report.status_code == 200
        assert "ensemble(cnn-a+cnn-b)" in report.text

        # A later job with the same sources, data, attack and seed reuses the crafted sets
        # of the eps they share (0.2) and crafts the others (0.3).
        again = client.post(
            "/v1/jobs",
            headers=tenant.headers,
            json={
                **spec,
                "targets": [ids["tree"], ids["cnn-b"]],
                "attack": {**ATTACK, "eps": [0.2, 0.3]},
            },
        )
        assert again.status_code == 202, again.text
        reused = run_transfer(again.json()["id"], crafts=2)
        assert {(c["source"], c["eps"]): c["reused"] for c in reused["crafted"]} == {
            ("cnn-a", 0.2): True,
            ("ensemble(cnn-a+cnn-b)", 0.2): True,
            ("cnn-a", 0.3): False,
            ("ensemble(cnn-a+cnn-b)", 0.3): False,
        }
        first = {(c["source"], c["target"], c["eps"]): c for c in result["cells"]}
        for cell in reused["cells"]:
            assert cell["reused"] is (cell["eps"] == 0.2)
            if cell["eps"] == 0.2:
                assert {**cell, "reused": False} == first[(cell["source"], cell["target"], 0.2)]
        stored = {c["artifact"] for c in result["crafted"] if c["eps"] == 0.2}
        assert stored <= {c["artifact"] for c in reused["crafted"]}


def test_cancelling_a_transfer_cancels_its_parts(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    cnn_a = model_row(tenant.id, data=digits_onnx(), name="cnn-a")
    cnn_b = model_row(tenant.id, data=second_cnn(), name="cnn-b")
    spec = {
        "kind": "transfer",
        "sources": [cnn_a, cnn_b],
        "targets": [cnn_b],
        "limit": 20,
        "seed": 5,
        "attack": {"name": "fgsm", "eps": [0.1, 0.2]},
    }
    with TestClient(create_app()) as client:
        job_id = client.post("/v1/jobs", headers=tenant.headers, json=spec).json()["id"]
        assert execute_job(job_id) == "waiting"
        parts = children(job_id)
        assert len(parts) == 4
        assert {p.kind for p in parts} == {"transfer_craft"}
        # One part finishes before the cancel; the others have not started.
        assert execute_job(parts[0].id) == "succeeded"
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    statuses = {p.id: p.status for p in children(job_id)}
    assert statuses.pop(parts[0].id) == "succeeded"
    assert set(statuses.values()) == {"cancelled"}
    for part in parts[1:]:
        assert execute_job(part.id) == "skipped"  # a delivered id finds nothing to run
    assert execute_job(job_id) == "skipped"
    assert job_row(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_a_cancel_that_comes_while_parts_are_staged_stages_none(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    cnn = model_row(tenant.id, data=digits_onnx())
    spec = {"kind": "transfer", "sources": [cnn], "targets": [cnn], "limit": 10}
    with TestClient(create_app()) as client:
        job_id = client.post("/v1/jobs", headers=tenant.headers, json=spec).json()["id"]
    lease = Lease(job_id, settings)
    assert lease.claim()
    with session_scope() as session:
        assert repository.request_cancel(session, job_id, utcnow())

    def stage(session: Session) -> None:
        create_job(
            session,
            tenant_id=tenant.id,
            kind="transfer_score",
            spec={"kind": "transfer_score"},
            settings=settings,
            parent_id=job_id,
        )

    assert lease.wait_for_parts(stage, "scoring") is False
    assert children(job_id) == []
    assert job_row(job_id).lease_owner == lease.owner  # type: ignore[union-attr]  # still held
    # Without the cancel the parts are staged and the job waits for them, lease released.
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=False))
    assert lease.wait_for_parts(stage, "scoring") is True
    row = job_row(job_id)
    assert row is not None
    assert (row.status, row.lease_owner, row.attempt) == ("running", None, 0)
    assert [p.kind for p in children(job_id)] == ["transfer_score"]
