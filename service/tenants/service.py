"""Tenants and their API keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.problems import unauthenticated
from service.security import generate_api_key, hash_api_key
from service.tables import ApiKey, Tenant, new_id
from service.tenants import repository

MISSING_KEY = "missing Authorization header"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose objects a request may see."""

    tenant_id: str
    key_id: str
    is_admin: bool


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant named ``name``, created when missing."""
    tenant = repository.get_tenant_by_name(session, name)
    if tenant is None:
        tenant = Tenant(id=new_id("t"), name=name)
        repository.add(session, tenant)
    return tenant


def create_api_key(
    session: Session, tenant: Tenant, *, name: str = "", is_admin: bool = False
) -> str:
    """Create a key for ``tenant`` and return it; only its hash is kept."""
    key = generate_api_key()
    repository.add(
        session,
        ApiKey(
            id=new_id("k"),
            tenant_id=tenant.id,
            name=name,
            key_hash=hash_api_key(key),
            is_admin=is_admin,
        ),
    )
    return key


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal an API key stands for, or ``None`` for an unknown or revoked key."""
    row = repository.get_active_key(session, hash_api_key(key))
    if row is None:
        return None
    return Principal(tenant_id=row.tenant_id, key_id=row.id, is_admin=row.is_admin)


def principal_from_authorization(session: Session, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <api key>`` header, or the 401 problem.

    The one place a request's key is checked (the request guard calls it before a body is
    read; the route dependency reuses what it found).
    """
    if not authorization:
        raise unauthenticated(MISSING_KEY)
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthenticated("expected 'Authorization: Bearer <api key>'")
    principal = authenticate(session, key.strip())
    if principal is None:
        raise unauthenticated("unknown or revoked API key")
    return principal
