"""Running jobs in-process against the real database: validation, audits, exactly-once."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy.exc import OperationalError

from adversarial.evaluation import AttackConfig, evaluate
from adversarial.models.loading import ModelSpec, load_model
from service.database import session_scope, utcnow
from service.engine import engine_version
from service.jobs import repository
from service.models import repository as models
from service.tables import JobStatus, ModelStatus
from tests.factories import audit_spec, job_row, model_row, queued_job
from tests.jail_models import pt2_segfaulting, pt2_sleeping
from tests.model_files import (
    digits_onnx,
    digits_pt2,
    digits_small_cnn_safetensors,
    digits_torchscript,
    malicious_pt,
)
from tests.trained import trained_digits_cnn
from worker.execution import execute_job
from worker.lease import Lease
from worker.runners import RUNNERS

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts


def model_status(model_id: str):
    with session_scope() as session:
        row = models.get_any(session, model_id)
        return row.status, row.error


def validate(settings, tenant_id: str, data: bytes, **model_fields) -> tuple[str, str]:
    model_id = model_row(tenant_id, data=data, status=ModelStatus.VALIDATING, **model_fields)
    job_id = queued_job(settings, tenant_id, {"kind": "validate_model", "model_id": model_id})
    return model_id, execute_job(job_id)


def test_onnx_model_becomes_ready(settings, make_tenant) -> None:
    model_id, outcome = validate(settings, make_tenant().id, digits_onnx())
    assert outcome == "succeeded"
    assert model_status(model_id) == (ModelStatus.READY, None)


def test_safetensors_state_dict_becomes_ready(settings, make_tenant) -> None:
    model_id, outcome = validate(
        settings,
        make_tenant().id,
        digits_small_cnn_safetensors(),
        format="safetensors",
        architecture={"name": "small_cnn"},
    )
    assert outcome == "succeeded"
    assert model_status(model_id)[0] == ModelStatus.READY


def test_wrong_architecture_is_invalid(settings, make_tenant) -> None:
    model_id, outcome = validate(
        settings,
        make_tenant().id,
        digits_small_cnn_safetensors(),
        format="safetensors",
        architecture={"name": "mlp"},
    )
    assert outcome == "failed"
    status, error = model_status(model_id)
    assert status == ModelStatus.INVALID
    assert error["code"] == "state_dict_mismatch"


def test_wrong_num_classes_is_invalid(settings, make_tenant) -> None:
    model_id, outcome = validate(settings, make_tenant().id, digits_onnx(), num_classes=7)
    status, error = model_status(model_id)
    assert status == ModelStatus.INVALID
    assert error["code"] == "bad_output_shape"
    assert "7" in error["message"]


def test_malicious_pickle_is_refused_and_never_runs(settings, make_tenant, tmp_path) -> None:
    canary = tmp_path / "canary"
    model_id, outcome = validate(
        settings, make_tenant().id, malicious_pt(canary), format="pt", architecture={"name": "mlp"}
    )
    assert outcome == "failed"
    status, error = model_status(model_id)
    assert status == ModelStatus.INVALID
    assert error["code"] == "pickle_refused", error
    assert not canary.exists()


def test_torchscript_is_refused(settings, make_tenant, tmp_path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 10)), str(path))
    model_id, _ = validate(
        settings, make_tenant().id, path.read_bytes(), format="pt", architecture={"name": "mlp"}
    )
    status, error = model_status(model_id)
    assert status == ModelStatus.INVALID
    assert error["code"] == "torchscript_refused"
    assert "state_dict" in error["message"]
    assert "onnx" in error["message"].lower()


@pytest.mark.parametrize(
    ("model_format", "data"), [("torchscript", digits_torchscript), ("pt2", digits_pt2)]
)
def test_code_formats_validate_in_the_jail(settings, make_tenant, model_format, data) -> None:
    tenant_id = make_tenant().id
    model_id = model_row(tenant_id, data=data(), status=ModelStatus.VALIDATING, format=model_format)
    job_id = queued_job(settings, tenant_id, {"kind": "validate_model", "model_id": model_id})

    assert execute_job(job_id) == "succeeded", job_row(job_id).error
    assert model_status(model_id) == (ModelStatus.READY, None)
    parameters = sum(p.numel() for p in trained_digits_cnn().parameters())
    assert job_row(job_id).result["parameters"] == parameters


def test_a_jail_crash_fails_the_job_once_without_a_retry(settings, make_tenant) -> None:
    tenant_id = make_tenant().id
    model_id = model_row(
        tenant_id, data=pt2_segfaulting(), status=ModelStatus.VALIDATING, format="pt2"
    )
    job_id = queued_job(settings, tenant_id, {"kind": "validate_model", "model_id": model_id})

    assert execute_job(job_id) == "failed"

    job = job_row(job_id)
    assert (job.status, job.attempt, job.error["code"]) == (JobStatus.FAILED, 1, "model_crashed")
    assert "SIGSEGV" in job.error["message"]
    assert job.max_attempts > 1  # retries were possible; a verdict on the model takes none
    assert model_status(model_id) == (ModelStatus.INVALID, job.error)
    assert execute_job(job_id) == "skipped"


def test_code_formats_are_refused_where_only_process_jails_run(
    settings, make_tenant, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "jail_mode", "process")
    model_id, outcome = validate(
        settings, make_tenant().id, digits_torchscript(), format="torchscript"
    )
    assert outcome == "failed"
    status, error = model_status(model_id)
    assert status == ModelStatus.INVALID
    assert error["code"] == "sandbox_unavailable"
    assert "safetensors" in error["message"]


def test_an_operator_may_accept_code_formats_in_process_jails(
    settings, make_tenant, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "jail_mode", "process")
    monkeypatch.setattr(settings, "jail_code_formats_need_namespaces", False)
    model_id, outcome = validate(
        settings, make_tenant().id, digits_torchscript(), format="torchscript"
    )
    assert outcome == "succeeded"
    assert model_status(model_id) == (ModelStatus.READY, None)


def test_cancelling_a_validation_kills_its_jail(settings, make_tenant) -> None:
    tenant_id = make_tenant().id
    model_id = model_row(
        tenant_id, data=pt2_sleeping(600), status=ModelStatus.VALIDATING, format="pt2"
    )
    job_id = queued_job(settings, tenant_id, {"kind": "validate_model", "model_id": model_id})
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(execute_job(job_id)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (job_row(job_id).progress or {}).get("stage") != "starting":
            assert time.monotonic() < deadline, job_row(job_id).progress
            time.sleep(0.05)
        time.sleep(1.0)  # the jail has the job now, and the model sleeps in it
        jails_before = jail_processes(settings)
    finally:
        with session_scope() as session:
            repository.request_cancel(session, job_id, utcnow())
        cancelled_at = time.monotonic()
        thread.join(timeout=60)

    assert outcome == ["cancelled"]
    assert time.monotonic() - cancelled_at < 10  # not the 600 s the model sleeps
    # The job's jail is gone (a new spare may be starting; it is not among these).
    assert jails_before
    assert not [pid for pid in jails_before if Path(f"/proc/{pid}").exists()]


def jail_processes(settings) -> list[int]:
    """Processes whose command line names a folder of a jail that is running a job."""
    from worker.jail.config import jail_pool

    spares = {spare.process.pid for spare in jail_pool(settings)._spares.values()}
    folder = str(jail_pool(settings).config.jail_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spares:
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            # A namespaces jail names its folders in bwrap's arguments; a process jail
            # works in its scratch folder.
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if folder.encode() in command or cwd.startswith(folder):
            found.append(int(entry.name))
    return found


@pytest.fixture
def ready_model(settings, make_tenant):
    tenant = make_tenant()
    return tenant, model_row(tenant.id, data=digits_onnx())


def test_audit_result_matches_the_engine(settings, ready_model) -> None:
    tenant, model_id = ready_model
    spec = audit_spec(
        model_id,
        limit=200,
        seed=3,
        gate={
            "min_clean_accuracy": 0.9,
            "min_robust_accuracy": [{"attack": "pgd", "eps": 0.1, "value": 0.99}],
        },
    )
    job_id = queued_job(settings, tenant.id, spec)
    assert execute_job(job_id) == "succeeded"
    job = job_row(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempt == 1
    assert job.progress == {"fraction": 1.0, "stage": "done", "message": "finished"}
    result = job.result

    # The same numbers straight from the engine, on the same subset and seed.
    from adversarial.datasets import load_builtin
    from worker.loading import subset

    x, y = load_builtin("digits", "test")
    x, y, indices = subset(x, y, 200, 3)
    model = load_model(digits_onnx(), ModelSpec("onnx", (1, 8, 8), 10))
    direct = evaluate(
        model,
        x,
        y,
        [
            AttackConfig("fgsm", "linf", 0.1),
            AttackConfig("pgd", "linf", 0.1, {"steps": 5, "step_size": 0.03}),
        ],
        num_classes=10,
        seed=3,
        example_ids=torch.from_numpy(indices),
    )
    assert result["num_examples"] == 200
    assert result["clean_accuracy"] == direct.clean_accuracy
    assert [a["robust_accuracy"] for a in result["attacks"]] == [
        o.robust_accuracy for o in direct.outcomes
    ]
    gate = result["gate"]
    assert gate["passed"] is False
    named = [c for c in gate["checks"] if c["kind"] != "validity"]
    assert [c["passed"] for c in named] == [True, False]
    assert named[1]["value"] == result["attacks"][1]["robust_accuracy"]
    assert named[1]["worst_case"] == result["worst_case"][0]["robust_accuracy"]
    assert result["engine_version"] == engine_version()
    assert result["batch_size"] == settings.eval_batch_size


def test_a_job_runs_once_when_delivered_twice(settings, ready_model) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id, limit=50))
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(execute_job(job_id))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["skipped", "succeeded"]
    assert job_row(job_id).attempt == 1
    assert execute_job(job_id) == "skipped"  # a late redelivery after it finished


def test_a_worker_that_lost_its_lease_writes_nothing(settings, ready_model) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id, limit=20))
    lease = Lease(job_id, settings, owner="stalled-worker")
    assert lease.claim()
    # The reconciler handed the job to another worker meanwhile.
    with session_scope() as session:
        job = repository.get_any(session, job_id)
        job.lease_owner = "other-worker"
    with pytest.raises(Exception, match=job_id):
        lease.report(0.5, "pgd", "step", force=True)
    assert not lease.finish(JobStatus.SUCCEEDED, result={"bogus": True})
    assert job_row(job_id).result is None


def test_cancelling_a_running_audit_stops_it(settings, ready_model) -> None:
    tenant, model_id = ready_model
    spec = audit_spec(
        model_id, attacks=[{"name": "pgd", "eps": [0.05], "steps": 3000, "early_stop": False}]
    )
    job_id = queued_job(settings, tenant.id, spec)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(execute_job(job_id)))
    thread.start()
    deadline = time.monotonic() + 60
    while job_row(job_id).status != JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    with session_scope() as session:
        repository.request_cancel(session, job_id, utcnow())
    thread.join(timeout=60)
    assert outcome == ["cancelled"]
    job = job_row(job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.result is None


def test_autoattack_preset_audit_with_checks_and_artifact(settings, ready_model) -> None:
    import io

    import numpy as np

    from service.storage import get_store

    tenant, model_id = ready_model
    spec = audit_spec(
        model_id,
        limit=80,
        attacks=[
            {"name": "fgsm", "eps": [0.05, 0.1]},
            {
                "name": "autoattack",
                "eps": [0.1, 0.05],
                "steps": 15,
                "queries": 200,
                "target_classes": 3,
            },
        ],
    )
    job_id = queued_job(settings, tenant.id, spec)
    assert execute_job(job_id) == "succeeded"
    result = job_row(job_id).result
    autoattack = [a for a in result["attacks"] if a["name"] == "autoattack"]
    assert [a["eps"] for a in autoattack] == [0.05, 0.1]  # sorted into a curve
    assert [c["name"] for c in autoattack[1]["components"]] == ["apgd-ce", "apgd-t", "square"]
    assert result["curves"][1] == {
        "attack": "autoattack",
        "norm": "linf",
        "eps": [0.05, 0.1],
        "robust_accuracy": [a["robust_accuracy"] for a in autoattack],
    }
    assert {n["eps"] for n in result["noise_baseline"]} == {0.05, 0.1}
    assert result["large_eps_accuracy"] is not None
    assert result["warnings"] == []
    assert len(result["attacks"][0]["confusion"]) == 10

    (artifact,) = result["artifacts"]
    assert artifact["name"] == "per_sample.npz"
    with session_scope() as session:
        (row,) = repository.list_artifacts(session, job_id)
        assert row.sha256 == artifact["sha256"]
    with np.load(io.BytesIO(get_store().read_bytes(artifact["sha256"]))) as arrays:
        assert arrays["indices"].shape == (80,)
        assert arrays["adversarial_linf"].shape == (80, 1, 8, 8)
        fell = arrays["fell_at_linf"]
        assert set(np.unique(fell[np.isfinite(fell)])) <= {0.0, 0.05, 0.1}


class _RunnerThatIsCancelledAtTheEnd:
    """Finishes its work just as a client cancels (after the last heartbeat saw nothing)."""

    def __init__(self, result: dict) -> None:
        self.result = result

    def run(self, job, lease):  # type: ignore[no-untyped-def]
        with session_scope() as session:
            repository.request_cancel(session, job.id, utcnow())
        return self.result

    def on_success(self, session, job, result) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError("a cancelled job must not commit a success")

    def on_failure(self, session, job, error) -> None:  # type: ignore[no-untyped-def]
        return None


def test_a_cancelled_job_never_ends_succeeded(settings, ready_model, monkeypatch) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    monkeypatch.setitem(RUNNERS, "audit", _RunnerThatIsCancelledAtTheEnd({"done": True}))
    assert execute_job(job_id) == "cancelled"
    job = job_row(job_id)
    assert (job.status, job.result, job.error["code"]) == (JobStatus.CANCELLED, None, "cancelled")


class _RunnerWithNonFiniteNumbers:
    def run(self, job, lease):  # type: ignore[no-untyped-def]
        return {
            "clean_accuracy": 0.5,
            "attacks": [{"mean_wrong_confidence": float("nan"), "seconds": float("inf")}],
            "warnings": [],
        }

    def on_success(self, session, job, result) -> None:  # type: ignore[no-untyped-def]
        return None

    def on_failure(self, session, job, error) -> None:  # type: ignore[no-untyped-def]
        return None


def test_nan_and_inf_in_a_result_are_written_as_null_with_a_warning(
    settings, ready_model, monkeypatch
) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    monkeypatch.setitem(RUNNERS, "audit", _RunnerWithNonFiniteNumbers())
    assert execute_job(job_id) == "succeeded"
    result = job_row(job_id).result
    assert result["attacks"] == [{"mean_wrong_confidence": None, "seconds": None}]
    (warning,) = result["warnings"]
    assert warning["code"] == "non_finite_values"
    assert "attacks[0].mean_wrong_confidence" in warning["message"]


def test_progress_survives_a_database_blip(settings, ready_model, monkeypatch) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    lease = Lease(job_id, settings)
    assert lease.claim()
    real_write = repository.write_progress
    failures = [OperationalError("UPDATE", {}, Exception("server closed the connection"))]

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(repository, "write_progress", flaky)
    lease.report(0.2, "pgd", "step 1", force=True)  # the blip: logged, not raised
    assert job_row(job_id).progress["stage"] == "queued"
    time.sleep(0.3)  # past the retry delay
    lease.report(0.4, "pgd", "step 2", force=True)
    assert job_row(job_id).progress["message"] == "step 2"
    # A real error is not swallowed.
    monkeypatch.setattr(repository, "write_progress", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        lease.report(0.5, "pgd", "step 3", force=True)


def test_the_final_write_is_retried_while_the_lease_lasts(
    settings, ready_model, monkeypatch
) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    lease = Lease(job_id, settings)
    assert lease.claim()
    real_finish = repository.finish
    failures = [OperationalError("UPDATE", {}, Exception("connection refused"))] * 2

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(repository, "finish", flaky)
    assert lease.finish(JobStatus.SUCCEEDED, result={"ok": True})
    assert job_row(job_id).status == JobStatus.SUCCEEDED


def test_a_database_blip_right_after_the_claim_costs_no_attempt(
    settings, ready_model, monkeypatch
) -> None:
    from sqlalchemy.exc import OperationalError

    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id, limit=20))
    read_job = repository.get_any
    reads: list[str] = []

    def unreachable_once(session, wanted: str):
        # The connection drops just after the claim committed (a database restart).
        reads.append(wanted)
        if len(reads) == 1:
            raise OperationalError("SELECT jobs", {}, ConnectionError("server closed"))
        return read_job(session, wanted)

    monkeypatch.setattr(repository, "get_any", unreachable_once)
    assert execute_job(job_id) == "succeeded"
    assert reads[:2] == [job_id, job_id]  # the read was tried again, not given up
    job = job_row(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempt == 1


class _LongRunner:
    """Saves a checkpoint, then hits the run's time limit (the first time only)."""

    resumable = True

    def __init__(self) -> None:
        self.runs = 0

    def run(self, job, lease):  # type: ignore[no-untyped-def]
        from celery.exceptions import SoftTimeLimitExceeded

        self.runs += 1
        saved = lease.read_artifact("checkpoint.bin")
        if saved is None:
            lease.put_artifact("checkpoint.bin", b"epoch 1", "application/octet-stream")
            raise SoftTimeLimitExceeded()
        return {"resumed_from": saved.decode()}

    def on_success(self, session, job, result) -> None:  # type: ignore[no-untyped-def]
        return None

    def on_failure(self, session, job, error) -> None:  # type: ignore[no-untyped-def]
        return None


def test_a_long_job_continues_past_the_time_limit_from_its_checkpoint(
    settings, ready_model, monkeypatch
) -> None:
    tenant, model_id = ready_model
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    runner = _LongRunner()
    monkeypatch.setitem(RUNNERS, "audit", runner)
    assert execute_job(job_id) == "continued"
    job = job_row(job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 0)  # the run cost no attempt
    assert "continuing from its last checkpoint" in job.progress["message"]
    assert execute_job(job_id) == "succeeded"
    job = job_row(job_id)
    assert (job.attempt, job.result, runner.runs) == (1, {"resumed_from": "epoch 1"}, 2)


def test_the_corruptions_preset_measures_natural_shifts_and_gates_them(
    settings, ready_model
) -> None:
    tenant, model_id = ready_model
    spec = {
        "kind": "audit",
        "model_id": model_id,
        "preset": "corruptions",
        "limit": 100,
        "gate": {"min_clean_accuracy": 0.9, "min_corruption_accuracy": 0.5},
    }
    job_id = queued_job(settings, tenant.id, spec)
    assert execute_job(job_id) == "succeeded", job_row(job_id).error
    result = job_row(job_id).result
    assert result["attacks"] == []
    assert result["attack_strength"] == "none"
    assert {c["corruption"] for c in result["corruptions"]} == {
        "gaussian_noise",
        "gaussian_blur",
        "rotation",
        "contrast",
    }
    assert len(result["corruptions"]) == 12
    mean = sum(c["accuracy"] for c in result["corruptions"]) / 12
    assert result["corruption_accuracy"] == pytest.approx(mean)
    check = next(c for c in result["gate"]["checks"] if c["kind"] == "corruption")
    assert check["value"] == result["corruption_accuracy"]
    assert check["passed"] == (result["corruption_accuracy"] >= 0.5)
