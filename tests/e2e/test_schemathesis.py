"""The OpenAPI document is the truth: Schemathesis against the running service finds nothing.

Schemathesis (``st run``) reads ``/openapi.json`` from the real API (uvicorn, the test's
database and broker, a Celery worker) and sends generated requests, valid and invalid, to
every operation, with every check it has: no 5xx, every status code, content type, header
and body as documented, invalid input refused, valid input accepted, a missing key refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adversarial.datasets import load_builtin
from tests.e2e.conftest import LiveService
from tests.e2e.test_service import upload_model
from tests.factories import npz_bytes
from tests.model_files import digits_onnx, meta

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation and phase: enough to reach every documented status here in under 3 minutes.
MAX_EXAMPLES = int(os.environ.get("GAUNTLET_TEST_SCHEMATHESIS_EXAMPLES", "25"))


def _schemathesis() -> Path:
    command = Path(sys.executable).parent / "st"
    if not command.exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    return command


def _seed(service: LiveService) -> dict[str, str]:
    """A ready model, an uploaded dataset and a succeeded audit with an artifact: ids that
    reach every operation's own logic, not just its 404."""
    model = upload_model(service, digits_onnx(), meta("onnx"), "digits.onnx")
    assert model["status"] == "ready", model
    x, y = load_builtin("digits", "test")
    with service.client() as client:
        dataset = client.post(
            "/v1/datasets",
            files={"file": ("digits.npz", npz_bytes(x=x.numpy()[:40], y=y.numpy()[:40]))},
        )
        assert dataset.status_code == 201, dataset.text
        job = client.post(
            "/v1/jobs",
            json={
                "kind": "audit",
                "model_id": model["id"],
                "dataset_id": dataset.json()["id"],
                "attacks": [{"name": "fgsm", "eps": [0.1]}],
            },
        )
        assert job.status_code == 202, job.text
    finished = service.wait_for(
        f"/v1/jobs/{job.json()['id']}", lambda j: j["status"] in ("succeeded", "failed")
    )
    assert finished["status"] == "succeeded", finished
    return {
        "path.model_id": model["id"],
        "path.dataset_id": dataset.json()["id"],
        "path.job_id": finished["id"],
        "path.name": "per_sample.npz",
    }


def test_schemathesis_finds_no_failures(live_service: LiveService, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.ndjson"
    config = tmp_path / "schemathesis.toml"
    parameters = "".join(f'"{name}" = "{value}"\n' for name, value in _seed(live_service).items())
    config.write_text(CONFIG.read_text() + "\n[parameters]\n" + parameters)
    command = [
        str(_schemathesis()),
        "--config-file",
        str(config),
        "run",
        f"{live_service.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {live_service.tenant.key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        os.environ.get("GAUNTLET_TEST_SCHEMATHESIS_SEED", "0"),
        # One worker: CPython 3.11.7's ast.parse is not thread-safe (gh-106905), and
        # Hypothesis parses lambdas' sources from every worker thread.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--output-truncate",
        "false",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
        check=False,
    )
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    requests = sum(_count_requests(event) for event in events)
    sys.stderr.write(f"schemathesis: {requests} requests\n{output[-4000:]}\n")
    assert requests > 500, f"schemathesis sent only {requests} requests\n{output}"
    assert result.returncode == 0, output[-30000:] + "\n" + live_service.log_text()


def _count_requests(event: dict) -> int:
    """Requests recorded in one ndjson event (the ``ScenarioFinished`` events carry them)."""
    count = 0
    for name, body in event.items():
        if name == "ScenarioFinished" and isinstance(body, dict):
            recorder = body.get("recorder", {})
            count += len(recorder.get("interactions", {}))
    return count
