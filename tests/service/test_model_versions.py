"""Model versions: uploads (and trainings) under one name are its versions 1, 2, 3, ..."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from service.database import session_scope
from service.models.repository import add_version
from service.storage import get_store
from service.tables import Model, ModelStatus, new_id
from tests.service.test_api_models import ONNX_META, upload

# Stores files (models, datasets, job artifacts): CI runs these again with the S3 store.
pytestmark = pytest.mark.artifacts


def test_uploads_under_one_name_are_its_versions(client: TestClient, make_tenant) -> None:
    owner, other = make_tenant(), make_tenant()
    first, second, third = (
        upload(client, owner.headers, ONNX_META, f"v{n}".encode()).json() for n in range(3)
    )
    assert [first["version"], second["version"], third["version"]] == [1, 2, 3]
    assert {first["name"], second["name"], third["name"]} == {"cnn"}
    # Numbers are per name and per tenant.
    assert upload(client, owner.headers, {**ONNX_META, "name": "mlp"}).json()["version"] == 1
    assert upload(client, other.headers, ONNX_META).json()["version"] == 1

    listed = client.get("/v1/models", params={"name": "cnn"}, headers=owner.headers).json()
    assert [(m["name"], m["version"]) for m in listed["items"]] == [
        ("cnn", 3),
        ("cnn", 2),
        ("cnn", 1),
    ]
    one = client.get(
        "/v1/models", params={"name": "cnn", "version": 2}, headers=owner.headers
    ).json()
    assert [m["id"] for m in one["items"]] == [second["id"]]
    assert client.get("/v1/models", params={"name": "nope"}, headers=owner.headers).json() == {
        "items": [],
        "next_cursor": None,
    }
    # Pages follow the name's versions, newest first.
    page = client.get(
        "/v1/models", params={"name": "cnn", "limit": 2}, headers=owner.headers
    ).json()
    assert [m["version"] for m in page["items"]] == [3, 2]
    rest = client.get(
        "/v1/models",
        params={"name": "cnn", "limit": 2, "cursor": page["next_cursor"]},
        headers=owner.headers,
    ).json()
    assert [m["version"] for m in rest["items"]] == [1]


def test_a_deleted_version_keeps_its_number(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    upload(client, tenant.headers, ONNX_META)
    latest = upload(client, tenant.headers, ONNX_META).json()
    assert client.delete(f"/v1/models/{latest['id']}", headers=tenant.headers).status_code == 204
    assert upload(client, tenant.headers, ONNX_META).json()["version"] == 3


def test_bad_version_filter_is_a_422_naming_it(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.get("/v1/models", params={"version": 0}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "version" in response.text


def test_concurrent_uploads_of_one_name_get_distinct_versions(settings, make_tenant) -> None:
    """Real concurrent transactions (Postgres in CI): losers of the race take the next number."""
    tenant = make_tenant()
    sha256, size = get_store().put_bytes(b"weights")
    count = 6
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def add() -> None:
        try:
            with session_scope() as session:
                model = Model(
                    id=new_id("m"),
                    tenant_id=tenant.id,
                    name="raced",
                    format="onnx",
                    input_shape=[1, 8, 8],
                    num_classes=10,
                    input_range=[0.0, 1.0],
                    file_sha256=sha256,
                    file_size=size,
                    status=ModelStatus.READY,
                )
                barrier.wait(timeout=10)
                add_version(session, model)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=add) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    with session_scope() as session:
        versions = session.scalars(
            select(Model.version).where(Model.tenant_id == tenant.id, Model.name == "raced")
        ).all()
    assert sorted(versions) == list(range(1, count + 1))


def test_migration_numbers_existing_models_by_creation_order(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from service.admin import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0004")
    engine = create_engine(url)
    rows = [
        ("m_3", "t_a", "cnn", "2026-01-03 00:00:00"),
        ("m_1", "t_a", "cnn", "2026-01-01 00:00:00"),
        ("m_2", "t_a", "cnn", "2026-01-02 00:00:00"),
        ("m_4", "t_a", "mlp", "2026-01-01 00:00:00"),
        ("m_5", "t_b", "cnn", "2026-01-05 00:00:00"),
    ]
    with engine.begin() as connection:
        for tenant in ("t_a", "t_b"):
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES (:id, :id, :at)"),
                {"id": tenant, "at": "2026-01-01 00:00:00"},
            )
        for model_id, tenant, name, created in rows:
            connection.execute(
                text(
                    "INSERT INTO models (id, tenant_id, name, format, input_shape, num_classes,"
                    " input_range, file_sha256, file_size, status, created_at, updated_at)"
                    " VALUES (:id, :tenant, :name, 'onnx', '[1,8,8]', 10, '[0,1]', 'x', 1,"
                    " 'ready', :at, :at)"
                ),
                {"id": model_id, "tenant": tenant, "name": name, "at": created},
            )
    command.upgrade(config, "0005")
    with engine.connect() as connection:
        versions = dict(connection.execute(text("SELECT id, version FROM models")).all())
    assert versions == {"m_1": 1, "m_2": 2, "m_3": 3, "m_4": 1, "m_5": 1}
    command.downgrade(config, "0004")
    engine.dispose()
