"""Fixtures for the client's tests: the real service processes (from tests/e2e) and a way
to run the ``gauntlet`` command against them as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import (  # noqa: F401  (fixtures and the report hook, re-exported)
    LiveService,
    live_service,
    pytest_runtest_makereport,
)

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "client"

# The command's subprocesses import this checkout's client (the package lives in client/,
# its own distribution), whatever copy of it is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(CLIENT_SRC), *filter(None, [os.environ.get("PYTHONPATH")])]
)


def cli_environment(server: str, api_key: str) -> dict[str, str]:
    """The environment a CI job gives the command: no service settings, just the two
    client variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GAUNTLET_")}
    environment.update(GAUNTLET_SERVER=server, GAUNTLET_API_KEY=api_key, PYTHONUNBUFFERED="1")
    return environment


def run_cli(
    *args: str, server: str, api_key: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``gauntlet ARGS...`` in a fresh interpreter, as a pipeline runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gauntlet_client.cli", *args],
        cwd=cwd or ROOT,
        env=cli_environment(server, api_key),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
