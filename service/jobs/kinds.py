"""The job kinds: for each, its spec, its admission rule, its result and who may submit it.

A kind is a spec model, an admission rule, an engine function, a thin runner and a typed
result. The API side of each is registered here (the worker's runners mirror it in
``worker.runners.RUNNERS``); nothing else says ``if kind == ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from service.jobs.admission import Admission, admit_audit, admit_train, admit_transfer
from service.jobs.results import (
    AuditResult,
    AuditShardResult,
    TrainResult,
    TransferCraftResult,
    TransferResult,
    TransferScoreResult,
    ValidationResult,
)
from service.jobs.specs import AuditShardSpec, AuditSpec, ValidateModelSpec
from service.jobs.train_specs import TrainSpec
from service.jobs.transfer_specs import TransferCraftSpec, TransferScoreSpec, TransferSpec
from service.settings import Settings
from service.tenants.service import Principal

Admit = Callable[[Session, Principal, Any, Settings], Admission]

# What POST /v1/jobs accepts: one spec per kind tenants submit, told apart by ``kind``.
JobSpec = Annotated[AuditSpec | TrainSpec | TransferSpec, Field(discriminator="kind")]


@dataclass(frozen=True)
class JobKind:
    """One kind of job, as the API sees it."""

    name: str
    spec: type[BaseModel]
    result: type[BaseModel]
    # Submitted and cancelled by tenants (``None``: internal work the service creates).
    admit: Admit | None


KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("audit", AuditSpec, AuditResult, admit_audit),
        JobKind("train", TrainSpec, TrainResult, admit_train),
        JobKind("validate_model", ValidateModelSpec, ValidationResult, None),
        JobKind("audit_shard", AuditShardSpec, AuditShardResult, None),
        JobKind("transfer", TransferSpec, TransferResult, admit_transfer),
        JobKind("transfer_craft", TransferCraftSpec, TransferCraftResult, None),
        JobKind("transfer_score", TransferScoreSpec, TransferScoreResult, None),
    )
}


def user_kinds() -> list[str]:
    """The kinds tenants submit."""
    return [name for name, kind in KINDS.items() if kind.admit is not None]


def user_kind(name: str) -> bool:
    """Whether tenants submit and cancel jobs of this kind."""
    kind = KINDS.get(name)
    return kind is not None and kind.admit is not None


def typed_result(kind: str, document: dict[str, Any] | None) -> BaseModel | dict[str, Any] | None:
    """A stored result as its kind's model (a document that does not fit is served as is)."""
    if document is None or kind not in KINDS:
        return document
    try:
        return KINDS[kind].result.model_validate(document)
    except ValueError:
        return document
