"""The reconciler: expired leases are re-queued, failed or cancelled; unsent jobs re-sent."""

from __future__ import annotations

import datetime as dt

import pytest

from service.database import session_scope, utcnow
from service.jobs import repository
from service.jobs.service import create_job
from service.models import repository as models
from service.tables import JobStatus, ModelStatus
from tests.factories import audit_spec, job_row, model_row, queued_job
from worker.reconciler import reconcile_once

# Each stores files (models, datasets, job artifacts): CI runs them again with the S3 store
# (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = pytest.mark.artifacts


def running_job(
    settings,
    tenant_id: str,
    spec: dict,
    *,
    attempt: int,
    cancel: bool = False,
    expired: bool = True,
) -> str:
    job_id = queued_job(settings, tenant_id, spec)
    with session_scope() as session:
        job = repository.get_any(session, job_id)
        job.status = JobStatus.RUNNING
        job.attempt = attempt
        job.lease_owner = "dead-worker"
        delta = dt.timedelta(seconds=-5 if expired else 60)
        job.lease_expires_at = utcnow() + delta
        job.cancel_requested = cancel
    return job_id


def test_expired_job_is_requeued_and_resent(settings, make_tenant) -> None:
    tenant = make_tenant()
    job_id = running_job(settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=1)
    counts = reconcile_once(settings)
    assert counts["requeued"] == 1
    assert counts["resent"] >= 1
    row = job_row(job_id)
    assert row.status == JobStatus.QUEUED
    assert row.lease_owner is None
    assert row.enqueued_at is not None  # handed to the broker again
    assert "re-queued after attempt 1" in row.progress["message"]


def test_live_lease_is_left_alone(settings, make_tenant) -> None:
    tenant = make_tenant()
    job_id = running_job(
        settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=1, expired=False
    )
    assert reconcile_once(settings)["requeued"] == 0
    assert job_row(job_id).status == JobStatus.RUNNING


def test_job_out_of_attempts_fails(settings, make_tenant) -> None:
    tenant = make_tenant()
    job_id = running_job(
        settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=settings.max_attempts
    )
    assert reconcile_once(settings)["failed"] == 1
    row = job_row(job_id)
    assert row.status == JobStatus.FAILED
    assert row.error["code"] == "worker_lost"
    assert row.finished_at is not None


def test_failed_validation_marks_the_model_invalid(settings, make_tenant) -> None:
    tenant = make_tenant()
    model_id = model_row(tenant.id, status=ModelStatus.VALIDATING)
    running_job(
        settings,
        tenant.id,
        {"kind": "validate_model", "model_id": model_id},
        attempt=settings.max_attempts,
    )
    reconcile_once(settings)
    with session_scope() as session:
        row = models.get_any(session, model_id)
        assert row.status == ModelStatus.INVALID
        assert row.error["code"] == "worker_lost"


def test_expired_job_with_cancel_requested_is_cancelled(settings, make_tenant) -> None:
    tenant = make_tenant()
    job_id = running_job(
        settings, tenant.id, audit_spec(model_row(tenant.id)), attempt=1, cancel=True
    )
    assert reconcile_once(settings)["cancelled"] == 1
    assert job_row(job_id).status == JobStatus.CANCELLED


def test_job_never_sent_is_resent(settings, make_tenant, monkeypatch) -> None:
    tenant = make_tenant()
    # The broker is down when the job is created: it stays queued, unsent.
    with monkeypatch.context() as patched:
        patched.setattr("service.jobs.service.send_job", lambda job_id: False)
        with session_scope() as session:
            job_id = create_job(
                session,
                tenant_id=tenant.id,
                kind="audit",
                spec=audit_spec(model_row(tenant.id)),
                settings=settings,
            ).id
    assert job_row(job_id).enqueued_at is None
    assert reconcile_once(settings)["resent"] == 1
    assert job_row(job_id).enqueued_at is not None
    assert reconcile_once(settings)["resent"] == 0  # sent recently: not again yet
