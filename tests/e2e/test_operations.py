"""Operations end to end: JSON logs with the job id from a real worker process, request ids
from the real API, and a finished job in /metrics' histograms."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import LiveService
from tests.e2e.test_service import upload_model
from tests.model_files import digits_onnx, meta

pytestmark = pytest.mark.e2e


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """GAUNTLET_LOG_FORMAT=json for the processes live_service starts (requested first)."""
    monkeypatch.setenv("GAUNTLET_LOG_FORMAT", "json")
    return None


def wait_for_line(log: Path, text: str, start: int = 0, timeout: float = 30) -> str:
    """What ``log`` holds from byte ``start`` once ``text`` is in it."""
    deadline = time.monotonic() + timeout
    while True:
        written = log.read_bytes()[start:].decode(errors="replace")
        if text in written or time.monotonic() > deadline:
            return written
        time.sleep(0.2)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_every_line_a_job_logs_is_json_with_its_job_id(
    json_logs: None, live_service: LiveService
) -> None:
    model = upload_model(live_service, digits_onnx(), meta("onnx"), "digits.onnx")
    assert model["status"] == "ready", model
    worker_log = live_service.logs / "worker0.log"
    # The validation job's last line (Celery's "succeeded") comes after its final write.
    wait_for_line(worker_log, "succeeded in")
    before = len(worker_log.read_bytes())

    with live_service.client() as client:
        response = client.post(
            "/v1/jobs",
            json={
                "kind": "audit",
                "model_id": model["id"],
                "limit": 40,
                "attacks": [{"name": "fgsm", "eps": [0.1]}],
            },
            headers={"X-Request-ID": "e2e-request-1"},
        )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == "e2e-request-1"
    job_id = response.json()["id"]
    job = live_service.wait_for(
        f"/v1/jobs/{job_id}", lambda j: j["status"] in ("succeeded", "failed", "cancelled")
    )
    assert job["status"] == "succeeded", job

    # The job's lines: everything the worker wrote from the submission until the task's own
    # "succeeded" line (Celery's, written after the job's final write).
    written = wait_for_line(worker_log, "succeeded in", start=before)
    lines = _lines(written)
    assert len(lines) >= 3, written
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a worker line is not JSON: {line!r}\n{written}")
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        if entry["logger"].startswith("worker.reconciler"):
            continue  # the worker's main process, about other jobs (with their ids)
        assert entry.get("job_id") == job_id, entry
    messages = " ".join(entry["message"] for entry in entries)
    assert "received" in messages  # Celery's line in the main process
    assert "claimed by" in messages  # ours, in the pool process
    assert "succeeded in" in messages  # Celery's, in the pool process

    api_entries = [
        json.loads(line)
        for line in _lines((live_service.logs / "api.log").read_text())
        if line.startswith("{")
    ]
    submitted = [e for e in api_entries if "POST /v1/jobs " in e["message"]]
    assert [e.get("request_id") for e in submitted] == ["e2e-request-1"], api_entries
    assert all(e.get("request_id") for e in api_entries if e["logger"] == "uvicorn.access")

    # The finished job is in the histograms /metrics derives from the jobs table.
    with live_service.client() as client:
        page = client.get("/metrics").text
    counts = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }
    labels = (("kind", "audit"), ("status", "succeeded"))
    assert counts[("gauntlet_job_duration_seconds_count", labels)] == 1
    assert counts[("gauntlet_job_queue_wait_seconds_count", labels)] == 1
    duration = job_seconds(job)
    assert counts[("gauntlet_job_duration_seconds_sum", labels)] == pytest.approx(
        duration, abs=0.05
    )


def job_seconds(job: dict) -> float:
    import datetime as dt

    started = dt.datetime.fromisoformat(job["started_at"])
    finished = dt.datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()
