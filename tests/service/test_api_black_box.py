"""Audits of black-box models: score-based attacks only, refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import audit_spec, model_row

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts


@pytest.fixture
def tenant(make_tenant):  # type: ignore[no-untyped-def]
    return make_tenant()


@pytest.fixture
def box(tenant) -> str:  # type: ignore[no-untyped-def]
    return model_row(tenant.id, name="lr", black_box=True)


def submit(client, tenant, spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", headers=tenant.headers, json=spec)


def test_an_explicit_gradient_attack_on_a_black_box_is_a_422(client, tenant, box) -> None:  # type: ignore[no-untyped-def]
    spec = audit_spec(
        box, attacks=[{"name": "square", "eps": [0.1]}, {"name": "pgd", "eps": [0.1]}]
    )
    refused = submit(client, tenant, spec)
    assert refused.status_code == 422, refused.text
    ((error),) = refused.json()["errors"]
    assert error["field"] == "attacks[1].name"
    assert "black box" in error["reason"]
    assert "square" in error["reason"]


def test_a_preset_keeps_only_its_score_based_attacks(client, tenant, box) -> None:  # type: ignore[no-untyped-def]
    for preset in ("quick", "standard"):
        refused = submit(client, tenant, {"kind": "audit", "model_id": box, "preset": preset})
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "preset"
    admitted = submit(client, tenant, {"kind": "audit", "model_id": box, "limit": 20})
    assert admitted.status_code == 202, admitted.text  # autoattack: its Square runs
    corruptions = submit(
        client, tenant, {"kind": "audit", "model_id": box, "preset": "corruptions"}
    )
    assert corruptions.status_code == 202, corruptions.text
    square = audit_spec(box, attacks=[{"name": "square", "eps": [0.1], "queries": 50}])
    assert submit(client, tenant, square).status_code == 202


def test_a_gate_on_a_gradient_attack_of_a_black_box_is_a_422(client, tenant, box) -> None:  # type: ignore[no-untyped-def]
    gate = {"min_robust_accuracy": [{"attack": "autoattack", "eps": 0.1, "value": 0.5}]}
    spec = {"kind": "audit", "model_id": box, "eps": [0.1], "gate": gate}
    refused = submit(client, tenant, spec)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"].startswith("gate.min_robust_accuracy[0]")
    worst = {"min_robust_accuracy": [{"attack": "worst_case", "eps": 0.1, "value": 0.5}]}
    assert submit(client, tenant, {**spec, "gate": worst}).status_code == 202


def test_the_same_spec_on_a_differentiable_model_runs_every_attack(client, tenant) -> None:  # type: ignore[no-untyped-def]
    cnn = model_row(tenant.id)
    spec = audit_spec(cnn, attacks=[{"name": "pgd", "eps": [0.1]}])
    assert submit(client, tenant, spec).status_code == 202
    assert (
        submit(client, tenant, {"kind": "audit", "model_id": cnn, "preset": "quick"}).status_code
        == 202
    )
