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
from service.jobs.train_specs import TrainSpec
from service.jobs.transfer_specs import TransferSpec
from service.models import repository as models
from service.problems import ProblemError, invalid, not_found
from service.settings import Settings
from service.tables import Model, ModelStatus
from service.tenants.service import Principal

# The formats whose weights a fine-tune can write back (the user's ONNX graph, or a
# state_dict of a built-in architecture).
FINE_TUNABLE_FORMATS = ("onnx", "safetensors", "pt")


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
    """An audit needs a ready model of the tenant and data that fits it; a black-box model
    is audited with score-based attacks only (:meth:`AuditSpec.for_black_box`)."""
    model = ready_model(session, principal, spec.model_id)
    if model.black_box:
        spec = spec.for_black_box()
    dataset = get_dataset(session, principal, spec.dataset_id)
    check_audit_fits(spec, model, dataset, settings)
    examples = min(spec.limit or dataset.splits[spec.split], dataset.splits[spec.split])
    shards = spec.shards
    if shards is None and settings.audit_shard_examples:
        shards = -(-examples // settings.audit_shard_examples)
    parts = []
    if shards is not None and shards > 1:
        document = spec.model_dump(mode="json")
        for start, stop in shard_ranges(examples, shards):
            parts.append(
                Part(
                    kind="audit_shard",
                    spec={"kind": "audit_shard", "audit": document, "start": start, "stop": stop},
                    model_id=spec.model_id,
                    dataset_id=spec.dataset_id,
                )
            )
    return Admission(model_id=spec.model_id, dataset_id=spec.dataset_id, parts=parts)


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges of ``count`` examples, sizes differing by
    at most one (the engine's ``adversarial.shards.shard_ranges``, which the API cannot
    import; a test keeps the two the same)."""
    size, extra = divmod(count, max(shards, 1))
    ranges, start = [], 0
    for index in range(max(shards, 1)):
        stop = start + size + (1 if index < extra else 0)
        if stop > start:
            ranges.append((start, stop))
        start = stop
    return ranges


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


def check_dataset_fits(
    split: str,
    limit: int | None,
    dataset: DatasetRead,
    model: Model,
    settings: Settings,
    work: str,
) -> int:
    """Refuse a dataset whose split, shape, labels or values do not fit ``model`` (for a
    transfer: every source and target, which admission checked agree), or that gives more
    examples than one job may take; the number of examples the job will use."""
    if split not in dataset.splits:
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
    examples = min(limit or dataset.splits[split], dataset.splits[split])
    if examples > settings.max_examples_per_job:
        raise invalid(
            "limit",
            f"{work} {examples} examples; at most "
            f"{settings.max_examples_per_job} per job (set 'limit')",
        )
    return examples


def check_audit_fits(
    spec: AuditSpec, model: Model, dataset: DatasetRead, settings: Settings
) -> None:
    """Refuse an audit whose data, labels, eps or attacks cannot work with its model, or
    whose size is beyond what one job may take."""
    examples = check_dataset_fits(
        spec.split, spec.limit, dataset, model, settings, "this audit would evaluate"
    )
    for where, reason in spec.refusals(model.num_classes):
        raise invalid(where, reason)
    lower, upper = model.input_range
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


def admit_train(
    session: Session, principal: Principal, spec: TrainSpec, settings: Settings
) -> Admission:
    """Training needs data with a train split (and room for a validation split), a ready
    parent model to fine-tune if one is named, and a budget one job may take."""
    dataset = get_dataset(session, principal, spec.dataset_id)
    split = "train" if "train" in dataset.splits else "test"
    examples = dataset.splits[split]
    if examples < 10:
        raise invalid("dataset_id", f"{examples} examples are too few to train on")
    if examples > settings.max_examples_per_job:
        raise invalid(
            "dataset_id",
            f"{examples} training examples; at most {settings.max_examples_per_job} per job",
        )
    if spec.fine_tune is not None:
        parent = ready_model(session, principal, spec.fine_tune.model_id)
        if parent.format not in FINE_TUNABLE_FORMATS:
            raise invalid(
                "fine_tune.model_id",
                f"{parent.format} models cannot be fine-tuned (their weights cannot be written "
                f"back); fine-tune an {' or '.join(FINE_TUNABLE_FORMATS)} model",
            )
        if list(dataset.example_shape) != list(parent.input_shape):
            raise invalid(
                "dataset_id",
                f"examples have shape {dataset.example_shape} but the model expects "
                f"{parent.input_shape}",
            )
        if dataset.num_classes > parent.num_classes:
            raise invalid(
                "dataset_id",
                f"labels go up to {dataset.num_classes - 1} but the model has "
                f"{parent.num_classes} classes",
            )
        input_range = (parent.input_range[0], parent.input_range[1])
        num_classes, input_shape = parent.num_classes, list(parent.input_shape)
    else:
        input_range = (0.0, 1.0)
        num_classes, input_shape = max(dataset.num_classes, 2), list(dataset.example_shape)
    lower, upper = input_range
    if dataset.value_range[0] < lower or dataset.value_range[1] > upper:
        raise invalid(
            "dataset_id",
            f"values span {dataset.value_range}, outside the input range [{lower}, {upper}]",
        )
    eps = getattr(spec.method, "eps", None)
    if eps is not None and getattr(spec.method, "norm", "linf") == "linf" and eps > upper - lower:
        raise invalid("method.eps", f"eps {eps:g} is beyond the input range [{lower}, {upper}]")
    gradients = spec.gradient_evaluations(examples)
    if gradients > settings.max_gradients_per_job:
        raise invalid(
            "epochs",
            f"this training plans {gradients:,} gradient computations (examples x epochs x the "
            f"method's passes); the limit is {settings.max_gradients_per_job:,} per job",
            code="budget_exceeded",
        )
    follow_up = spec.audit_spec("m_trained")
    if follow_up is not None:
        # The audit runs on the model this job makes: check it as if that model existed.
        stand_in = Model(
            id="m_trained",
            tenant_id=principal.tenant_id,
            input_shape=input_shape,
            num_classes=num_classes,
            input_range=[lower, upper],
            status=ModelStatus.READY,
        )
        check_audit_fits(
            follow_up, stand_in, get_dataset(session, principal, follow_up.dataset_id), settings
        )
    return Admission(
        model_id=spec.fine_tune.model_id if spec.fine_tune else None, dataset_id=spec.dataset_id
    )


def admit_transfer(
    session: Session, principal: Principal, spec: TransferSpec, settings: Settings
) -> Admission:
    """A transfer needs ready models of the tenant that agree on their inputs and classes
    (sources differentiable: no black box), data that fits them, and a budget one job may
    take. Its parts are made by the job itself once it has looked for crafted sets to reuse
    (the keys need the examples, which only a worker loads)."""
    rows: list[tuple[str, Model]] = []
    for where, model_id in spec.named_models():
        model = models.get(session, principal.tenant_id, model_id)
        if model is None:
            raise invalid(where, f"no model {model_id!r} (missing or not yours)", code="not_found")
        if model.status == ModelStatus.VALIDATING:
            raise ProblemError(
                409,
                "model_not_ready",
                f"{where}: model {model_id!r} is still being validated; retry when its "
                "status is 'ready'",
                headers={"Retry-After": "2"},
            )
        if model.status != ModelStatus.READY:
            reason = (model.error or {}).get("message", "validation failed")
            raise invalid(where, f"model {model_id!r} is invalid: {reason}", code="model_invalid")
        if where.startswith("sources") and model.black_box:
            raise invalid(
                where,
                f"model {model_id!r} is a black box (no input gradient): adversarial examples "
                "are crafted with white-box attacks; use it as a target instead",
                code="black_box_source",
            )
        rows.append((where, model))
    first_field, first = rows[0]
    for where, model in rows[1:]:
        if list(model.input_shape) != list(first.input_shape):
            raise invalid(
                where,
                f"model {model.id!r} takes inputs {model.input_shape}, {first_field} "
                f"({first.id!r}) takes {first.input_shape}: every source and target must take "
                "the same inputs",
            )
        if model.num_classes != first.num_classes:
            raise invalid(
                where,
                f"model {model.id!r} has {model.num_classes} classes, {first_field} "
                f"({first.id!r}) has {first.num_classes}: every source and target must have "
                "the same classes",
            )
        if list(model.input_range) != list(first.input_range):
            raise invalid(
                where,
                f"model {model.id!r} has input_range {model.input_range}, {first_field} has "
                f"{first.input_range}: eps would not mean the same thing for both",
            )
    dataset = get_dataset(session, principal, spec.dataset_id)
    examples = check_dataset_fits(
        spec.split, spec.limit, dataset, first, settings, "this transfer would craft on"
    )
    lower, upper = first.input_range
    span = upper - lower
    largest = span if spec.attack.norm == "linf" else span * math.sqrt(math.prod(first.input_shape))
    for eps in spec.attack.radii():
        if eps > largest:
            raise invalid(
                "attack.eps",
                f"eps {eps:g} is beyond the input range [{lower}, {upper}] ({spec.attack.norm} "
                f"eps can be at most {largest:g})",
            )
    gradients = spec.gradient_evaluations(examples)
    if gradients > settings.max_gradients_per_job:
        raise invalid(
            "attack",
            f"this transfer plans {gradients:,} gradient evaluations (examples x source models "
            f"x eps x steps); the limit is {settings.max_gradients_per_job:,} per job: fewer "
            "examples ('limit'), sources, eps or steps",
            code="budget_exceeded",
        )
    cells = spec.result_cells()
    if cells > settings.max_result_cells:
        raise invalid(
            "targets",
            f"the matrix would hold {cells:,} cells (sources x targets x eps); the limit is "
            f"{settings.max_result_cells:,}",
            code="budget_exceeded",
        )
    return Admission(model_id=first.id, dataset_id=spec.dataset_id)
