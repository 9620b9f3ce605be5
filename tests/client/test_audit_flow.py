"""The audit workflow against an in-memory API: reuse, idempotency, baseline, waiting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from gauntlet_client.audit import AuditPlan, audit_key, comparable_meta, run_audit, wait_jobs
from gauntlet_client.http import DeadlineExceeded, GauntletClient, GauntletError, RetryPolicy
from gauntlet_client.progress import Progress
from gauntlet_client.spec import build_attacks, build_gate, parse_attack, parse_gate
from gauntlet_client.verdict import Check, Outcome
from tests.client.fake_server import FakeServer
from tests.client.test_http import Clock

META = {"name": "digits", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}


def connect(server: FakeServer, clock: Clock | None = None, **kwargs) -> GauntletClient:  # type: ignore[no-untyped-def]
    clock = clock or Clock()
    return GauntletClient(
        "http://fake",
        "gk_test",
        retry=RetryPolicy(attempts=3),
        transport=server.transport(),
        sleep=clock.sleep,
        clock=clock,
        draw=lambda: 0.0,
        **kwargs,
    )


def plan(tmp_path: Path, gates: tuple[str, ...] = ("pgd@0.1>=0.4",), **kwargs) -> AuditPlan:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    attacks = build_attacks([parse_attack("pgd:eps=0.1,steps=5")])
    return AuditPlan(
        model_path=model,
        model_bytes=model.read_bytes(),
        meta=dict(META),
        dataset=kwargs.pop("dataset", "builtin:digits"),
        attacks=attacks,
        gate=build_gate([parse_gate(g) for g in gates]),
        **kwargs,
    )


def named(outcome: Outcome) -> list[Check]:
    """The checks other than the validity checks."""
    return [c for c in outcome.checks if c.kind != "validity"]


def audit(server: FakeServer, audit_plan: AuditPlan, **kwargs) -> tuple[Outcome, str]:  # type: ignore[no-untyped-def]
    log = io.StringIO()
    outcome = Outcome(server="http://fake")
    with connect(server, **kwargs) as client:
        run_audit(client, audit_plan, Progress(log, tty=False, interval=0), outcome)
    return outcome, log.getvalue()


def test_upload_validate_submit_wait_pass(tmp_path: Path) -> None:
    server = FakeServer(validation_polls=2, job_polls=2)
    outcome, log = audit(server, plan(tmp_path))
    assert outcome.exit_code == 0
    assert [c.name for c in named(outcome)] == ["pgd@linf:0.1"]
    assert [c.name for c in outcome.checks if c.kind == "validity"] == [
        "validity:zero_gradients",
        "validity:not_broken_at_large_eps",
        "validity:randomized_model",
    ]
    assert "uploaded model.onnx as model m_1 (validating)" in log
    assert "submitted audit job j_1" in log
    assert "audit j_1: running 50% attacking: pgd eps=0.1" in log
    (job,) = server.jobs.values()
    assert job["spec"]["attacks"] == [{"name": "pgd", "eps": [0.1], "steps": 5}]
    assert "preset" not in job["spec"]  # the server's default preset runs first


def test_failing_gate(tmp_path: Path) -> None:
    outcome, _ = audit(FakeServer(accuracy=lambda _m: 0.5), plan(tmp_path))
    assert outcome.exit_code == 1
    assert [c.passed for c in named(outcome)] == [False]


def test_invalid_model_is_an_error_with_the_servers_code(tmp_path: Path) -> None:
    server = FakeServer(model_status="invalid")
    outcome = Outcome(server="http://fake")
    with connect(server) as client, pytest.raises(GauntletError, match=r"\[bad_output_shape\]"):
        run_audit(client, plan(tmp_path), Progress(io.StringIO()), outcome)
    assert server.jobs == {}


def test_a_second_run_reuses_the_model_and_the_job(tmp_path: Path) -> None:
    server = FakeServer()
    first, _ = audit(server, plan(tmp_path))
    second, log = audit(server, plan(tmp_path))
    assert len(server.models) == 1
    assert len(server.jobs) == 1
    assert second.job is not None
    assert first.job is not None
    assert second.job["id"] == first.job["id"]
    assert "reusing model m_1 (ready)" in log
    assert "already exists for this audit" in log
    assert server.count("POST", "/v1/models") == 1


def test_other_meta_is_another_model(tmp_path: Path) -> None:
    server = FakeServer()
    audit(server, plan(tmp_path))
    renamed = plan(tmp_path)
    renamed.meta["name"] = "digits-v2"
    audit(server, renamed)
    assert len(server.models) == 2
    no_reuse = plan(tmp_path, reuse=False)
    audit(server, no_reuse)
    assert len(server.models) == 3


def test_meta_is_compared_as_the_server_returns_it() -> None:
    stored = {**META, "input_range": [0.0, 1.0], "normalization": None, "architecture": None}
    assert comparable_meta(META) == comparable_meta(stored)
    assert comparable_meta({**META, "input_range": [0, 255]}) != comparable_meta(stored)
    assert comparable_meta({"name": "x"}) is None


def test_an_upload_whose_answer_was_lost_is_found_not_repeated(tmp_path: Path) -> None:
    server = FakeServer()
    dropped = []

    def lose_the_first_upload_answer(request: httpx.Request, _response: httpx.Response) -> None:
        if request.method == "POST" and request.url.path == "/v1/models" and not dropped:
            dropped.append(request)
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    server.after = lose_the_first_upload_answer
    outcome, log = audit(server, plan(tmp_path, reuse=False))
    assert outcome.exit_code == 0
    assert len(server.models) == 1
    assert len(dropped) == 1
    assert "looking for the model before uploading again" in log


def test_a_submission_whose_answer_was_lost_makes_one_job(tmp_path: Path) -> None:
    server = FakeServer()
    dropped = []

    def lose_the_first_job_answer(request: httpx.Request, _response: httpx.Response) -> None:
        if request.method == "POST" and request.url.path == "/v1/jobs" and not dropped:
            dropped.append(request)
            raise httpx.ReadError("connection reset by peer")

    server.after = lose_the_first_job_answer
    outcome, _ = audit(server, plan(tmp_path))
    assert outcome.exit_code == 0
    assert len(server.jobs) == 1
    assert server.count("POST", "/v1/jobs") == 2


def test_a_model_still_validating_at_submission_is_waited_for(tmp_path: Path) -> None:
    server = FakeServer()
    audit_plan = plan(tmp_path)
    clock = Clock()
    first_read = []

    def say_ready_once(request: httpx.Request) -> httpx.Response | None:
        # The model reads as ready once, but the job endpoint still sees it validating.
        if request.method == "GET" and request.url.path == "/v1/models/m_1" and not first_read:
            first_read.append(request)
            server.models["m_1"]["status"] = "ready"
            response = httpx.Response(200, json=server.models["m_1"])
            server.models["m_1"]["status"] = "validating"
            server.polls["m_1"] = -100
            return response
        if request.method == "POST" and request.url.path == "/v1/jobs" and clock.sleeps:
            server.models["m_1"]["status"] = "ready"
        return None

    server.before = say_ready_once
    outcome, _ = audit(server, audit_plan, clock=clock)
    assert outcome.exit_code == 0
    assert 2.0 in clock.sleeps  # the 409's Retry-After


def test_a_job_that_failed_before_is_submitted_again(tmp_path: Path) -> None:
    server = FakeServer(job_outcomes=["failed"])
    first, _ = audit(server, plan(tmp_path))
    assert first.exit_code == 2
    assert "[worker_lost]" in (first.problem() or "")
    second, log = audit(server, plan(tmp_path))
    assert second.exit_code == 0
    assert "audit job j_1 for this audit failed; submitting it again" in log
    assert len(server.jobs) == 2
    # A third run finds the succeeded second job through the same chain of keys.
    third, _ = audit(server, plan(tmp_path))
    assert third.job is not None
    assert third.job["id"] == "j_2"
    assert len(server.jobs) == 2


def test_a_given_key_used_for_another_audit_is_a_clear_error(tmp_path: Path) -> None:
    server = FakeServer()
    audit(server, plan(tmp_path, idempotency_key="run-42"))
    other = plan(tmp_path, gates=("pgd@0.1>=0.1",), idempotency_key="run-42")
    with pytest.raises(GauntletError, match="give each audit its own --idempotency-key"):
        audit(server, other)


def test_the_derived_key_depends_on_every_input() -> None:
    spec = {"kind": "audit", "model_id": "m_1"}
    key = audit_key("sha", META, spec, "builtin:digits", "0.1.0+abc")
    assert key == audit_key("sha", dict(META), dict(spec), "builtin:digits", "0.1.0+abc")
    assert len(key) <= 255
    others = {
        audit_key("sha2", META, spec, "builtin:digits", "0.1.0+abc"),
        audit_key("sha", {**META, "name": "x"}, spec, "builtin:digits", "0.1.0+abc"),
        audit_key("sha", META, {**spec, "seed": 1}, "builtin:digits", "0.1.0+abc"),
        audit_key("sha", META, spec, "d_1", "0.1.0+abc"),
        # Another engine: a new key, so an upgraded server audits afresh.
        audit_key("sha", META, spec, "builtin:digits", "0.1.0+def"),
    }
    assert key not in others
    assert len(others) == 5


def test_a_rerun_after_an_engine_upgrade_audits_afresh(tmp_path: Path) -> None:
    server = FakeServer()
    first, _ = audit(server, plan(tmp_path))
    again, _ = audit(server, plan(tmp_path))
    assert again.job is not None
    assert first.job is not None
    assert again.job["id"] == first.job["id"]  # same engine: the verdict is replayed
    server.engine_version = "0.1.0+upgraded"
    upgraded, _ = audit(server, plan(tmp_path))
    assert upgraded.job is not None
    assert upgraded.job["id"] != first.job["id"]
    assert len(server.jobs) == 2


def test_baseline_comparison(tmp_path: Path) -> None:
    server = FakeServer(accuracy=lambda model_id: {"m_1": 0.97, "m_2": 0.90}[model_id])
    # The baseline, m_1, exists already.
    audit(server, plan(tmp_path, gates=()))
    candidate = plan(tmp_path, gates=(), baseline_model_id="m_1", max_drop=0.02)
    candidate.meta["name"] = "candidate"
    candidate.model_bytes = b"other onnx bytes"
    outcome, _ = audit(server, candidate)
    assert outcome.exit_code == 1
    assert [(c.name, c.passed) for c in named(outcome)] == [
        ("clean_accuracy drop vs baseline", False),
        ("pgd@linf:0.1 drop vs baseline", False),
    ]
    assert named(outcome)[0].value == pytest.approx(0.07)
    # The baseline's audit on this spec existed already (the first run): it is reused.
    assert outcome.baseline_job is not None
    assert outcome.baseline_job["id"] == "j_1"
    assert len(server.jobs) == 2
    # The baseline job ran the candidate's spec on the baseline model.
    assert outcome.baseline_job is not None
    assert outcome.job is not None
    baseline_spec = dict(server.jobs[outcome.baseline_job["id"]]["spec"])
    assert baseline_spec.pop("model_id") == "m_1"
    candidate_spec = dict(server.jobs[outcome.job["id"]]["spec"])
    assert candidate_spec.pop("model_id") == "m_2"
    assert baseline_spec == candidate_spec
    # A looser bound passes; the baseline's job is shared by every candidate on this spec.
    jobs_before = len(server.jobs)
    candidate.max_drop = 0.1
    looser, _ = audit(server, candidate)
    assert looser.exit_code == 0
    assert len(server.jobs) == jobs_before


def test_baseline_is_the_candidate_itself(tmp_path: Path) -> None:
    server = FakeServer()
    audit(server, plan(tmp_path))
    outcome, log = audit(server, plan(tmp_path, baseline_model_id="m_1", max_drop=0.0))
    assert outcome.exit_code == 0
    assert len(server.jobs) == 1
    assert "the baseline is the audited model itself" in log


def test_a_missing_baseline_is_an_error_before_submitting(tmp_path: Path) -> None:
    server = FakeServer()
    with pytest.raises(GauntletError, match=r"baseline model m_404: HTTP 404 \[not_found\]"):
        audit(server, plan(tmp_path, baseline_model_id="m_404", max_drop=0.02))
    assert server.jobs == {}


def test_dataset_file_is_uploaded_once(tmp_path: Path) -> None:
    server = FakeServer()
    data = tmp_path / "data.npz"
    data.write_bytes(b"npz bytes")
    audit(server, plan(tmp_path, dataset=str(data)))
    _, log = audit(server, plan(tmp_path, dataset=str(data)))
    assert len(server.datasets) == 1
    assert "reusing dataset d_1" in log
    (job,) = server.jobs.values()
    assert job["spec"]["dataset_id"] == "d_1"
    with pytest.raises(GauntletError, match="no such file"):
        audit(server, plan(tmp_path, dataset=str(tmp_path / "missing.npz")))


def test_wait_gives_up_at_the_deadline() -> None:
    server = FakeServer(job_polls=10**6)
    server.models["m_1"] = {"id": "m_1", "status": "ready"}
    server.create_job(
        httpx.Request("POST", "http://fake/v1/jobs", content=json.dumps({"model_id": "m_1"}))
    )
    clock = Clock()
    with connect(server, clock, deadline=30.0) as client, pytest.raises(DeadlineExceeded) as raised:
        wait_jobs(client, [("j_1", "audit")], Progress(io.StringIO()))
    assert "gauntlet wait j_1" in str(raised.value)
    assert clock.now == pytest.approx(30.0)


def test_wait_rides_out_a_short_outage() -> None:
    server = FakeServer(job_polls=3)
    server.models["m_1"] = {"id": "m_1", "status": "ready"}
    server.create_job(
        httpx.Request(
            "POST", "http://fake/v1/jobs", content=json.dumps({"model_id": "m_1", "attacks": []})
        )
    )
    outage = {"left": 4}

    def down_for_a_while(request: httpx.Request) -> httpx.Response | None:
        if outage["left"] > 0:
            outage["left"] -= 1
            raise httpx.ConnectError("connection refused")
        return None

    server.before = down_for_a_while
    log = io.StringIO()
    with connect(server) as client:
        done = wait_jobs(client, [("j_1", "audit")], Progress(log, tty=False))
    assert done["j_1"]["status"] == "succeeded"
    assert "still waiting for job j_1" in log.getvalue()


def test_an_interrupt_cancels_the_submitted_jobs(tmp_path: Path) -> None:
    server = FakeServer(job_polls=10**6)
    clock = Clock()

    def interrupt_while_waiting(seconds: float) -> None:
        if server.jobs:
            raise KeyboardInterrupt
        clock.sleep(seconds)

    outcome = Outcome(server="http://fake")
    client = GauntletClient(
        "http://fake", "k", transport=server.transport(), sleep=interrupt_while_waiting, clock=clock
    )
    with client, pytest.raises(GauntletError, match="interrupted"):
        run_audit(client, plan(tmp_path), Progress(io.StringIO()), outcome)
    assert server.jobs["j_1"]["status"] == "cancelled"


def test_an_interrupt_leaves_a_job_it_did_not_submit_running(tmp_path: Path) -> None:
    # Another run (the same commit built twice) submitted this audit and stopped waiting.
    server = FakeServer(job_polls=10**6)
    with pytest.raises(DeadlineExceeded):
        audit(server, plan(tmp_path), deadline=0.0)
    assert server.jobs["j_1"]["status"] == "running"

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    client = GauntletClient("http://fake", "k", transport=server.transport(), sleep=interrupt)
    with client, pytest.raises(GauntletError, match=r"j_1 \(found, not submitted"):
        run_audit(client, plan(tmp_path), Progress(io.StringIO()), Outcome(server="http://fake"))
    assert server.jobs["j_1"]["status"] == "running"
    assert server.count("POST", "/v1/jobs/j_1/cancel") == 0


def test_reuse_picks_the_oldest_of_two_identical_models(tmp_path: Path) -> None:
    server = FakeServer()
    audit(server, plan(tmp_path, reuse=False))
    audit(server, plan(tmp_path, reuse=False))
    _, log = audit(server, plan(tmp_path))
    assert len(server.models) == 2
    assert "reusing model m_1" in log


def test_a_dataset_upload_whose_answer_was_lost_is_found_not_repeated(tmp_path: Path) -> None:
    server = FakeServer()
    data = tmp_path / "data.npz"
    data.write_bytes(b"npz bytes")
    dropped = []

    def lose_the_first_dataset_answer(request: httpx.Request, _response: httpx.Response) -> None:
        if request.method == "POST" and request.url.path == "/v1/datasets" and not dropped:
            dropped.append(request)
            raise httpx.ReadError("connection reset by peer")

    server.after = lose_the_first_dataset_answer
    outcome, log = audit(server, plan(tmp_path, dataset=str(data)))
    assert outcome.exit_code == 0
    assert len(server.datasets) == 1
    assert "looking for the dataset before uploading again" in log
