"""End to end: a real audit's event stream and long polls, over HTTP to a real uvicorn."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from service.database import session_scope, utcnow
from service.jobs import repository
from tests import factories
from tests.e2e.conftest import LiveService
from tests.e2e.test_service import upload_model
from tests.model_files import digits_onnx, meta

pytestmark = pytest.mark.e2e

OWNER = "e2e-test-driver"


def parse_events(lines: list[str]) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name is not None:
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = None
    return events


def test_event_stream_of_a_real_audit(live_service: LiveService) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    spec = {
        "kind": "audit",
        "model_id": model["id"],
        "attacks": [
            {"name": "fgsm", "eps": [0.05, 0.1]},
            {"name": "pgd", "eps": [0.1], "steps": 40, "step_size": 0.01},
        ],
    }
    with live_service.client() as client:
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        lines = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                lines.append(line)
        final = client.get(f"/v1/jobs/{job_id}").json()
    events = parse_events(lines)
    progress = [data for name, data in events if name == "progress"]
    assert len(progress) >= 2, lines
    assert set(progress[0]) == {"fraction", "stage", "message", "status"}
    assert any(p["status"] == "running" for p in progress), progress
    assert progress[-1]["status"] == "succeeded"
    name, data = events[-1]
    assert name == "status"
    assert data == final
    assert final["status"] == "succeeded", final


def running_job(tenant_id: str) -> str:
    return factories.running_job(tenant_id, OWNER, 0.2)


def test_long_poll_returns_early_on_a_change_and_at_the_timeout(
    live_service: LiveService,
) -> None:
    job_id = running_job(live_service.tenant.id)
    with live_service.client() as client:
        started = time.monotonic()
        unchanged = client.get(f"/v1/jobs/{job_id}", params={"wait": 2})
        assert time.monotonic() - started >= 2
        assert unchanged.status_code == 200
        assert unchanged.json()["progress"]["fraction"] == 0.2

    with httpx.Client(base_url=live_service.url, headers=live_service.tenant.headers) as client:
        started = time.monotonic()
        request = client.build_request("GET", f"/v1/jobs/{job_id}", params={"wait": 30})
        # Send, then change the row while the request waits on the server.
        answer: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answer.append(client.send(request)))
        thread.start()
        time.sleep(1)
        with session_scope() as session:
            progress = {"fraction": 0.6, "stage": "attack", "message": "pgd"}
            assert repository.write_progress(session, job_id, OWNER, progress, utcnow())
        thread.join(timeout=30)
        elapsed = time.monotonic() - started
    assert answer, "no answer"
    assert answer[0].status_code == 200
    assert answer[0].json()["progress"]["fraction"] == 0.6
    assert elapsed < 5, elapsed


def test_unknown_job_is_404(live_service: LiveService) -> None:
    with live_service.client() as client:
        assert client.get("/v1/jobs/j_nope/events").status_code == 404
        assert client.get("/v1/jobs/j_nope", params={"wait": 5}).status_code == 404


def test_a_client_that_leaves_frees_its_slot(live_service: LiveService) -> None:
    assert live_service.api is not None
    live_service.kill(live_service.api)
    live_service.environment["GAUNTLET_MAX_JOB_WAITERS"] = "1"
    live_service.start_api()
    job_id = running_job(live_service.tenant.id)
    for attempt in range(3):
        with live_service.client() as client:
            with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()  # kept: dropping it would close the connection
                assert next(lines) == "retry: 3000"
                busy = client.get(f"/v1/jobs/{job_id}", params={"wait": 5})
                assert busy.status_code == 503, (attempt, busy.text)
                assert busy.json()["code"] == "too_many_waiters"
        # The stream's connection is closed: the server notices and frees the slot.
        deadline = time.monotonic() + 5
        with live_service.client() as client:
            while True:
                answer = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.5})
                if answer.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert answer.status_code == 200, answer.text
