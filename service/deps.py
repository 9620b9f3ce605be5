"""Request dependencies: the transaction-owning session and the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from service.database import session_scope
from service.limits import PRINCIPAL_STATE_KEY
from service.settings import Settings, get_settings
from service.tenants.service import Principal, principal_from_authorization


def get_session() -> Iterator[Session]:
    """One transaction per request: commit on success, roll back on error.

    Callbacks registered with ``service.database.after_commit`` run once the commit
    succeeded (a job id must not reach the broker before its row is visible to workers).
    """
    with session_scope() as session:
        yield session


# scope="function": commit before the response goes out. With the default, FastAPI ends a
# yield dependency after sending the response, so a client could read a 202's job id and
# get a 404 for it, or get a 202 for a job whose commit then failed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_principal(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The tenant behind the request's ``Authorization: Bearer <api key>`` header.

    :class:`service.limits.RequestGuard` checked the key before the body was read and left
    the principal in the request's state; without the guard the key is checked here.
    """
    found = request.scope.get("state", {}).get(PRINCIPAL_STATE_KEY)
    if isinstance(found, Principal):
        return found
    return principal_from_authorization(session, authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_optional_principal(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal | None:
    """The caller's principal, or ``None`` when the request carries no Authorization header
    (for pages that also open with a signed link)."""
    if authorization is None:
        return None
    return get_principal(request, session, authorization)


OptionalPrincipalDep = Annotated[Principal | None, Depends(get_optional_principal)]
