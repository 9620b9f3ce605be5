"""``make serve``: the whole service on one machine, with no external servers.

Migrates the database, makes sure an admin API key exists (kept in ``<data_dir>/api-key``),
then runs the API (uvicorn) and one Celery worker as child processes until Ctrl-C. With the
default settings everything lives under ``.gauntlet/``: a SQLite file, the artifact folder
and Celery's filesystem broker. The same code runs against Postgres and Redis when
``GAUNTLET_DATABASE_URL`` and ``GAUNTLET_BROKER_URL`` say so.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

import httpx

from service import processes as commands
from service.admin import ensure_local_key, migrate
from service.settings import get_settings

logger = logging.getLogger("gauntlet.serve")

STOP_GRACE_SECONDS = 10.0


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # A job still running is not lost: its lease expires and the next worker resumes it.
            process.kill()
            process.wait()


def _wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    """Run API and worker until interrupted; exit non-zero if either dies."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate()
    key_file = settings.data_dir / "api-key"
    key = ensure_local_key(key_file)

    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *commands.API,
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--log-level",
            "warning",
        ]
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            *commands.WORKER,
            "--queues",
            settings.worker_queue,
            "--hostname",
            "gauntlet-local@%h",
        ]
    )
    processes = [api, worker]

    stopping = False

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    if not _wait_healthy(settings.public_url, api):
        logger.error("the API did not start; see the messages above")
        _terminate(processes)
        return 1
    logger.info(
        "\nGauntlet is running at %s (docs: %s/docs)\n"
        "API key (also in %s):\n  %s\n"
        "Try:  curl -H 'Authorization: Bearer %s' %s/v1/datasets\n"
        "Stop with Ctrl-C.\n",
        settings.public_url,
        settings.public_url,
        key_file,
        key,
        key,
        settings.public_url,
    )
    exit_code = 0
    while not stopping:
        for process in processes:
            if process.poll() is not None:
                name = "API" if process is api else "worker"
                logger.error("the %s process exited with code %s", name, process.returncode)
                stopping = True
                exit_code = 1
        time.sleep(0.3)
    logger.info("stopping...")
    _terminate(processes)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
