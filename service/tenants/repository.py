"""Queries on tenants and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.tables import ApiKey, Tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    """The tenant called ``name``, if any."""
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def get_active_key(session: Session, key_hash: str) -> ApiKey | None:
    """The unrevoked key with this hash, if any."""
    return session.scalars(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()


def add(session: Session, row: Tenant | ApiKey) -> None:
    """Stage a new tenant or key."""
    session.add(row)
    session.flush()
