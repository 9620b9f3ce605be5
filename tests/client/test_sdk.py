"""The SDK and the commands built on it (transfer, train, names), against the in-memory API."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from gauntlet_client import Gauntlet, GauntletError
from gauntlet_client.audit import wait_jobs
from gauntlet_client.cli import main
from gauntlet_client.progress import Progress
from gauntlet_client.transfer import markdown, matrix, summary_text
from tests.client.fake_server import FakeServer, transfer_result
from tests.client.test_audit_flow import connect
from tests.client.test_cli import fake, files  # noqa: F401  (fixtures)
from tests.client.test_http import Clock

META = {"name": "digits", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}


def sdk(server: FakeServer, clock: Clock | None = None) -> Gauntlet:
    return Gauntlet("http://fake", "gk_test", client=connect(server, clock))


def model_file(tmp_path: Path, content: bytes = b"onnx bytes") -> Path:
    path = tmp_path / f"model-{len(content)}.onnx"
    path.write_bytes(content)
    return path


def test_upload_audit_wait_verdict(tmp_path: Path) -> None:
    server = FakeServer(validation_polls=2, job_polls=3)
    g = sdk(server)
    model = g.upload_model(model_file(tmp_path), META, name="digits-cnn")
    assert (model.id, model.status, model.name, model.version, model.reused) == (
        "m_1", "ready", "digits-cnn", 1, False,
    )  # fmt: skip
    seen: list[dict[str, Any]] = []
    audit = g.audit(model, attacks=["pgd:eps=0.1,steps=5"], gate=["pgd@0.1>=0.4"], shards=2)
    assert audit.created
    assert audit.data["spec"]["shards"] == 2
    assert audit.data["spec"]["attacks"] == [{"name": "pgd", "eps": [0.1], "steps": 5}]
    audit.wait(progress=seen.append)
    assert audit.status == "succeeded"
    assert [job["status"] for job in seen][-1] == "succeeded"
    assert len(seen) >= 2
    assert audit.verdict.passed
    assert audit.verdict.outcome == "passed"
    assert "pgd@linf:0.1" in [c.name for c in audit.verdict.checks]
    assert audit.result["num_examples"] > 0
    assert audit.report_url() == "http://fake/r/j_1?token=t"
    assert audit.report_url(signed=False) == "http://fake/v1/jobs/j_1/report"

    # The same audit again: the model and the job are reused (the same derived key).
    again = g.upload_model(model_file(tmp_path), META, name="digits-cnn")
    assert (again.id, again.reused) == ("m_1", True)
    rerun = g.audit(again, attacks=["pgd:eps=0.1,steps=5"], gate=["pgd@0.1>=0.4"], shards=2)
    assert (rerun.id, rerun.created) == (audit.id, False)
    assert server.count("POST", "/v1/models") == 1


def test_verdict_fails_and_distrusts_like_the_command(tmp_path: Path) -> None:
    server = FakeServer(accuracy=lambda _m: 0.5)
    g = sdk(server)
    model = g.upload_model(model_file(tmp_path), META)
    failed = g.audit(model, attacks=["pgd:eps=0.1"], gate=["pgd@0.1>=0.4"])
    assert failed.verdict.outcome == "failed"
    assert not failed.verdict
    # A verdict without a check this run asked for is not a pass.
    server.accuracy = lambda _m: 0.9
    missing = g.audit(model, attacks=["pgd:eps=0.1"], gate=["pgd@0.1>=0.4", "clean>=0.5"])
    missing.wait()
    assert missing.data["result"]["gate"]["checks"]
    missing.data["result"]["gate"]["checks"] = [
        c for c in missing.data["result"]["gate"]["checks"] if c["name"] != "clean_accuracy"
    ]
    verdict = missing.verdict
    assert verdict.outcome == "error"
    assert verdict.problem is not None
    assert "lacks the check" in verdict.problem


def test_a_failed_job_has_no_result(tmp_path: Path) -> None:
    server = FakeServer(job_outcomes=["failed"])
    g = sdk(server)
    audit = g.audit(g.upload_model(model_file(tmp_path), META))
    with pytest.raises(GauntletError, match="worker_lost"):
        _ = audit.result
    assert audit.verdict.outcome == "error"


def test_wait_long_polls_and_falls_back_to_the_interval() -> None:
    # A server that ignores ?wait answers at once: the client sleeps its interval.
    old = FakeServer(job_polls=4)
    clock = Clock()
    g = sdk(old, clock)
    model = g.upload_model(model_file_bytes(), META)
    audit = g.audit(model)
    audit.wait()
    assert old.waits[0] is None  # the first read asks for the state as it is
    assert old.waits[1:] == [30.0] * (len(old.waits) - 1)
    assert clock.sleeps
    assert all(s == 0.5 for s in clock.sleeps)

    # A server that holds the question: no sleeping between polls.
    new = FakeServer(job_polls=4)
    clock = Clock()

    def hold(seconds: float) -> None:
        clock.now += min(seconds, 3.0)

    new.hold = hold
    g = sdk(new, clock)
    audit = g.audit(g.upload_model(model_file_bytes(), META))
    before = list(clock.sleeps)
    audit.wait()
    assert audit.status == "succeeded"
    assert clock.sleeps == before


def test_several_jobs_are_long_polled_briefly() -> None:
    server = FakeServer(job_polls=3)
    clock = Clock()
    g = sdk(server, clock)
    model = g.upload_model(model_file_bytes(), META)
    a = g.audit(model, attacks=["fgsm:eps=0.1"])
    b = g.audit(model, attacks=["pgd:eps=0.1"])
    wait_jobs(g.client, [(a.id, "a"), (b.id, "b")], Progress(io.StringIO(), tty=False))
    assert 2.0 in server.waits


def test_wait_gives_up_at_the_timeout() -> None:
    server = FakeServer(job_polls=10_000)
    clock = Clock()
    g = sdk(server, clock)
    audit = g.audit(g.upload_model(model_file_bytes(), META))
    from gauntlet_client.http import DeadlineExceeded

    with pytest.raises(DeadlineExceeded):
        audit.wait(timeout=5)
    assert all(w is None or w <= 4.0 for w in server.waits)


def model_file_bytes() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "m.onnx"
    path.write_bytes(b"onnx bytes")
    return path


def test_models_by_name_and_version(tmp_path: Path) -> None:
    server = FakeServer()
    g = sdk(server)
    first = g.upload_model(model_file(tmp_path, b"one"), META, name="cnn")
    second = g.upload_model(model_file(tmp_path, b"second"), META, name="cnn")
    g.upload_model(model_file(tmp_path, b"other model"), META, name="other")
    assert g.model("cnn@latest").id == second.id
    assert g.model("cnn@1").id == first.id
    assert g.model(first.id).version == 1
    with pytest.raises(GauntletError, match="no version 7 of 'cnn'"):
        g.model("cnn@7")
    with pytest.raises(GauntletError, match="no model named 'nope'"):
        g.model("nope@latest")
    with pytest.raises(GauntletError, match="'latest' or a whole number"):
        g.model("cnn@new")
    server.names = False  # an older server ignores ?name=
    with pytest.raises(GauntletError, match="does not look models up by name"):
        g.model("cnn@latest")


def test_audit_name_and_baseline_by_name(
    fake: FakeServer,  # noqa: F811
    files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    g = Gauntlet("http://fake", "gk_test", client=connect(fake))
    base = g.upload_model(model_file(tmp_path, b"the baseline"), META, name="prod")
    args = [
        "audit", str(files["model"]), "--meta", str(files["meta"]), "--attack",
        "pgd:eps=0.1,steps=5", "--progress", "none", "--name", "candidate",
        "--baseline", "prod@latest", "--max-drop", "0.02", "--shards", "3",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr()
    err = capsys.readouterr().err
    assert f"baseline prod@latest is model {base.id} (version 1)" in err
    candidates = [m for m in fake.models.values() if m["name"] == "candidate"]
    assert len(candidates) == 1
    specs = [job["spec"] for job in fake.jobs.values()]
    assert sorted(s["model_id"] for s in specs) == sorted([base.id, candidates[0]["id"]])
    assert all(s["shards"] == 3 for s in specs)
    args[args.index("prod@latest")] = "prod@9"
    assert main(args) == 2
    assert "no version 9 of 'prod'" in capsys.readouterr().err


def test_transfer_command_prints_and_writes_the_matrix(
    fake: FakeServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "transfer", "--source", "m_a", "--source", "m_a,m_b", "--target", "m_c",
            "--target", "m_d", "--eps", "0.05,0.1", "--steps", "7", "--seed", "3",
            "--progress", "none", "--json", str(tmp_path / "t.json"),
            "--markdown", str(tmp_path / "t.md"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    (job,) = fake.jobs.values()
    assert job["spec"] == {
        "kind": "transfer",
        "sources": ["m_a", ["m_a", "m_b"]],
        "targets": ["m_c", "m_d"],
        "dataset_id": "builtin:digits",
        "attack": {"name": "pgd", "norm": "linf", "eps": [0.05, 0.1], "steps": 7},
        "seed": 3,
    }
    result = job["result"]
    # Each cell's numbers sit in its row (source) and column (target), per eps.
    lines = out.splitlines()
    eps_at = [i for i, line in enumerate(lines) if line.startswith("eps ")]
    assert [lines[i].split(":")[0] for i in eps_at] == ["eps 0.05", "eps 0.1"]
    for block, eps in zip(eps_at, (0.05, 0.1), strict=True):
        header, *rows = lines[block + 1 : block + 4]
        assert header.split()[:4] == ["source", "\\", "target", "m_c"]
        assert "m_d (black box)" in header
        for row, source in zip(rows, ("m_a", "m_a+m_b"), strict=True):
            assert row.split()[0] == source
            cells = [c for c in result["cells"] if c["source"] == source and c["eps"] == eps]
            shown = [
                f"{100 * c['error_rate']:.1f}% err, {100 * c['wrong_class_agreement']:.1f}% agree"
                for c in cells
            ]
            assert shown[0] in row
            assert shown[1] in row
            assert row.index(shown[0]) < row.index(shown[1])
    assert "m_c 90.0%" in out
    assert "m_d 91.0%" in out
    document = json.loads((tmp_path / "t.json").read_text())
    assert document["result"] == result
    assert document["job"]["id"] == job["id"]
    md = (tmp_path / "t.md").read_text()
    assert md.count("| source \\ target | m_c | m_d (black box) |") == 2
    assert "| m_a+m_b |" in md
    # A re-run gets the same job (its key is derived from the spec).
    assert main(["transfer", "--source", "m_a", "--source", "m_a,m_b", "--target", "m_c",
                 "--target", "m_d", "--eps", "0.05,0.1", "--steps", "7", "--seed", "3",
                 "--progress", "none"]) == 0  # fmt: skip
    assert len(fake.jobs) == 1


def test_transfer_matrix_by_index_and_missing_cells() -> None:
    spec = {"sources": ["a", ["b", "c"]], "targets": ["t"], "attack": {"eps": [0.1]}}
    result = transfer_result(spec)
    for cell in result["cells"]:
        cell["source"] = [s["name"] for s in result["sources"]].index(cell["source"])
    cells = matrix(result)
    assert set(cells[0.1]) == {("a", "t"), ("b+c", "t")}
    result["cells"] = result["cells"][:1]
    assert "| b+c | - |" in markdown(result)
    assert "b+c" in summary_text(result)


def test_sdk_train_and_transfer_jobs(tmp_path: Path) -> None:
    server = FakeServer()
    g = sdk(server)
    a = g.upload_model(model_file(tmp_path, b"a"), META, name="a")
    b = g.upload_model(model_file(tmp_path, b"bb"), META, name="b")
    job = g.transfer([a, [a, "b@latest"]], [b.id], eps=[0.1], steps=5)
    assert job.data["spec"]["sources"] == [a.id, [a.id, b.id]]
    assert [c["target"] for c in job.result["cells"]] == [b.id, b.id]
    fgsm = g.transfer([a], [b], attack="fgsm", eps=0.1, limit=50)
    assert fgsm.data["spec"]["attack"] == {"name": "fgsm", "norm": "linf", "eps": [0.1]}
    assert fgsm.data["spec"]["limit"] == 50
    train = g.train({"name": "x", "epochs": 1}, dataset="builtin:digits")
    assert train.data["spec"] == {
        "name": "x", "epochs": 1, "dataset_id": "builtin:digits", "kind": "train",
    }  # fmt: skip


def test_train_command_submits_the_spec_file_and_waits(
    fake: FakeServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "train.json"
    spec.write_text(json.dumps({"kind": "train", "name": "a", "dataset_id": "builtin:digits"}))
    assert main(["train", str(spec), "--name", "b", "--epochs", "2", "--progress", "none"]) == 0
    assert "trained model m_trained" in capsys.readouterr().out
    (job,) = fake.jobs.values()
    assert job["spec"] == {
        "kind": "train",
        "name": "b",
        "dataset_id": "builtin:digits",
        "epochs": 2,
    }
    fake.job_outcomes = ["failed"]
    assert main(["train", str(spec), "--seed", "5", "--progress", "none"]) == 2
    assert "worker_lost" in capsys.readouterr().err
    spec.write_text("[1]")
    assert main(["train", str(spec)]) == 2
