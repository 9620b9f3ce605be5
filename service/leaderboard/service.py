"""The leaderboard's rows: every model version of a tenant with its latest audit's numbers."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from service.jobs.service import link_expired
from service.jobs.specs import DEFAULT_PRESET
from service.leaderboard import repository
from service.models import repository as models
from service.problems import ProblemError
from service.security import LinkCheck, check_leaderboard_token, leaderboard_token, token_expiry
from service.tables import Job, Model

# (norm, eps): a worst-case column.
Radius = tuple[str, float]


@dataclass(frozen=True)
class Row:
    """One model version and what its latest succeeded audit measured (``job`` is None
    when it has none)."""

    model: Model
    job: Job | None = None
    clean_accuracy: float | None = None
    worst_case: dict[Radius, float] = field(default_factory=dict)
    preset: str = ""
    warnings: tuple[str, ...] = ()


def preset_of(spec: dict[str, Any]) -> str:
    """The preset an audit ran: its name, "custom" for hand-listed attacks, both joined when
    a preset got extra attacks, and the default preset when the spec named neither."""
    preset, attacks = spec.get("preset"), spec.get("attacks")
    if preset and attacks:
        return f"{preset} + custom"
    if preset:
        return str(preset)
    return "custom" if attacks else DEFAULT_PRESET


def _row(model: Model, job: Job | None) -> Row:
    if job is None or not isinstance(job.result, dict):
        return Row(model=model)
    result = job.result
    worst = {
        (str(entry["norm"]), float(entry["eps"])): float(entry["robust_accuracy"])
        for entry in result.get("worst_case", [])
    }
    return Row(
        model=model,
        job=job,
        clean_accuracy=result.get("clean_accuracy"),
        worst_case=worst,
        preset=preset_of(job.spec),
        warnings=tuple(str(w["code"]) for w in result.get("warnings", [])),
    )


def rows(session: Session, tenant_id: str) -> list[Row]:
    """Every model version of the tenant (by name, then version) with its latest audit."""
    versions = models.list_all(session, tenant_id)
    audits = repository.latest_audits(session, tenant_id, [m.id for m in versions])
    return [_row(model, audits.get(model.id)) for model in versions]


def radii(table: list[Row]) -> list[Radius]:
    """The worst-case columns: every (norm, eps) some row was audited at, sorted."""
    return sorted({radius for row in table for radius in row.worst_case})


def link(tenant_id: str, seconds: int) -> tuple[str, int]:
    """A token for a link that opens the tenant's leaderboard, and its expiry (Unix s)."""
    expires = int(time.time()) + seconds
    return leaderboard_token(tenant_id, expires), expires


def expiry_time(expires: int) -> dt.datetime:
    """Unix seconds as an aware datetime."""
    return dt.datetime.fromtimestamp(expires, dt.UTC)


def check_link(tenant_id: str, token: str) -> int:
    """The expiry of a valid leaderboard token for ``tenant_id``; a 410 when the link is
    genuine but expired, a 403 otherwise."""
    check = check_leaderboard_token(token, tenant_id, time.time())
    if check is LinkCheck.EXPIRED:
        raise link_expired("leaderboard", token_expiry(token), "POST /v1/leaderboard-link")
    if check is LinkCheck.INVALID:
        raise ProblemError(
            403, "invalid_link", "this leaderboard link is not valid (altered or for another team)"
        )
    return token_expiry(token)
