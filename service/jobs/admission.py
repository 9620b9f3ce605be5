"""Admission: the checks a job must pass against the database before it is queued.

One function per job kind (registered in :mod:`service.jobs.kinds`). Each refuses what the
engine would refuse and what is beyond one job's budget, with a 422 that names the field,
and says which model and dataset the job uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from service.datasets.schemas import DatasetRead
from service.datasets.service import get_dataset
from service.jobs.specs import AuditSpec
from service.models import repository as models
from service.problems import ProblemError, invalid, not_found
from service.settings import Settings
from service.tables import Model, ModelStatus
from service.tenants.service import Principal


@dataclass(frozen=True)
class Part:
    """A job an admitted job is made of (a shard, a transfer's crafting or scoring)."""

    kind: str
    spec: dict[str, Any]
    model_id: str | None = None
    dataset_id: str | None = None


@dataclass(frozen=True)
class Admission:
    """What an admitted job refers to (the columns jobs are filtered by), and the parts it
    is made of: with parts, the job waits for them and then runs to merge their results."""

    model_id: str | None = None
    dataset_id: str | None = None
    parts: list[Part] = field(default_factory=list)


def admit_audit(
    session: Session, principal: Principal, spec: AuditSpec, settings: Settings
) -> Admission:
    """An audit needs a ready model of the tenant and data that fits it."""
    model = ready_model(session, principal, spec.model_id)
    dataset = get_dataset(session, principal, spec.dataset_id)
    check_audit_fits(spec, model, dataset, settings)
    return Admission(model_id=spec.model_id, dataset_id=spec.dataset_id)


def ready_model(session: Session, principal: Principal, model_id: str) -> Model:
    """A model of the tenant that validated; a 409 while it validates, a 422 if invalid."""
    model = models.get(session, principal.tenant_id, model_id)
    if model is None:
        raise not_found("model", model_id)
    if model.status == ModelStatus.VALIDATING:
        raise ProblemError(
            409,
            "model_not_ready",
            f"model {model_id!r} is still being validated; retry when its status is 'ready'",
            headers={"Retry-After": "2"},
        )
    if model.status != ModelStatus.READY:
        reason = (model.error or {}).get("message", "validation failed")
        raise invalid("model_id", f"model is invalid: {reason}", code="model_invalid")
    return model


def check_audit_fits(
    spec: AuditSpec, model: Model, dataset: DatasetRead, settings: Settings
) -> None:
    """Refuse an audit whose data, labels, eps or attacks cannot work with its model, or
    whose size is beyond what one job may take."""
    if spec.split not in dataset.splits:
        raise invalid("split", f"dataset {dataset.id!r} has splits {sorted(dataset.splits)}")
    if list(dataset.example_shape) != list(model.input_shape):
        raise invalid(
            "dataset_id",
            f"examples have shape {dataset.example_shape} but the model expects "
            f"{model.input_shape}",
        )
    if dataset.num_classes > model.num_classes:
        raise invalid(
            "dataset_id",
            f"labels go up to {dataset.num_classes - 1} but the model has "
            f"{model.num_classes} classes",
        )
    lower, upper = model.input_range
    tolerance = 1e-6 * (upper - lower)
    if dataset.value_range[0] < lower - tolerance or dataset.value_range[1] > upper + tolerance:
        raise invalid(
            "dataset_id",
            f"values span {dataset.value_range} but the model's input_range is [{lower}, {upper}]",
        )
    examples = min(spec.limit or dataset.splits[spec.split], dataset.splits[spec.split])
    if examples > settings.max_examples_per_job:
        raise invalid(
            "limit",
            f"this audit would evaluate {examples} examples; at most "
            f"{settings.max_examples_per_job} per job (set 'limit')",
        )
    for where, reason in spec.refusals(model.num_classes):
        raise invalid(where, reason)
    span = upper - lower
    dims = math.prod(model.input_shape)
    for where, attack in spec.sourced_attacks():
        # Beyond these radii the ball contains the whole input range: eps is surely a mistake.
        largest = span if attack.norm == "linf" else span * math.sqrt(dims)
        for eps in attack.radii():
            if eps > largest:
                raise invalid(
                    f"{where}.eps" if where.startswith("attacks") else "eps",
                    f"{attack.name}: eps {eps:g} is beyond the input range [{lower}, {upper}] "
                    f"({attack.norm} eps can be at most {largest:g})",
                )
    gradients = spec.gradient_evaluations(examples, model.num_classes)
    if gradients > settings.max_gradients_per_job:
        raise invalid(
            "attacks",
            f"this audit plans {gradients:,} gradient evaluations (examples x eps x steps x "
            f"restarts, and Square's queries); the limit is {settings.max_gradients_per_job:,} "
            "per job: fewer examples ('limit'), eps or steps",
            code="budget_exceeded",
        )
    cells = spec.result_cells(model.num_classes)
    if cells > settings.max_result_cells:
        raise invalid(
            "attacks",
            f"the result would hold {cells:,} per-class numbers (attacks x eps x classes); the "
            f"limit is {settings.max_result_cells:,}",
            code="budget_exceeded",
        )
