"""Queries on models."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.tables import Model


def add(session: Session, model: Model) -> None:
    """Stage a new model."""
    session.add(model)
    session.flush()


# Concurrent uploads under one name race for the same number; the unique constraint
# (tenant_id, name, version) makes the loser fail, and it takes the next number.
VERSION_ATTEMPTS = 8


class VersionConflict(RuntimeError):
    """Every attempt to number a new version collided with a concurrent one."""


def next_version(session: Session, tenant_id: str, name: str) -> int:
    """One more than the highest version of ``name`` (deleted versions included), or 1."""
    highest = session.scalar(
        select(func.max(Model.version)).where(Model.tenant_id == tenant_id, Model.name == name)
    )
    return int(highest or 0) + 1


def add_version(session: Session, model: Model) -> None:
    """Stage ``model`` as the next version of its name, retrying when a concurrent upload
    took the number (each try in a savepoint, so the outer transaction survives)."""
    for _ in range(VERSION_ATTEMPTS):
        model.version = next_version(session, model.tenant_id, model.name)
        try:
            with session.begin_nested():
                session.add(model)
                session.flush()
        except IntegrityError:
            # The savepoint's rollback expunged ``model``; try the next number.
            continue
        return
    raise VersionConflict(f"could not number a new version of {model.name!r}")


def get(session: Session, tenant_id: str, model_id: str) -> Model | None:
    """A tenant's model that is not deleted."""
    return session.scalars(
        select(Model).where(
            Model.id == model_id, Model.tenant_id == tenant_id, Model.deleted_at.is_(None)
        )
    ).first()


def get_any(session: Session, model_id: str) -> Model | None:
    """A model of any tenant, deleted or not (workers)."""
    return session.get(Model, model_id)


def list_page(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    cursor: str | None,
    name: str | None = None,
    version: int | None = None,
) -> list[Model]:
    """Up to ``limit`` models older than ``cursor``, newest first; optionally one name's
    versions (newest version first) or one version of it."""
    query = select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    if name is not None:
        query = query.where(Model.name == name)
    if version is not None:
        query = query.where(Model.version == version)
    if cursor:
        query = query.where(Model.id < cursor)
    return list(session.scalars(query.order_by(Model.id.desc()).limit(limit)))


def list_all(session: Session, tenant_id: str) -> list[Model]:
    """Every model of a tenant that is not deleted, by name then version."""
    return list(
        session.scalars(
            select(Model)
            .where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
            .order_by(Model.name, Model.version)
        )
    )


def set_status(
    session: Session, model_id: str, status: str, error: dict[str, Any] | None, now: dt.datetime
) -> None:
    """Record a model's validation outcome."""
    session.execute(
        update(Model).where(Model.id == model_id).values(status=status, error=error, updated_at=now)
    )


def mark_black_box(session: Session, model_id: str, now: dt.datetime) -> None:
    """Record that validation found a black box (an ``ai.onnx.ml`` graph)."""
    session.execute(
        update(Model).where(Model.id == model_id).values(black_box=True, updated_at=now)
    )
