"""The command line: usage errors, exit codes, what it imports, the commands' glue."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import gauntlet_client.cli
from gauntlet_client.cli import main
from gauntlet_client.http import GauntletClient
from tests.client.fake_server import FakeServer

ROOT = Path(__file__).resolve().parents[2]
META = {"name": "digits", "format": "onnx", "input_shape": [1, 8, 8], "num_classes": 10}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    meta = tmp_path / "model.meta.json"
    meta.write_text(json.dumps(META))
    return {"model": model, "meta": meta}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """``main()`` talks to an in-memory server, with the key in the environment."""
    server = FakeServer()

    def connect(*args: Any, **kwargs: Any) -> GauntletClient:
        return GauntletClient(*args, **kwargs, transport=server.transport(), sleep=lambda _s: None)

    monkeypatch.setattr(gauntlet_client.cli, "GauntletClient", connect)
    monkeypatch.setenv("GAUNTLET_API_KEY", "gk_test")
    monkeypatch.setenv("GAUNTLET_SERVER", "http://fake")
    return server


def audit_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "audit",
        str(files["model"]),
        "--meta",
        str(files["meta"]),
        "--attack",
        "pgd:eps=0.1,steps=5",
        "--progress",
        "lines",
        *extra,
    ]


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("audit", "wait", "report", "cancel", "models", "datasets", "jobs", "exit codes"):
        assert word in text
    assert main(["audit", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--gate", "--attack", "--preset", "--baseline", "--max-drop", "--junit"):
        assert option in text
    assert main(["--version"]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["audit"],
        ["audit", "model.onnx"],  # --meta is required
        ["frobnicate"],
        ["audit", "m.onnx", "--meta", "m.json", "--attack", "pgd:steps=ten"],
        ["audit", "m.onnx", "--meta", "m.json", "--gate", "pgd@8/255>0.4"],
        ["audit", "m.onnx", "--meta", "m.json", "--eps", "8/0"],
        ["audit", "m.onnx", "--meta", "m.json", "--preset", "slow"],
        ["audit", "m.onnx", "--meta", "m.json", "--max-drop", "2"],
        ["audit", "m.onnx", "--meta", "m.json", "--timeout", "-1"],
        ["jobs"],
        ["jobs", "show"],
        ["wait"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err  # says why


def test_usage_errors_found_after_parsing_exit_2(
    files: dict[str, Path], fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "gauntlet.xml"
    cases = {
        "--max-drop needs --baseline": [*audit_args(files), "--max-drop", "0.02"],
        "no such file": ["audit", str(tmp_path / "nope.onnx"), "--meta", str(files["meta"])],
    }
    for message, argv in cases.items():
        assert main([*argv, "--junit", str(junit)]) == 2
        assert message in capsys.readouterr().err
        # Even then the JUnit file says what went wrong.
        error = ET.parse(junit).getroot().find("testsuite/testcase/error")
        assert error is not None
        assert message in error.get("message", "")
    files["meta"].write_text("{not json")
    assert main(audit_args(files)) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert fake.requests == []  # nothing was sent


def test_no_api_key_exits_2(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GAUNTLET_API_KEY", raising=False)
    assert main(audit_args(files)) == 2
    assert "set GAUNTLET_API_KEY" in capsys.readouterr().err
    assert main(["jobs", "list"]) == 2


def test_a_server_url_without_scheme_exits_2(
    files: dict[str, Path], fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*audit_args(files), "--server", "gauntlet.example.com"]) == 2
    assert "must start with http://" in capsys.readouterr().err


def test_a_bug_exits_2_not_1(
    files: dict[str, Path], fake: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gauntlet_client.cli, "command_list", broken)
    assert main(["jobs", "list"]) == 2
    assert "internal error" in capsys.readouterr().err


def test_audit_exit_codes_and_files(
    files: dict[str, Path], fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = ["--junit", str(tmp_path / "g.xml"), "--json", str(tmp_path / "g.json")]
    assert (
        main([*audit_args(files, "--gate", "pgd@0.1>=0.4", "--gate", "clean>=0.8"), *outputs]) == 0
    )
    captured = capsys.readouterr()
    assert "Gate: PASSED" in captured.out
    assert "Result: passed (exit 0)" in captured.out
    assert "submitted audit job j_1" in captured.err
    names = [c.get("name") for c in ET.parse(tmp_path / "g.xml").getroot().iter("testcase")]
    assert names == [
        "clean_accuracy",
        "pgd@linf:0.1",
        "validity:zero_gradients",
        "validity:not_broken_at_large_eps",
        "validity:randomized_model",
    ]
    assert json.loads((tmp_path / "g.json").read_text())["verdict"] == "passed"

    assert (
        main([*audit_args(files, "--gate", "pgd@0.1>=0.99"), "--markdown", str(tmp_path / "g.md")])
        == 1
    )
    assert "gate failed" in (tmp_path / "g.md").read_text()

    # A validity warning fails the gate even when every number passes; a waiver passes it
    # and says so.
    fake.warnings = ["zero_gradients"]
    assert main(audit_args(files, "--gate", "pgd@0.1>=0.4")) == 1
    assert "fired: zero_gradients" in capsys.readouterr().out
    assert (
        main(audit_args(files, "--gate", "pgd@0.1>=0.4", "--allow-warning", "zero_gradients")) == 0
    )
    assert "(waived: zero_gradients)" in capsys.readouterr().out


def test_audit_of_an_invalid_model_exits_2(
    files: dict[str, Path], fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.model_status = "invalid"
    assert main(audit_args(files)) == 2
    assert "[bad_output_shape]" in capsys.readouterr().err


def test_audit_with_report_link(
    files: dict[str, Path], fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markdown = tmp_path / "g.md"
    assert main([*audit_args(files), "--report-link", "--markdown", str(markdown)]) == 0
    assert "[Full report](http://fake/r/j_1?token=t)" in markdown.read_text()
    fake.report_links = False
    assert main([*audit_args(files), "--report-link", "--markdown", str(markdown)]) == 0
    assert "[Full report](http://fake/v1/jobs/j_1/report)" in markdown.read_text()
    assert "offers no report links" in capsys.readouterr().err


def test_other_commands(
    files: dict[str, Path],
    fake: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(audit_args(files, "--gate", "pgd@0.1>=0.4")) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert "m_1" in capsys.readouterr().out
    assert main(["jobs", "list", "--status", "succeeded", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["id"] == "j_1"
    assert main(["jobs", "show", "j_1"]) == 0
    assert "Gate: PASSED" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    assert "builtin:digits" in capsys.readouterr().out
    assert main(["wait", "j_1", "--junit", str(tmp_path / "w.xml")]) == 0
    assert ET.parse(tmp_path / "w.xml").getroot().find("testsuite/testcase") is not None
    assert main(["models", "show", "m_404"]) == 2
    assert "[not_found]" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["report", "j_1", "--link"]) == 0
    assert capsys.readouterr().out.strip() == "http://fake/r/j_1?token=t"
    assert main(["cancel", "j_1"]) == 0
    assert "cancelled" in capsys.readouterr().out


def test_the_client_imports_only_the_standard_library_and_httpx() -> None:
    """A CI runner installs httpx alone: nothing of the server may be imported."""
    probe = (
        "import sys; before = set(sys.modules); import gauntlet_client.cli; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    imported = {name.split(".")[0] for name in result.stdout.split()}
    forbidden = {
        "torch", "numpy", "fastapi", "starlette", "pydantic", "sqlalchemy", "celery",
        "service", "worker", "adversarial", "safetensors", "onnx", "uvicorn",
    }  # fmt: skip
    assert imported & forbidden == set()
    httpx_and_its_dependencies = {
        "gauntlet_client", "httpx", "httpcore", "h11", "h2", "hpack", "hyperframe", "anyio",
        "sniffio", "idna", "certifi", "brotli", "zstandard", "socksio", "typing_extensions",
        "exceptiongroup",
        # httpx imports its optional command line (httpx[cli]) when it is installed.
        "click", "pygments", "rich", "markdown_it", "mdurl",
    }  # fmt: skip
    third_party = {
        name
        for name in imported - set(sys.stdlib_module_names)
        if not name.startswith("_")  # C parts of the standard library (_ssl, _socket, ...)
    }
    assert third_party <= httpx_and_its_dependencies, third_party - httpx_and_its_dependencies


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gauntlet_client.cli", "audit", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "MODEL_FILE" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "gauntlet_client.cli", "audit", "x.onnx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--meta" in result.stderr


def test_connection_options_go_before_or_after_the_command() -> None:
    parser = gauntlet_client.cli.build_parser()
    assert parser.parse_args(["--server", "http://a", "jobs", "list"]).server == "http://a"
    assert parser.parse_args(["jobs", "list", "--server", "http://b"]).server == "http://b"
    after = parser.parse_args(
        ["--server", "http://a", "audit", "m", "--meta", "x", "--server", "http://b"]
    )
    assert after.server == "http://b"
    assert parser.parse_args(["jobs", "list"]).server is None
