"""Queries on models."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.tables import Model


def add(session: Session, model: Model) -> None:
    """Stage a new model."""
    session.add(model)
    session.flush()


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


def list_page(session: Session, tenant_id: str, *, limit: int, cursor: str | None) -> list[Model]:
    """Up to ``limit`` models older than ``cursor``, newest first."""
    query = select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    if cursor:
        query = query.where(Model.id < cursor)
    return list(session.scalars(query.order_by(Model.id.desc()).limit(limit)))


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
