"""Shared fixtures: a migrated database and a broker for every test that needs them.

``GAUNTLET_TEST_DATABASE_URL`` (a Postgres server, any existing database on it) and
``GAUNTLET_TEST_BROKER_URL`` (Redis) point the tests at real servers; CI sets both, and a
test then fails, never skips, when a server is missing. Without them the tests use a SQLite
file and Celery's filesystem broker, the embedded default.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Backend:
    """The database and broker one test session uses."""

    database_url: str
    broker_url: str
    queue: str


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A freshly migrated database (created for this session, dropped after) and a broker."""
    queue = f"gauntlet-test-{secrets.token_hex(4)}"
    broker_url = SERVER_BROKER_URL or "filesystem://"
    if SERVER_DATABASE_URL:
        server = make_url(SERVER_DATABASE_URL)
        name = f"gauntlet_test_{secrets.token_hex(4)}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        try:
            migrate(url)
            yield Backend(url, broker_url, queue)
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
        yield Backend(url, broker_url, queue)
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        client.delete(queue)
        client.close()


def service_environment(backend: Backend, data_dir: Path) -> dict[str, str]:
    """The ``GAUNTLET_*`` variables that point a process at the test backend."""
    return {
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
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for one test: its own data folder, the session's database, empty tables."""
    for name, value in service_environment(backend, tmp_path / "data").items():
        monkeypatch.setenv(name, value)
    clear_caches()
    yield get_settings()
    clear_caches()
    truncate(backend.database_url)


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
