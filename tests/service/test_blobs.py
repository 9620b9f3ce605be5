"""Deleting a model or dataset deletes its bytes unless another row still holds them.

These run with whichever store the session uses: the local folder, or S3 with
``GAUNTLET_TEST_ARTIFACT_STORE=s3`` (CI runs them both ways).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.database import session_scope
from service.settings import Settings
from service.storage import get_store
from service.tables import Artifact, JobStatus, new_id
from tests.factories import audit_spec, job_row, model_row, npz_bytes, queued_job

pytestmark = pytest.mark.artifacts

META = {"name": "m", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}


def upload_model(client: TestClient, headers: dict[str, str], data: bytes) -> dict:
    response = client.post(
        "/v1/models",
        headers=headers,
        files={"file": ("model.onnx", data)},
        data={"meta": json.dumps(META)},
    )
    assert response.status_code == 202, response.text
    return response.json()


def upload_dataset(client: TestClient, headers: dict[str, str], data: bytes) -> dict:
    response = client.post("/v1/datasets", headers=headers, files={"file": ("d.npz", data)})
    assert response.status_code == 201, response.text
    return response.json()


def dataset_file() -> bytes:
    rng = np.random.default_rng(0)
    return npz_bytes(x=rng.random((4, 1, 8, 8), dtype=np.float32), y=np.arange(4, dtype=np.int64))


def test_deleting_a_model_deletes_its_file_and_cancels_its_validation(
    client: TestClient, make_tenant
) -> None:
    tenant = make_tenant()
    model = upload_model(client, tenant.headers, b"model bytes of one model")
    sha256 = hashlib.sha256(b"model bytes of one model").hexdigest()
    assert get_store().exists(sha256)
    assert client.delete(f"/v1/models/{model['id']}", headers=tenant.headers).status_code == 204
    assert not get_store().exists(sha256)
    validation = client.get(f"/v1/jobs/{model['validation_job_id']}", headers=tenant.headers)
    assert validation.json()["status"] == "cancelled"


def test_shared_bytes_stay_until_the_last_row_goes(client: TestClient, make_tenant) -> None:
    """Two tenants' models and a dataset with the same bytes: one blob, deleted with the
    last of them."""
    first, second = make_tenant(), make_tenant()
    data = dataset_file()
    sha256 = hashlib.sha256(data).hexdigest()
    model_a = upload_model(client, first.headers, data)
    model_b = upload_model(client, second.headers, data)
    dataset = upload_dataset(client, first.headers, data)
    assert model_a["file_sha256"] == model_b["file_sha256"] == sha256

    assert client.delete(f"/v1/models/{model_a['id']}", headers=first.headers).status_code == 204
    assert get_store().exists(sha256)
    downloaded = client.get(f"/v1/models/{model_b['id']}/file", headers=second.headers)
    assert downloaded.status_code == 200
    assert downloaded.content == data

    assert client.delete(f"/v1/models/{model_b['id']}", headers=second.headers).status_code == 204
    assert get_store().exists(sha256)

    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=first.headers).status_code == 204
    assert not get_store().exists(sha256)


def test_a_job_artifact_keeps_the_bytes(client: TestClient, make_tenant, settings) -> None:
    tenant = make_tenant()
    data = dataset_file()
    dataset = upload_dataset(client, tenant.headers, data)
    model_id = model_row(tenant.id, data=b"another model")
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    with session_scope() as session:
        session.add(
            Artifact(
                id=new_id("a"),
                tenant_id=tenant.id,
                job_id=job_id,
                name="same.npz",
                sha256=dataset["file_sha256"],
                size=len(data),
                content_type="application/octet-stream",
            )
        )
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=tenant.headers).status_code == 204
    assert get_store().exists(dataset["file_sha256"])
    artifact = client.get(f"/v1/jobs/{job_id}/artifacts/same.npz", headers=tenant.headers)
    assert artifact.status_code == 200
    assert artifact.content == data
    assert artifact.headers["content-length"] == str(len(data))


def test_a_running_job_keeps_a_deleted_models_file_until_it_ends(
    client: TestClient, make_tenant, settings: Settings
) -> None:
    from worker.lease import Lease

    tenant = make_tenant()
    model_id = model_row(tenant.id, data=b"model of a running audit")
    sha256 = hashlib.sha256(b"model of a running audit").hexdigest()
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    lease = Lease(job_id, settings)
    assert lease.claim()

    assert client.delete(f"/v1/models/{model_id}", headers=tenant.headers).status_code == 204
    assert get_store().exists(sha256), "the running audit still reads it"

    assert lease.finish(JobStatus.FAILED, error={"code": "test", "message": "done"})
    row = job_row(job_id)
    assert row is not None
    assert row.status == JobStatus.FAILED
    assert not get_store().exists(sha256)


def test_a_failed_delete_keeps_the_bytes(client: TestClient, make_tenant) -> None:
    """A delete refused (another tenant's model) touches nothing."""
    owner, intruder = make_tenant(), make_tenant()
    model_id = model_row(owner.id, data=b"not yours")
    sha256 = hashlib.sha256(b"not yours").hexdigest()
    assert client.delete(f"/v1/models/{model_id}", headers=intruder.headers).status_code == 404
    assert get_store().exists(sha256)


def test_cancelling_a_queued_audit_of_a_deleted_model_releases_its_file(
    client: TestClient, make_tenant, settings: Settings
) -> None:
    tenant = make_tenant()
    model_id = model_row(tenant.id, data=b"model of a queued audit")
    sha256 = hashlib.sha256(b"model of a queued audit").hexdigest()
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    assert client.delete(f"/v1/models/{model_id}", headers=tenant.headers).status_code == 204
    assert get_store().exists(sha256), "the queued audit will read it"
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert not get_store().exists(sha256)


def test_a_job_given_up_by_the_reconciler_releases_a_deleted_models_file(
    client: TestClient, make_tenant, settings: Settings
) -> None:
    import datetime as dt

    from sqlalchemy import update

    from service.tables import Job
    from worker.lease import Lease
    from worker.reconciler import reconcile_once

    tenant = make_tenant()
    model_id = model_row(tenant.id, data=b"model of a lost audit")
    sha256 = hashlib.sha256(b"model of a lost audit").hexdigest()
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    assert Lease(job_id, settings).claim()
    assert client.delete(f"/v1/models/{model_id}", headers=tenant.headers).status_code == 204
    assert get_store().exists(sha256)
    with session_scope() as session:  # its worker died on its last attempt
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                attempt=Job.max_attempts,
                lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5),
            )
        )
    assert reconcile_once(settings)["failed"] == 1
    assert not get_store().exists(sha256)


def test_a_replaced_checkpoint_releases_the_earlier_ones_bytes(
    make_tenant, settings: Settings
) -> None:
    from worker.lease import Lease

    tenant = make_tenant()
    model_id = model_row(tenant.id, data=b"model of a training")
    job_id = queued_job(settings, tenant.id, audit_spec(model_id))
    lease = Lease(job_id, settings)
    assert lease.claim()
    first = lease.put_artifact("checkpoint.pt", b"epoch 1", "application/octet-stream")
    assert get_store().exists(first["sha256"])
    second = lease.put_artifact("checkpoint.pt", b"epoch 2", "application/octet-stream")
    assert not get_store().exists(first["sha256"])
    assert get_store().read_bytes(second["sha256"]) == b"epoch 2"
    again = lease.put_artifact("checkpoint.pt", b"epoch 2", "application/octet-stream")
    assert again["sha256"] == second["sha256"]
    assert get_store().exists(second["sha256"]), "the same bytes, still referenced"
    assert lease.read_artifact("checkpoint.pt") == b"epoch 2"
