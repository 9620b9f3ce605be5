"""Training jobs through the worker path: the jail trains, checkpoints reach the store under
the lease, a later attempt resumes, the model is registered with its lineage."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from sqlalchemy import update

from service.database import session_scope
from service.jobs import repository
from service.jobs.report import render_report
from service.jobs.schemas import JobRead
from service.models import repository as models
from service.storage import get_store
from service.tables import Job, ModelStatus
from tests.factories import job_row, model_row, queued_job
from tests.model_files import digits_onnx
from worker.execution import execute_job
from worker.runners.train import CHECKPOINT

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts


def train_spec(**overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "kind": "train",
        "name": "digits-fgsm",
        "architecture": {"name": "small_cnn", "kwargs": {"channels": [8, 16]}},
        "method": {"name": "fgsm", "eps": 0.1},
        "epochs": 2,
        "validation": {"fraction": 0.15, "pgd_steps": 3},
        "seed": 3,
    }
    spec.update(overrides)
    return spec


def test_a_trained_model_is_registered_with_its_lineage_and_audited(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    # An earlier model under the spec's name: the trained one is its next version.
    model_row(tenant.id, name="digits-fgsm")
    spec = train_spec(audit={"attacks": [{"name": "fgsm", "eps": [0.1]}], "limit": 60})
    job_id = queued_job(settings, tenant.id, spec)
    assert execute_job(job_id) == "succeeded", job_row(job_id).error
    result = job_row(job_id).result
    assert [e["epoch"] for e in result["epochs"]] == [0, 1]
    assert all(e["gradient_computations"] > 0 for e in result["epochs"])
    assert result["epochs"][-1]["robust_accuracy"] is not None
    (scores,) = result["scores"]
    assert scores["role"] == "trained"
    assert 0 < scores["clean_accuracy"] <= 1
    with session_scope() as session:
        model = models.get_any(session, result["model_id"])
        assert model is not None
        assert (model.status, model.source_job_id, model.format) == (
            ModelStatus.READY,
            job_id,
            "safetensors",
        )
        assert model.architecture == {"name": "small_cnn", "kwargs": {"channels": [8, 16]}}
        assert (model.name, model.version) == ("digits-fgsm", 2)
        names = {a.name for a in repository.list_artifacts(session, job_id)}
    assert names == {CHECKPOINT, "model.onnx"}
    page = render_report(JobRead.from_row(job_row(job_id)))
    assert "Training curves" in page
    assert page.count("<polyline") >= 2  # clean and PGD accuracy per epoch
    assert "What the training bought" in page
    assert get_store().exists(model.file_sha256)
    # The follow-up audit exists, refers to the new model, and runs.
    audit_id = result["audit_job_id"]
    audit = job_row(audit_id)
    assert (audit.kind, audit.model_id, audit.status) == ("audit", result["model_id"], "queued")
    assert execute_job(audit_id) == "succeeded", job_row(audit_id).error
    assert job_row(audit_id).result["num_examples"] == 60


def test_a_later_attempt_resumes_from_the_last_checkpoint_with_the_same_numbers(
    settings, make_tenant
) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    spec = train_spec(epochs=3, method={"name": "free", "eps": 0.1, "replays": 2})
    whole = queued_job(settings, tenant.id, spec)
    assert execute_job(whole) == "succeeded", job_row(whole).error
    expected = job_row(whole).result

    # The first attempt of another job got as far as its first checkpoint, then its worker
    # died: the checkpoint is its artifact, and it is queued again as attempt 2.
    from worker.lease import Lease

    first = queued_job(settings, tenant.id, spec)
    lease = Lease(first, settings)
    assert lease.claim()
    checkpoints: list[bytes] = []
    import adversarial.training.job as job_module

    # One epoch of the same run, to have a real first checkpoint.
    from adversarial.datasets import load_builtin
    from adversarial.models.wrapper import InputSpaceModel
    from adversarial.models.zoo import build_architecture
    from adversarial.training.rng import seeded_initialization
    from service.jobs.train_specs import TrainSpec
    from worker.runners.train import training_plan

    parsed = TrainSpec.model_validate(spec)
    plan = training_plan(parsed, (0.0, 1.0))
    x, y = load_builtin("digits", "train")
    with seeded_initialization(plan.seed):
        network = build_architecture("small_cnn", {"channels": [8, 16]}, (1, 8, 8), 10)
    model = InputSpaceModel(network, input_shape=(1, 8, 8), num_classes=10)

    class Stop(Exception):
        pass

    def keep(data: bytes, epoch: int) -> None:
        checkpoints.append(data)
        raise Stop

    with pytest.raises(Stop):
        job_module.run_training(model, x, y, plan, on_checkpoint=keep)
    lease.put_artifact(CHECKPOINT, checkpoints[0], "application/octet-stream")
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == first)
            .values(status="queued", lease_owner=None, lease_expires_at=None)
        )
    assert execute_job(first) == "succeeded", job_row(first).error
    resumed = job_row(first)
    assert resumed.attempt == 2
    assert resumed.result["resumed_from_epoch"] == 1
    timing = {"seconds", "validation_seconds"}
    strip = lambda epochs: [{k: v for k, v in e.items() if k not in timing} for e in epochs]  # noqa: E731
    assert strip(resumed.result["epochs"]) == strip(expected["epochs"])
    assert resumed.result["scores"] == [
        {**s, "model_id": resumed.result["model_id"]} for s in expected["scores"]
    ]
    with session_scope() as session:
        ours = models.get_any(session, resumed.result["model_id"])
        theirs = models.get_any(session, expected["model_id"])
        assert ours is not None
        assert theirs is not None
        assert ours.file_sha256 == theirs.file_sha256  # bit-identical weights


def initializers(data: bytes) -> dict[str, bytes]:
    graph = onnx.load_from_string(data).graph
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in graph.initializer}


def test_fine_tuning_the_last_layer_of_an_onnx_model(settings, make_tenant) -> None:  # type: ignore[no-untyped-def]
    tenant = make_tenant()
    parent = model_row(tenant.id, data=digits_onnx())
    spec = train_spec(
        architecture=None,
        fine_tune={"model_id": parent, "layers": "last"},
        method={"name": "pgd", "eps": 0.1, "steps": 5},
        epochs=3,
        optimizer={"name": "adam", "lr": 0.01},
    )
    job_id = queued_job(settings, tenant.id, spec)
    assert execute_job(job_id) == "succeeded", job_row(job_id).error
    result = job_row(job_id).result
    scores = {s["role"]: s for s in result["scores"]}
    assert scores["trained"]["robust_accuracy"] > scores["parent"]["robust_accuracy"]
    with session_scope() as session:
        model = models.get_any(session, result["model_id"])
        assert model is not None
        assert (model.format, model.parent_model_id) == ("onnx", parent)
    trained = get_store().read_bytes(model.file_sha256)
    before, after = initializers(digits_onnx()), initializers(trained)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert 1 <= len(changed) <= 2  # the last layer's weight and bias
    session_ = onnxruntime.InferenceSession(trained, providers=["CPUExecutionProvider"])
    from adversarial.datasets import load_builtin

    x, _ = load_builtin("digits", "test")
    (logits,) = session_.run(None, {session_.get_inputs()[0].name: x[:8].numpy()})
    assert np.asarray(logits).shape == (8, 10)
