"""Long polls (``GET /v1/jobs/{id}?wait=``) and event streams (``/events``) on job rows that a
test changes from another thread, as a worker would."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.database import session_scope, utcnow
from service.jobs import repository
from service.tables import JobStatus
from tests import factories

OWNER = "test-worker"


@pytest.fixture
def tenant(make_tenant):
    return make_tenant()


def running_job(tenant_id: str) -> str:
    return factories.running_job(tenant_id, OWNER, 0.1)


def write_progress(job_id: str, fraction: float) -> None:
    with session_scope() as session:
        progress = {"fraction": fraction, "stage": "attack", "message": f"at {fraction}"}
        assert repository.write_progress(session, job_id, OWNER, progress, utcnow())


def finish(job_id: str) -> None:
    with session_scope() as session:
        assert repository.finish(
            session,
            job_id,
            OWNER,
            status=JobStatus.FAILED,
            now=utcnow(),
            error={"code": "test", "message": "finished by the test"},
        )


def events_of(text: str) -> list[tuple[str, str]]:
    found = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], lines["data"]))
    return found


def test_long_poll_answers_when_progress_changes(client: TestClient, tenant) -> None:
    job_id = running_job(tenant.id)
    watcher = client.app.state.job_watcher  # type: ignore[attr-defined]
    written: list[float] = []

    def change_once_waiting() -> None:
        # The change comes after the long poll has read its state (else it is no change).
        deadline = time.monotonic() + 10
        while watcher.waiters == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        write_progress(job_id, 0.5)
        written.append(time.monotonic())

    writer = threading.Thread(target=change_once_waiting)
    writer.start()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=tenant.headers)
    answered = time.monotonic()
    writer.join()
    assert response.status_code == 200, response.text
    assert response.json()["progress"]["fraction"] == 0.5
    assert written
    assert 0 <= answered - written[0] < 5, (written, answered)


def test_long_poll_times_out_unchanged(client: TestClient, tenant) -> None:
    job_id = running_job(tenant.id)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 1.5}, headers=tenant.headers)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["progress"]["fraction"] == 0.1
    assert elapsed >= 1.5


def test_long_poll_of_a_final_job_answers_at_once(client: TestClient, tenant) -> None:
    job_id = running_job(tenant.id)
    finish(job_id)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers=tenant.headers)
    assert time.monotonic() - started < 5
    assert response.json()["status"] == "failed"


@pytest.mark.parametrize("wait", [-1, 61, "soon", "nan"])
def test_wait_out_of_range_is_422(client: TestClient, tenant, wait) -> None:
    job_id = running_job(tenant.id)
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": wait}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "wait"


def test_other_tenants_and_unknown_jobs_are_404(client: TestClient, tenant, make_tenant) -> None:
    job_id = running_job(tenant.id)
    other = make_tenant()
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}?wait=5"):
        assert client.get(path, headers=other.headers).status_code == 404
    for path in ("/v1/jobs/j_missing/events", "/v1/jobs/j_missing?wait=5"):
        assert client.get(path, headers=tenant.headers).status_code == 404


def test_event_stream_sends_progress_then_the_final_job(client: TestClient, tenant) -> None:
    job_id = running_job(tenant.id)

    def drive() -> None:
        time.sleep(0.5)
        write_progress(job_id, 0.5)
        time.sleep(1.0)
        finish(job_id)

    driver = threading.Thread(target=drive)
    driver.start()
    response = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    driver.join()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events_of(response.text)
    progress = [json.loads(data) for name, data in found if name == "progress"]
    assert progress[0] == {
        "fraction": 0.1,
        "stage": "attack",
        "message": "fgsm",
        "status": "running",
    }
    assert {"fraction": 0.5, "stage": "attack", "message": "at 0.5", "status": "running"} in (
        progress
    )
    assert progress[-1]["status"] == "failed"
    name, data = found[-1]
    assert name == "status"
    final = json.loads(data)
    assert final["id"] == job_id
    assert final["status"] == "failed"
    assert final["error"]["code"] == "test"
    assert final == client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()


def test_waiters_beyond_the_cap_get_503(
    client: TestClient, tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = client.app.state.job_watcher  # type: ignore[attr-defined]
    monkeypatch.setattr(watcher, "max_waiters", 1)
    job_id = running_job(tenant.id)
    results: list[int] = []
    first = threading.Thread(
        target=lambda: results.append(
            client.get(f"/v1/jobs/{job_id}?wait=3", headers=tenant.headers).status_code
        )
    )
    first.start()
    deadline = time.monotonic() + 2
    while watcher.waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    second = client.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers)
    first.join()
    assert results == [200]
    assert second.status_code == 503
    assert second.json()["code"] == "too_many_waiters"
    assert second.headers["retry-after"]
    assert watcher.waiters == 0
