"""The API, worker and migration commands are the same everywhere they are written down:
docker-compose.yml, the Dockerfile, the Makefile, the README, ``make serve`` and the e2e
tests all start the processes of ``service/processes.py``, adding only where they listen and
which queue and name a worker has."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

import yaml

from service import processes
from tests.e2e.conftest import api_command, worker_command

ROOT = Path(__file__).resolve().parents[1]


def assert_is(command: Sequence[str], base: Sequence[str], options: Collection[str]) -> None:
    """``command`` is ``base`` plus options from ``options``, each with one value."""
    command = list(command)
    assert command[: len(base)] == list(base), command
    rest = command[len(base) :]
    assert len(rest) % 2 == 0, rest
    assert {rest[i] for i in range(0, len(rest), 2)} <= set(options), rest


def test_compose_runs_the_processes() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert_is(services["api"]["command"], processes.API, processes.API_OPTIONS)
    assert_is(services["worker"]["command"], processes.WORKER, processes.WORKER_OPTIONS)
    assert services["migrate"]["command"] == list(processes.MIGRATE)
    environment = services["api"]["environment"]
    assert environment["GAUNTLET_ENVIRONMENT"] == "production"
    assert "GAUNTLET_METRICS_TOKEN" in environment  # production refuses open metrics
    assert services["worker"]["environment"] == environment


def test_the_dockerfile_and_makefile_run_the_processes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    assert_is(yaml.safe_load(cmd.removeprefix("CMD ")), processes.API, processes.API_OPTIONS)
    recipes = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line and not line[0].isspace() and ":" in line:
            target = line.split(":", 1)[0]
        elif line.startswith("\t") and target:
            recipes.setdefault(target, []).append(line.strip())
    api = shlex.split(recipes["api"][0].replace("$(BIN)/", ""))
    assert_is(api, processes.API, processes.API_OPTIONS)
    worker = shlex.split(recipes["worker"][0].replace("$(BIN)/", ""))
    assert_is(worker, processes.WORKER, processes.WORKER_OPTIONS)


def test_the_readme_runs_the_processes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Production", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    found = set()
    for line in block.splitlines():
        words = [w for w in shlex.split(line, comments=True) if "=" not in w or w.startswith("-")]
        if words[:1] == ["uvicorn"]:
            assert_is(words, processes.API, processes.API_OPTIONS)
            found.add("api")
        elif words[:1] == ["celery"]:
            assert_is(words, processes.WORKER, processes.WORKER_OPTIONS)
            found.add("worker")
        elif words[:2] == ["gauntlet-admin", "migrate"]:
            assert words == list(processes.MIGRATE)
            found.add("migrate")
    assert found == {"api", "worker", "migrate"}


def test_the_e2e_tests_and_make_serve_run_the_processes() -> None:
    python = [sys.executable, "-m"]
    api = api_command("127.0.0.1", "8123")
    assert api[:2] == python
    assert_is(api[2:], processes.API, processes.API_OPTIONS)
    worker = worker_command("gauntlet", "e2e0@%h")
    assert worker[:2] == python
    assert_is(worker[2:], processes.WORKER, processes.WORKER_OPTIONS)
    serve = (ROOT / "service" / "serve.py").read_text()
    assert "*commands.API" in serve
    assert "*commands.WORKER" in serve
