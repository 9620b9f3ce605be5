"""Real processes: the API under uvicorn and Celery workers, started as users start them.

They share the test's database and broker (Postgres and Redis in CI) and its data folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service import processes
from service.settings import Settings
from tests.conftest import Backend, Tenant, service_environment

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def api_command(host: str, port: str) -> list[str]:
    """The API as users start it (service.processes), on this host and port."""
    return [sys.executable, "-m", *processes.API, "--host", host, "--port", port]


def worker_command(queue: str, hostname: str) -> list[str]:
    """A worker as users start it (service.processes), on this queue with this name."""
    return [sys.executable, "-m", *processes.WORKER, "--queues", queue, "--hostname", hostname]


@dataclass
class LiveService:
    """A running API and its workers; ``client`` talks HTTP to the API as ``tenant``."""

    url: str
    environment: dict[str, str]
    logs: Path
    tenant: Tenant
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        # A session of its own, so a test can kill the whole process group (pool included).
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        self.api = self._spawn("api", api_command(host, port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.api.poll() is None, self.log_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("API did not start\n" + self.log_text())

    def start_worker(self) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        worker = self._spawn(
            f"worker{index}",
            worker_command(self.environment["GAUNTLET_WORKER_QUEUE"], f"e2e{index}@%h"),
        )
        self.workers.append(worker)
        return worker

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process and everything in its process group."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            self.kill(process)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.tenant.headers, timeout=30)

    def wait_for(self, path: str, done: Callable[[dict], bool], timeout: float = 120) -> dict:
        """Poll ``path`` until ``done(body)``; fail with the process logs on timeout."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                body = client.get(path).json()
                if done(body):
                    return body
                time.sleep(0.2)
        raise AssertionError(f"timed out waiting on {path}: {body}\n{self.log_text()}")


@pytest.fixture
def live_service(
    backend: Backend,
    settings: Settings,
    make_tenant,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[LiveService]:
    """The API and one worker, started; stopped (SIGKILL) after the test."""
    environment = {
        **os.environ,
        **service_environment(backend, settings.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    service = LiveService(
        url=f"http://127.0.0.1:{free_port()}",
        environment=environment,
        logs=logs,
        tenant=make_tenant(),
    )
    try:
        service.start_api()
        service.start_worker()
        yield service
    finally:
        service.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(service.log_text())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
