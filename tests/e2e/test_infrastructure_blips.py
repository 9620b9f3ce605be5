"""Infrastructure blips never fail a job (issue 7): a database or broker restart under a
running audit costs a delay, not an attempt, and never a different number.

Each test starts servers of its own (a private Postgres cluster, a private Redis) on free
ports, whatever ``GAUNTLET_TEST_DATABASE_URL`` / ``GAUNTLET_TEST_BROKER_URL`` say, because it
restarts them: the shared servers are never touched. The jobs run in a real Celery worker
process, started as users start it.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from service.admin import migrate
from service.database import session_scope, utcnow
from service.settings import get_settings
from service.tables import Job, JobStatus
from service.tenants.service import get_or_create_tenant
from tests.conftest import clear_caches
from tests.e2e.conftest import LiveService, free_port
from tests.factories import job_row, model_row, queued_job
from tests.model_files import digits_onnx

pytestmark = pytest.mark.e2e

# The measured numbers; shown with ``--log-cli-level=INFO``.
logger = logging.getLogger(__name__)

FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

# Long enough (several seconds here) for a restart to land in the middle of the attack.
BLIP_SPEC_ATTACKS: list[dict[str, Any]] = [
    {"name": "fgsm", "eps": [0.05]},
    {"name": "pgd", "eps": [0.03], "steps": 400, "step_size": 0.002, "early_stop": False},
]
OUTAGE_SECONDS = 2.5


def postgres_bin() -> Path:
    """Debian's Postgres binaries (the newest version installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    assert found, "these tests start a private Postgres: install postgresql (initdb, pg_ctl)"
    return Path(found[-1])


def as_postgres(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` OS user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PrivatePostgres:
    """A Postgres cluster of this test module's own, on a free port, trust auth."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        # Not under pytest's tmp_path: that is root's 0700 folder, closed to ``postgres``.
        self.root = Path(tempfile.mkdtemp(prefix="gauntlet-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            as_postgres([str(args[0]), *args[1:]]),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c max_connections=100"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "30", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop")

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """A new, migrated database; returns its URL."""
        name = f"gauntlet_blip_{secrets.token_hex(4)}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        migrate(url)
        return url

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private Postgres cluster, started for this module and removed after it."""
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


class PrivateRedis:
    """A ``redis-server`` of this test's own: no persistence, so a restart forgets all."""

    def __init__(self, folder: Path) -> None:
        executable = shutil.which("redis-server")
        assert executable, "this test starts a private Redis: install redis-server"
        self.executable = executable
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--dir", str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_text()
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start\n" + self.log_text())

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_text(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass
class Blip:
    """One test's world: a private database, a broker, a worker process and a model."""

    service: LiveService
    tenant_id: str
    model_id: str

    @property
    def log(self) -> Path:
        return self.service.logs / "worker0.log"

    def worker_log(self, start: int = 0) -> str:
        return self.log.read_bytes()[start:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def submit(self, attacks: list[dict[str, Any]] | None = None, limit: int = 200) -> str:
        """Create a queued audit as the API does; its id goes to the broker on commit."""
        spec = {
            "kind": "audit",
            "model_id": self.model_id,
            "dataset_id": "builtin:digits",
            "limit": limit,
            "seed": 7,
            "attacks": attacks or BLIP_SPEC_ATTACKS,
        }
        return queued_job(get_settings(), self.tenant_id, spec)

    def wait(self, job_id: str, done: Callable[[Job], bool], timeout: float = 60) -> Job:
        """Poll the job's row until ``done``; fail with the logs on timeout."""
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = job_row(job_id)
            assert job is not None
            if done(job):
                return job
            assert self.service.workers[0].poll() is None, "worker died\n" + self.logs()
            time.sleep(0.05)
        status = (job.status, job.progress) if job else None
        raise AssertionError(f"timed out waiting on {job_id}: {status}\n{self.logs()}")

    def logs(self) -> str:
        return self.service.log_text()


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers an audit reports, without timings."""
    return {
        "num_examples": result["num_examples"],
        "clean_accuracy": result["clean_accuracy"],
        "attacks": [(a["name"], a["eps"], a["robust_accuracy"]) for a in result["attacks"]],
        "worst_case": [(w["norm"], w["eps"], w["robust_accuracy"]) for w in result["worst_case"]],
    }


@pytest.fixture
def make_blip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Callable[[str, str], Blip]]:
    """A factory: ``make_blip(database_url, broker_url)`` points this process at them,
    stores the digits model and starts one real Celery worker; all stopped afterwards."""
    started: list[LiveService] = []

    def _make(database_url: str, broker_url: str) -> Blip:
        data_dir = tmp_path / "data"
        environment = {
            "GAUNTLET_DATA_DIR": str(data_dir),
            "GAUNTLET_DATABASE_URL": database_url,
            "GAUNTLET_BROKER_URL": broker_url,
            "GAUNTLET_WORKER_QUEUE": f"gauntlet-blip-{secrets.token_hex(4)}",
            # Short enough that heartbeats and progress writes meet the outage, long enough
            # that the lease outlives it (no other worker may take the job meanwhile).
            "GAUNTLET_LEASE_SECONDS": "20",
            "GAUNTLET_HEARTBEAT_SECONDS": "1",
            "GAUNTLET_PROGRESS_SECONDS": "0.2",
            "GAUNTLET_RECONCILE_SECONDS": "1",
            "GAUNTLET_REQUEUE_AFTER_SECONDS": "30",
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        clear_caches()
        logs = tmp_path / "logs"
        logs.mkdir()
        service = LiveService(
            url="",
            environment={**os.environ, **environment, "PYTHONUNBUFFERED": "1"},
            logs=logs,
            tenant=None,  # type: ignore[arg-type]  # no API here: jobs go in as rows
        )
        started.append(service)
        service.start_worker()  # it imports torch while this process trains the model
        with session_scope() as session:
            tenant_id = get_or_create_tenant(session, f"blip-{secrets.token_hex(3)}").id
        model_id = model_row(tenant_id, data=digits_onnx())
        return Blip(service, tenant_id, model_id)

    try:
        yield _make
    finally:
        for service in started:
            service.stop()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                os.write(2, service.log_text().encode(errors="replace"))
        # Forget this test's servers once the environment is the suite's again.
        monkeypatch.undo()
        clear_caches()


def lines_about(log: str, job_id: str, *markers: str) -> list[str]:
    """The log lines that name ``job_id`` and contain one of ``markers``."""
    return [line for line in log.splitlines() if job_id in line and any(m in line for m in markers)]


DATABASE_FAILURES = ("progress not written", "heartbeat for", "database unreachable")


def test_postgres_restart_under_a_running_audit(
    private_postgres: PrivatePostgres, make_blip: Callable[[str, str], Blip]
) -> None:
    # The embedded broker: no server, so only the database goes away.
    blip = make_blip(private_postgres.create_database(), "filesystem://")

    undisturbed_id = blip.submit()
    undisturbed = blip.wait(undisturbed_id, lambda j: j.status in FINAL)
    assert undisturbed.status == JobStatus.SUCCEEDED, (undisturbed.error, blip.logs())

    job_id = blip.submit()
    running = blip.wait(
        job_id,
        lambda j: j.status in FINAL or (j.status == "running" and j.progress["fraction"] > 0.1),
    )
    assert running.status == JobStatus.RUNNING, "the audit finished before the restart"
    before = running.progress["fraction"]

    log_at_stop = blip.log_size()
    stopped_on = utcnow()
    stopped_at = time.monotonic()
    private_postgres.stop("fast")  # every connection dropped, the port closed
    time.sleep(OUTAGE_SECONDS)
    private_postgres.start()
    outage = time.monotonic() - stopped_at
    during = blip.worker_log(log_at_stop)

    job = blip.wait(job_id, lambda j: j.status in FINAL)
    assert job.status == JobStatus.SUCCEEDED, (job.error, blip.logs())
    assert job.attempt == 1, blip.logs()
    # It ran through the outage: claimed before the server went, finished after it was gone
    # for the whole outage (the server accepts connections a moment before pg_ctl returns,
    # so the finish may come just before it returns).
    assert job.started_at is not None
    assert job.started_at < stopped_on
    assert job.finished_at is not None
    assert job.finished_at > stopped_on + dt.timedelta(seconds=OUTAGE_SECONDS)
    assert numbers(job.result) == numbers(undisturbed.result)

    # The blip happened to this job while it ran: its writes met the outage.
    failed_during = lines_about(during, job_id, *DATABASE_FAILURES)
    assert failed_during, "no write of the job met the outage\n" + blip.logs()
    log = blip.worker_log()
    progress_failures = len(lines_about(log, job_id, "progress not written"))
    heartbeat_failures = len(lines_about(log, job_id, "heartbeat for"))
    read_retries = len(lines_about(log, job_id, "database unreachable"))
    assert len(lines_about(log, job_id, "claimed by")) == 1
    logger.info(
        f"postgres outage {outage:.2f} s at fraction {before:.2f}: {progress_failures} progress "
        f"writes, {heartbeat_failures} heartbeats, {read_retries} retried reads/writes failed; "
        f"attempt {job.attempt}; job {(job.finished_at - job.started_at).total_seconds():.1f} s "
        f"vs {(undisturbed.finished_at - undisturbed.started_at).total_seconds():.1f} s "
        "undisturbed"
    )


RECEIVED = re.compile(r"Task jobs\.run\[([0-9a-f-]+)\] received")
FINISHED = re.compile(r"Task jobs\.run\[([0-9a-f-]+)\] succeeded in [0-9.]+s: '(\w+)'")
BROKER_LOST = "Connection to broker lost"


def test_redis_restart_under_a_running_audit(
    private_postgres: PrivatePostgres,
    make_blip: Callable[[str, str], Blip],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "redis"
    folder.mkdir()
    redis_server = PrivateRedis(folder)
    redis_server.start()
    try:
        blip = make_blip(private_postgres.create_database(), redis_server.url)

        undisturbed_id = blip.submit()
        undisturbed = blip.wait(undisturbed_id, lambda j: j.status in FINAL)
        assert undisturbed.status == JobStatus.SUCCEEDED, (undisturbed.error, blip.logs())
        log_before = blip.log_size()

        job_id = blip.submit()
        running = blip.wait(
            job_id,
            lambda j: j.status in FINAL or (j.status == "running" and j.progress["fraction"] > 0.1),
        )
        assert running.status == JobStatus.RUNNING, "the audit finished before the restart"

        stopped_at = time.monotonic()
        redis_server.kill()  # the unacknowledged message dies with it (no persistence)
        time.sleep(OUTAGE_SECONDS)
        redis_server.start()
        outage = time.monotonic() - stopped_at

        job = blip.wait(job_id, lambda j: j.status in FINAL)
        assert job.status == JobStatus.SUCCEEDED, (job.error, blip.logs())
        assert job.attempt == 1, blip.logs()
        assert numbers(job.result) == numbers(undisturbed.result)

        # The worker consumes again once Redis is back, and this process's producer sends
        # again: a job submitted after the restart runs too.
        after_id = blip.submit([{"name": "fgsm", "eps": [0.05]}], limit=50)
        after = blip.wait(after_id, lambda j: j.status in FINAL)
        assert after.status == JobStatus.SUCCEEDED, (after.error, blip.logs())
        assert after.attempt == 1

        # Every delivery of a job after its first (a restored or re-sent message) must be
        # skipped by the claim: let the worker work off all it received, then count.
        def worked_off() -> bool:
            log = blip.worker_log(log_before)
            return len(RECEIVED.findall(log)) == len(FINISHED.findall(log))

        deadline = time.monotonic() + 10
        while not worked_off() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = blip.worker_log(log_before)
        claims = lines_about(log, job_id, "claimed by")
        skipped = [line for line in log.splitlines() if "not claimable" in line]
        restored = re.findall(r"Restoring (\d+) unacknowledged", log)
        assert len(claims) == 1, log
        # Redis went away while the job ran (after its claim, before its end).
        lines = log.splitlines()
        claimed_at = lines.index(claims[0])
        lost_at = next(i for i, line in enumerate(lines) if BROKER_LOST in line)
        finished = [i for i, line in enumerate(lines) if FINISHED.search(line)]
        assert claimed_at < lost_at < finished[0], log
        outcomes = [outcome for _, outcome in FINISHED.findall(log)]
        received = RECEIVED.findall(log)
        # Two jobs ran, once each; any other delivery (a restored or re-sent message, of
        # any job) was skipped by the claim.
        assert sorted(outcomes) == sorted(["succeeded"] * 2 + ["skipped"] * len(skipped)), log
        assert len(received) == 2 + len(skipped), log
        logger.info(
            f"redis outage {outage:.2f} s: {len(received)} deliveries for 2 jobs "
            f"({len(set(received))} task ids), {len(claims)} claim of the disturbed job, "
            f"{len(skipped)} skipped; unacknowledged messages the worker tried to restore: "
            f"{restored}; outcomes {outcomes}; attempt {job.attempt}; "
            f"job {(job.finished_at - job.started_at).total_seconds():.1f} s vs "
            f"{(undisturbed.finished_at - undisturbed.started_at).total_seconds():.1f} s "
            "undisturbed"
        )
    finally:
        redis_server.kill()
