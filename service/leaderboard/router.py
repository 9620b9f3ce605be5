"""HTTP routes of the leaderboard: the page, and a signed link to it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from service.deps import OptionalPrincipalDep, PrincipalDep, SessionDep, SettingsDep
from service.leaderboard import service
from service.leaderboard.page import render_leaderboard
from service.pages import html_page
from service.problems import ProblemError, problem_responses
from service.security import LINK_TOKEN_PATTERN, report_token

router = APIRouter(prefix="/v1", tags=["leaderboard"])

FROM_LINK = "From POST /v1/leaderboard-link."
ID_PATTERN = r"^[A-Za-z0-9_]+$"


class LeaderboardLink(BaseModel):
    """A URL that opens the tenant's leaderboard without the API key, until it expires."""

    url: str
    expires_at: dt.datetime


@router.get(
    "/leaderboard",
    response_class=HTMLResponse,
    name="leaderboard",
    responses=problem_responses(403, 410),
)
def leaderboard(
    principal: OptionalPrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    tenant: Annotated[
        str | None, Query(max_length=40, pattern=ID_PATTERN, description=FROM_LINK)
    ] = None,
    token: Annotated[
        str | None, Query(max_length=200, pattern=LINK_TOKEN_PATTERN, description=FROM_LINK)
    ] = None,
) -> HTMLResponse:
    """Every model version of the team with its latest audit, and a trend chart per name
    (the API key, or a signed link's tenant and token)."""
    if principal is not None:
        tenant_id = principal.tenant_id
        # The page's report links live as long as a fresh link would.
        expires = int(time.time()) + settings.report_link_seconds
    elif tenant is not None and token is not None:
        expires = service.check_link(tenant, token)
        tenant_id = tenant
    else:
        raise ProblemError(
            401,
            "unauthenticated",
            "send the API key or use a leaderboard link",
            headers={"WWW-Authenticate": "Bearer"},
        )
    table = service.rows(session, tenant_id)

    def report_url(job_id: str) -> str:
        # A report link that ends with the leaderboard link it was reached through.
        signed = report_token(tenant_id, job_id, expires)
        return str(request.url_for("job_report", job_id=job_id).include_query_params(token=signed))

    return html_page(render_leaderboard(table, report_url))


@router.post("/leaderboard-link")
def leaderboard_link(
    principal: PrincipalDep, settings: SettingsDep, request: Request
) -> LeaderboardLink:
    """A link that opens the team's leaderboard in a browser without the API key, until it
    expires (GAUNTLET_REPORT_LINK_SECONDS, 7 days by default)."""
    token, expires = service.link(principal.tenant_id, settings.report_link_seconds)
    url = request.url_for("leaderboard").include_query_params(
        tenant=principal.tenant_id, token=token
    )
    return LeaderboardLink(url=str(url), expires_at=service.expiry_time(expires))
