"""Queries on datasets."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tables import Dataset


def add(session: Session, dataset: Dataset) -> None:
    """Stage a new dataset."""
    session.add(dataset)
    session.flush()


def get(session: Session, tenant_id: str, dataset_id: str) -> Dataset | None:
    """A tenant's dataset that is not deleted."""
    return session.scalars(
        select(Dataset).where(
            Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
        )
    ).first()


def get_any(session: Session, dataset_id: str) -> Dataset | None:
    """A dataset of any tenant, deleted or not (workers)."""
    return session.get(Dataset, dataset_id)


def list_page(session: Session, tenant_id: str, *, limit: int, cursor: str | None) -> list[Dataset]:
    """Up to ``limit`` datasets older than ``cursor``, newest first."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    if cursor:
        query = query.where(Dataset.id < cursor)
    return list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit)))
