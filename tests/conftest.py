"""Shared fixtures: a migrated database and a broker for every test that needs them.

``GAUNTLET_TEST_DATABASE_URL`` (a Postgres server, any existing database on it) and
``GAUNTLET_TEST_BROKER_URL`` (Redis) point the tests at real servers; CI sets both, and a
test then fails, never skips, when a server is missing. Without them the tests use a SQLite
file and Celery's filesystem broker, the embedded default.

``GAUNTLET_TEST_ARTIFACT_STORE=s3`` puts every artifact store the tests create (this
process's and the API and worker processes' the e2e tests start) in an S3 bucket of its own
per test, on a real S3-protocol server (moto's, started once per session on loopback).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.admin import create_key, migrate
from service.database import reset_engine, session_scope
from service.queue import get_celery
from service.settings import Settings, get_settings
from service.tenants.service import authenticate

TABLES = ("metric_counters", "artifacts", "jobs", "models", "datasets", "api_keys", "tenants")
SERVER_DATABASE_URL = os.environ.get("GAUNTLET_TEST_DATABASE_URL", "")
SERVER_BROKER_URL = os.environ.get("GAUNTLET_TEST_BROKER_URL", "")
TEST_ARTIFACT_STORE = os.environ.get("GAUNTLET_TEST_ARTIFACT_STORE", "local")
if TEST_ARTIFACT_STORE not in {"local", "s3"}:
    raise RuntimeError("GAUNTLET_TEST_ARTIFACT_STORE must be 'local' or 's3'")
# moto accepts any credentials; these keep boto3 from looking for real ones.
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
S3_REGION = "us-east-1"


def pytest_report_header(config: pytest.Config) -> str:
    """Which artifact store this run's tests use."""
    del config
    return f"artifact store: {TEST_ARTIFACT_STORE}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    """A real S3-protocol server (moto's) listening on loopback."""

    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_REGION, **S3_CREDENTIALS
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"gauntlet-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def empty_bucket(self, name: str) -> None:
        """Delete every object (the server keeps them in memory)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server as a subprocess on a free loopback port, for the whole session."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as error:
        pytest.fail(f"the S3 store's tests need boto3 and moto[server] (the dev extra): {error}")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Backend:
    """The database, broker and (with the S3 store) S3 server one test session uses."""

    database_url: str
    broker_url: str
    queue: str
    s3_endpoint_url: str = ""


def bucket_for(data_dir: Path) -> str:
    """The S3 bucket of the test whose data folder is ``data_dir``: every process of that
    test computes the same name."""
    return "gauntlet-test-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]


@pytest.fixture(scope="session")
def backend(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Backend]:
    """A freshly migrated database (created for this session, dropped after) and a broker."""
    queue = f"gauntlet-test-{secrets.token_hex(4)}"
    broker_url = SERVER_BROKER_URL or "filesystem://"
    s3_endpoint_url = ""
    if TEST_ARTIFACT_STORE == "s3":
        s3_endpoint_url = request.getfixturevalue("s3_server").endpoint_url
    if SERVER_DATABASE_URL:
        server = make_url(SERVER_DATABASE_URL)
        name = f"gauntlet_test_{secrets.token_hex(4)}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        try:
            migrate(url)
            yield Backend(url, broker_url, queue, s3_endpoint_url)
        finally:
            reset_engine()
            with admin.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            admin.dispose()
    else:
        path = tmp_path_factory.mktemp("db") / "gauntlet.db"
        url = f"sqlite:///{path}"
        migrate(url)
        yield Backend(url, broker_url, queue, s3_endpoint_url)
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        client.delete(queue)
        client.close()


def service_environment(backend: Backend, data_dir: Path) -> dict[str, str]:
    """The ``GAUNTLET_*`` variables that point a process at the test backend."""
    store: dict[str, str] = {}
    if backend.s3_endpoint_url:
        store = {
            "GAUNTLET_ARTIFACT_STORE": "s3",
            "GAUNTLET_S3_ENDPOINT_URL": backend.s3_endpoint_url,
            "GAUNTLET_S3_BUCKET": bucket_for(data_dir),
            "GAUNTLET_S3_PREFIX": "blobs/",
            "GAUNTLET_S3_REGION": S3_REGION,
            "GAUNTLET_S3_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
            "GAUNTLET_S3_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
        }
    return {
        **store,
        "GAUNTLET_DATA_DIR": str(data_dir),
        "GAUNTLET_DATABASE_URL": backend.database_url,
        "GAUNTLET_BROKER_URL": backend.broker_url,
        "GAUNTLET_WORKER_QUEUE": backend.queue,
        "GAUNTLET_LEASE_SECONDS": "3",
        "GAUNTLET_HEARTBEAT_SECONDS": "0.5",
        "GAUNTLET_RECONCILE_SECONDS": "0.5",
        "GAUNTLET_REQUEUE_AFTER_SECONDS": "5",
        "GAUNTLET_PROGRESS_SECONDS": "0.2",
    }


def clear_caches() -> None:
    """Forget settings, engine and Celery app so the next use reads the environment."""
    get_settings.cache_clear()
    get_celery.cache_clear()
    reset_engine()


def truncate(database_url: str) -> None:
    """Empty every table (faster than re-migrating between tests)."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        for table in TABLES:
            connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture
def settings(
    backend: Backend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Settings]:
    """Settings for one test: its own data folder (and S3 bucket, with the S3 store), the
    session's database, empty tables."""
    for name, value in service_environment(backend, tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    clear_caches()
    current = get_settings()
    server = request.getfixturevalue("s3_server") if backend.s3_endpoint_url else None
    if server is not None:
        server.create_bucket(current.s3_bucket)
    yield current
    clear_caches()
    truncate(backend.database_url)
    if server is not None:
        server.empty_bucket(current.s3_bucket)
        # A local store (this process's or a service process's) creates its folder: none may
        # have, or some code path ignored GAUNTLET_ARTIFACT_STORE=s3.
        assert current.artifact_dir is not None
        assert not current.artifact_dir.exists(), "a local artifact store was used"


@dataclass(frozen=True)
class Tenant:
    """A tenant's id, API key and the headers that carry it."""

    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <key>``."""
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_tenant(settings: Settings) -> Iterator[Callable[..., Tenant]]:
    """A factory: ``make_tenant("acme")`` creates a tenant and returns its key."""

    def _make(name: str | None = None) -> Tenant:
        key = create_key(name or f"tenant-{secrets.token_hex(3)}")
        with session_scope() as session:
            principal = authenticate(session, key)
        assert principal is not None
        return Tenant(principal.tenant_id, key)

    return _make
