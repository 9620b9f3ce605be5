"""The ``gauntlet`` command, run as a pipeline runs it, against the real service processes
(uvicorn and a Celery worker on the test database and broker)."""

from __future__ import annotations

import json
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture
from tests.client.conftest import LiveService, run_cli
from tests.client.proxy import DroppingProxy
from tests.model_files import malicious_pt, meta, onnx_bytes, write_upload_files

pytestmark = pytest.mark.e2e
# The tests marked 'artifacts' upload models and datasets and read job artifacts: CI runs them
# again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3). The gradient-masked one moves the
# same files as the passing-gate one; its minute is attack time, not storage.

# Small attacks on the 360 test digits: each audit takes a second or two.
ATTACKS = ("--attack", "fgsm:eps=0.1", "--attack", "pgd:eps=0.1,steps=5", "--progress", "lines")


def gauntlet(service: LiveService, *args: str, cwd: Path | None = None):  # type: ignore[no-untyped-def]
    return run_cli(*args, server=service.url, api_key=service.tenant.key, cwd=cwd)


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == "gauntlet"
    return {case.get("name", ""): case for case in suite.findall("testcase")}


def named(cases: dict[str, ET.Element]) -> dict[str, ET.Element]:
    """The JUnit cases other than the validity checks."""
    return {name: case for name, case in cases.items() if not name.startswith("validity:")}


def audit_jobs(service: LiveService) -> list[dict]:
    with service.client() as client:
        return client.get("/v1/jobs", params={"kind": "audit"}).json()["items"]


@pytest.mark.artifacts
def test_passing_gate_exits_0_and_writes_junit_json_markdown(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = write_upload_files(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = gauntlet(
        live_service,
        "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--gate", "clean>=0.9", "--gate", "fgsm@0.1>=0.05", "--gate", "pgd@0.1>=0.05",
        "--junit", str(out / "gauntlet.xml"), "--json", str(out / "gauntlet.json"),
        "--markdown", str(out / "comment.md"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gate: PASSED" in result.stdout

    cases = junit_cases(out / "gauntlet.xml")
    assert sorted(named(cases)) == ["clean_accuracy", "fgsm@linf:0.1", "pgd@linf:0.1"]
    # Every validity warning that would make the numbers suspect is a check of its own.
    assert len(cases) - len(named(cases)) == 10
    assert "validity:zero_gradients" in cases
    for case in cases.values():
        assert case.get("classname") == "gauntlet.gate"
        assert case.find("failure") is None
        assert case.find("error") is None

    document = json.loads((out / "gauntlet.json").read_text())
    assert (document["verdict"], document["exit_code"]) == ("passed", 0)
    job = document["job"]
    assert job["status"] == "succeeded"
    assert job["result"]["num_examples"] == 360
    assert [c["name"] for c in document["checks"]] == [
        c["name"] for c in job["result"]["gate"]["checks"]
    ]
    comment = (out / "comment.md").read_text()
    assert comment.startswith("### ✅ Gauntlet robustness audit: gate passed")
    assert f"/v1/jobs/{job['id']}/report" in comment

    # The other commands, on what the audit left.
    listing = gauntlet(live_service, "jobs", "list", "--kind", "audit")
    assert listing.returncode == 0
    assert job["id"] in listing.stdout
    shown = gauntlet(live_service, "jobs", "show", job["id"])
    assert shown.returncode == 0
    assert "Gate: PASSED" in shown.stdout
    models = gauntlet(live_service, "models", "list")
    assert models.returncode == 0
    assert job["model_id"] in models.stdout
    datasets = gauntlet(live_service, "datasets", "list")
    assert datasets.returncode == 0
    assert "builtin:digits" in datasets.stdout
    waited = gauntlet(live_service, "wait", job["id"], "--junit", str(out / "wait.xml"))
    assert waited.returncode == 0
    assert sorted(junit_cases(out / "wait.xml")) == sorted(cases)
    report = gauntlet(live_service, "report", job["id"], "-o", str(out / "report.html"))
    assert report.returncode == 0
    assert "<html" in (out / "report.html").read_text().lower()
    cancel = gauntlet(live_service, "cancel", job["id"])
    assert cancel.returncode == 2
    assert "job_finished" in cancel.stderr


@pytest.mark.artifacts
def test_failing_gate_exits_1_and_a_rerun_reuses_model_data_and_job(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = write_upload_files(tmp_path)
    x, y = load_builtin("digits", "test")
    np.savez(tmp_path / "digits_test.npz", x=x.numpy(), y=y.numpy())
    command = (
        "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--dataset", str(tmp_path / "digits_test.npz"),
        "--gate", "clean>=0.9", "--gate", "pgd@0.1>=0.99", "--junit", str(tmp_path / "g.xml"),
    )  # fmt: skip
    first = gauntlet(live_service, *command)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "Gate: FAILED (1 of 12)" in first.stdout
    cases = junit_cases(tmp_path / "g.xml")
    assert cases["clean_accuracy"].find("failure") is None
    failure = cases["pgd@linf:0.1"].find("failure")
    assert failure is not None
    assert "below the threshold 99.0%" in failure.get("message", "")

    # The pipeline is retried: same model, data and job; the same verdict.
    second = gauntlet(live_service, *command)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "reusing model" in second.stderr
    assert "reusing dataset" in second.stderr
    assert "already exists for this audit (succeeded)" in second.stderr
    assert len(audit_jobs(live_service)) == 1
    with live_service.client() as client:
        assert len(client.get("/v1/models").json()["items"]) == 1
        uploads = [d for d in client.get("/v1/datasets").json()["items"] if not d["builtin"]]
        assert len(uploads) == 1


@pytest.mark.artifacts
def test_invalid_models_exit_2_with_the_servers_error_code(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = write_upload_files(tmp_path)
    wrong_meta = tmp_path / "three-classes.meta.json"
    wrong_meta.write_text(json.dumps(meta("onnx", num_classes=3)))
    result = gauntlet(
        live_service, "audit", str(files["model"]), "--meta", str(wrong_meta), *ATTACKS,
        "--junit", str(tmp_path / "g.xml"),
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad_output_shape" in result.stderr
    error = junit_cases(tmp_path / "g.xml")["audit job"].find("error")
    assert error is not None
    assert "bad_output_shape" in error.get("message", "")

    canary = tmp_path / "canary"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(malicious_pt(canary))
    evil_meta = tmp_path / "evil.meta.json"
    evil_meta.write_text(json.dumps(meta("pt", architecture={"name": "mlp"})))
    result = gauntlet(live_service, "audit", str(evil), "--meta", str(evil_meta), *ATTACKS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pickle_refused" in result.stderr
    assert not canary.exists()
    assert audit_jobs(live_service) == []


def test_unreachable_server_exits_2_quickly_with_a_clear_message(tmp_path: Path) -> None:
    files = {"model": tmp_path / "model.onnx", "meta": tmp_path / "model.meta.json"}
    files["model"].write_bytes(b"never sent")
    files["meta"].write_text(json.dumps(meta("onnx")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = run_cli(
        "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--junit", str(tmp_path / "g.xml"),
        server=f"http://127.0.0.1:{port}", api_key="gk_whatever",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert f"cannot reach the Gauntlet server at http://127.0.0.1:{port}" in result.stderr
    # Five tries with backoff (0.25-0.5, 0.5-1, 1-2, 2-4 s): at most 7.5 s of waiting.
    assert elapsed < 30, elapsed
    assert junit_cases(tmp_path / "g.xml")["audit job"].find("error") is not None


@pytest.mark.artifacts
def test_a_submission_retried_after_a_dropped_response_makes_one_job(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = write_upload_files(tmp_path)
    host, port = live_service.url.removeprefix("http://").split(":")
    with DroppingProxy((host, int(port))) as proxy:
        result = run_cli(
            "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
            "--gate", "pgd@0.1>=0.05",
            server=proxy.url, api_key=live_service.tenant.key,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.dropped == 1
    assert "retrying" in result.stderr
    assert "already exists for this audit" in result.stderr  # the retry got the same job
    (job,) = audit_jobs(live_service)
    assert job["status"] == "succeeded"


@pytest.mark.artifacts
def test_baseline_comparison_bounds_the_drop(live_service: LiveService, tmp_path: Path) -> None:
    files = write_upload_files(tmp_path)
    baseline = gauntlet(
        live_service, "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--json", str(tmp_path / "baseline.json"),
    )  # fmt: skip
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    baseline_id = json.loads((tmp_path / "baseline.json").read_text())["job"]["model_id"]

    # A candidate that was never trained: about 10% accurate.
    torch.manual_seed(0)
    untrained = build_architecture("small_cnn", {}, (1, 8, 8), 10)
    (tmp_path / "untrained.onnx").write_bytes(onnx_bytes(untrained, torch.rand(2, 1, 8, 8)))
    (tmp_path / "untrained.meta.json").write_text(json.dumps(meta("onnx", name="untrained")))
    candidate = gauntlet(
        live_service, "audit", str(tmp_path / "untrained.onnx"),
        "--meta", str(tmp_path / "untrained.meta.json"), *ATTACKS,
        "--baseline", baseline_id, "--max-drop", "0.02",
        "--junit", str(tmp_path / "g.xml"), "--markdown", str(tmp_path / "comment.md"),
    )  # fmt: skip
    assert candidate.returncode == 1, candidate.stdout + candidate.stderr
    cases = named(junit_cases(tmp_path / "g.xml"))
    assert sorted(cases) == [
        "clean_accuracy drop vs baseline",
        "fgsm@linf:0.1 drop vs baseline",
        "pgd@linf:0.1 drop vs baseline",
    ]
    failure = cases["clean_accuracy drop vs baseline"].find("failure")
    assert failure is not None
    assert "more than the allowed 2.0 pp" in failure.get("message", "")
    assert "| baseline | change |" in (tmp_path / "comment.md").read_text()
    # The baseline's audit on this spec is the first run's job: one new job, the candidate's.
    jobs = audit_jobs(live_service)
    assert sorted(j["model_id"] == baseline_id for j in jobs) == [False, True]

    # The baseline compared with itself: no drop, no new job.
    same = gauntlet(
        live_service, "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--baseline", baseline_id, "--max-drop", "0",
    )  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert len(audit_jobs(live_service)) == 2


def test_a_gradient_masked_model_never_passes_its_gate(
    live_service: LiveService, tmp_path: Path
) -> None:
    # A CNN whose first layer is round(4x)/4: every input gradient is zero, so PGD leaves it
    # looking robust (over 90% at eps 0.1). The gate must not pass it: not with the default
    # settings (the server's AutoAttack, whose Square sees through the masking, plus the PGD
    # the gate names), and not with the quick preset's weak attacks, which its validity
    # checks disprove.
    masked = write_upload_files(tmp_path / "masked", masked=True)
    common = ("audit", str(masked["model"]), "--meta", str(masked["meta"]), "--eps", "0.1")
    default = gauntlet(
        live_service, *common, "--gate", "pgd@0.1>=0.9", "--json", str(tmp_path / "d.json")
    )
    assert default.returncode == 1, default.stdout + default.stderr
    document = json.loads((tmp_path / "d.json").read_text())
    result = document["job"]["result"]
    assert [a["name"] for a in result["attacks"]] == ["autoattack", "pgd"]
    pgd = next(c for c in document["checks"] if c["name"] == "pgd@linf:0.1")
    # PGD alone would pass; the worst case beside it shows why it must not be read alone.
    assert pgd["passed"]
    assert pgd["value"] >= 0.9
    assert pgd["worst_case"] < pgd["value"]
    fired = {
        c["name"] for c in document["checks"] if c["category"] == "validity" and not c["passed"]
    }
    assert "validity:zero_gradients" in fired
    assert "worst case" in default.stdout

    quick = gauntlet(live_service, *common, "--preset", "quick", "--gate", "pgd@0.1>=0.9")
    assert quick.returncode == 1, quick.stdout + quick.stderr
    assert "fired: " in quick.stdout
    assert "zero_gradients" in quick.stdout
    assert "upper bound" in quick.stdout  # the quick preset's numbers say what they are

    # The honest CNN with a gate it meets still passes, with the default settings.
    honest = write_upload_files(tmp_path / "honest")
    passed = gauntlet(
        live_service, "audit", str(honest["model"]), "--meta", str(honest["meta"]),
        "--eps", "0.1", "--gate", "robust@0.1>=0.3", "--gate", "pgd@0.1>=0.3",
    )  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "validity checks: 10 of 10 held" in passed.stdout


@pytest.mark.artifacts
def test_wait_exits_2_on_what_has_no_verdict(live_service: LiveService, tmp_path: Path) -> None:
    files = write_upload_files(tmp_path)
    audited = gauntlet(
        live_service, "audit", str(files["model"]), "--meta", str(files["meta"]), *ATTACKS,
        "--json", str(tmp_path / "a.json"),
    )  # fmt: skip
    assert audited.returncode == 0, audited.stdout + audited.stderr
    model_id = json.loads((tmp_path / "a.json").read_text())["job"]["model_id"]
    with live_service.client() as client:
        validation = client.get("/v1/models/" + model_id).json()["validation_job_id"]
        # An audit submitted without a gate (through the API) has no verdict to pass.
        ungated = client.post(
            "/v1/jobs",
            json={
                "kind": "audit",
                "model_id": model_id,
                "attacks": [{"name": "fgsm", "eps": [0.1]}],
            },
        ).json()
    not_audit = gauntlet(live_service, "wait", validation)
    assert not_audit.returncode == 2, not_audit.stdout + not_audit.stderr
    assert "not an audit" in not_audit.stderr
    no_gate = gauntlet(live_service, "wait", ungated["id"])
    assert no_gate.returncode == 2, no_gate.stdout + no_gate.stderr
    assert "without a gate verdict" in no_gate.stderr
