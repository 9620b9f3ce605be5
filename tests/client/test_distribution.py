"""The client as its own distribution, against the real service: a fresh virtualenv with
gauntlet-client and httpx alone runs ``gauntlet audit``, with a ``client.py`` and a
``service.py`` on PYTHONPATH; and the README's SDK session, run as a script, works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import CLIENT_SRC, ROOT, LiveService, cli_environment
from tests.model_files import write_upload_files

pytestmark = pytest.mark.e2e


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if match:
            names.append(match.group(0))
    return names


def wheel_of_installed(name: str, folder: Path) -> None:
    """A wheel of an installed pure-Python distribution, from its RECORD (no download)."""
    dist = metadata.distribution(name)
    files = [f for f in dist.files or [] if not str(f).endswith(".pyc")]
    normalized = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    target = folder / f"{normalized}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as wheel:
        for file in files:
            path = Path(str(file.locate()))
            if path.is_file() and not str(file).startswith(".."):
                wheel.write(path, str(file))


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv made once per session: gauntlet-client built from client/ and httpx's
    wheels (rebuilt from this interpreter's installed copies), installed with --no-index."""
    root = tmp_path_factory.mktemp("client-distribution")
    wheels = root / "wheels"
    wheels.mkdir()
    seen: set[str] = set()
    todo = ["httpx"]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another Python version
        wheel_of_installed(name, wheels)
        todo.extend(_requirement_names(dist))
    source = root / "client-src"
    shutil.copytree(CLIENT_SRC, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Nothing of this checkout on the path: the venv must hold what it runs.
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(root))}
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, cwd=root, env=clean,
    )  # fmt: skip
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-index",
         "--find-links", str(wheels), "gauntlet-client"],
        check=True, cwd=root, env=clean,
    )  # fmt: skip
    return venv


def test_the_client_alone_in_a_fresh_venv_runs_an_audit(
    client_venv: Path, live_service: LiveService, tmp_path: Path
) -> None:
    python = client_venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(' '.join(sorted("
         "d.metadata['Name'].lower().replace('_', '-') for d in m.distributions())))"],
        capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert "gauntlet-client" in installed
    assert not {"torch", "numpy", "fastapi", "gauntlet", "pydantic", "sqlalchemy"} & set(installed)
    assert set(installed) <= {
        "gauntlet-client", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio",
        "typing-extensions", "exceptiongroup",
    }  # fmt: skip

    # Generic module names on PYTHONPATH do not break the command (its package is unique).
    shadows = tmp_path / "shadows"
    shadows.mkdir()
    for name in ("client", "service", "worker", "cli"):
        (shadows / f"{name}.py").write_text(f"raise SystemExit('imported the stray {name}.py')\n")
    files = write_upload_files(tmp_path / "model")
    environment = cli_environment(live_service.url, live_service.tenant.key)
    environment["PYTHONPATH"] = str(shadows)
    result = subprocess.run(
        [str(client_venv / "bin" / "gauntlet"), "audit", str(files["model"]),
         "--meta", str(files["meta"]), "--attack", "fgsm:eps=0.1", "--gate", "clean>=0.9",
         "--progress", "lines"],
        cwd=shadows, env=environment, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gate: PASSED" in result.stdout
    assert "stray" not in result.stdout + result.stderr


def readme_sdk_session() -> str:
    """The README's Python SDK code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python SDK\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python SDK section has no python code block"
    return str(blocks[0])


def test_the_readme_sdk_session_runs_against_the_service(
    live_service: LiveService, tmp_path: Path
) -> None:
    files = write_upload_files(tmp_path)
    files["model"].rename(tmp_path / "digits_cnn.onnx")
    files["meta"].rename(tmp_path / "digits_cnn.meta.json")
    script = tmp_path / "session.py"
    script.write_text(readme_sdk_session())
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=cli_environment(live_service.url, live_service.tenant.key),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verdict_line, numbers_line = result.stdout.strip().splitlines()[-2:]
    assert verdict_line.startswith("passed [")
    assert "('clean_accuracy', " in verdict_line
    clean, url = numbers_line.split()
    assert float(clean) >= 0.9
    with live_service.client() as client:
        (model,) = client.get("/v1/models").json()["items"]
        assert model["name"] == "digits-cnn"
        (job,) = client.get("/v1/jobs", params={"kind": "audit"}).json()["items"]
        assert job["status"] == "succeeded"
        assert job["spec"]["preset"] == "quick"
    assert job["id"] in url
    # The report link opens without the API key.
    report = httpx.get(url, timeout=30)
    assert report.status_code == 200
    assert "<html" in report.text.lower()
    assert f"audit {job['id']}: succeeded" in result.stderr  # progress was shown
