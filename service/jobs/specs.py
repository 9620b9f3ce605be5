"""Job specifications: what a client may ask for, validated before anything is stored.

The worker parses the stored spec with the same classes, so what was accepted is exactly
what runs. Checks that need the database (the model exists, the data fits it) are in
``service.jobs.service``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Norm = Literal["linf", "l2"]
EpsList = Annotated[
    list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(min_length=1, max_length=32)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FgsmAttack(_Strict):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one gradient step of size eps."""

    name: Literal["fgsm"]
    norm: Norm = "linf"
    eps: EpsList

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the engine's attack."""
        return {}


class PgdAttack(_Strict):
    """Projected Gradient Descent (Madry et al. 2018); BIM without random start."""

    name: Literal["pgd"]
    norm: Norm = "linf"
    eps: EpsList
    steps: int = Field(10, ge=1, le=10_000)
    step_size: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Default: 2.5 * eps / steps."
    )
    random_start: bool = True
    restarts: int = Field(1, ge=1, le=100)
    early_stop: bool = Field(
        True,
        description="Stop attacking an example once an iterate fools the model and keep that "
        "iterate (per-example worst case). false: every example runs all steps and the final "
        "iterate counts, as torchattacks does.",
    )

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the engine's attack."""
        return {
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "early_stop": self.early_stop,
        }


AttackSpec = Annotated[FgsmAttack | PgdAttack, Field(discriminator="name")]


class RobustGate(_Strict):
    """Require a minimum robust accuracy for one attack at one eps."""

    attack: str
    eps: float = Field(ge=0, allow_inf_nan=False)
    norm: Norm | None = Field(None, description="Needed only when the attack runs in two norms.")
    value: float = Field(ge=0, le=1)


class Gate(_Strict):
    """A robustness gate: the audit passes when every check holds."""

    min_clean_accuracy: float | None = Field(None, ge=0, le=1)
    min_robust_accuracy: list[RobustGate] = Field(default_factory=list, max_length=100)


def same_eps(a: float, b: float) -> bool:
    """Whether two eps values are the same (tolerant of decimal round trips like 8/255)."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


class AuditSpec(_Strict):
    """Attack a model on a dataset and report clean and robust accuracy."""

    kind: Literal["audit"]
    model_id: str = Field(min_length=1, max_length=80)
    dataset_id: str = Field("builtin:digits", min_length=1, max_length=80)
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(
        None,
        ge=1,
        description="Evaluate at most this many examples "
        "(a seeded random subset; all when omitted).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    attacks: list[AttackSpec] = Field(min_length=1, max_length=32)
    gate: Gate | None = None

    @field_validator("attacks")
    @classmethod
    def _eps_unique(cls, attacks: list[FgsmAttack | PgdAttack]) -> list[FgsmAttack | PgdAttack]:
        for attack in attacks:
            for i, eps in enumerate(attack.eps):
                if any(same_eps(eps, other) for other in attack.eps[:i]):
                    raise ValueError(f"{attack.name}: eps {eps:g} is listed twice")
        return attacks

    @model_validator(mode="after")
    def _gate_refers_to_attacks(self) -> AuditSpec:
        if self.gate is None:
            return self
        for check in self.gate.min_robust_accuracy:
            matches = [
                attack
                for attack in self.attacks
                if attack.name == check.attack
                and (check.norm is None or attack.norm == check.norm)
                and any(same_eps(check.eps, eps) for eps in attack.eps)
            ]
            if not matches:
                raise ValueError(
                    f"gate check {check.attack}@{check.eps:g} matches no attack and eps in "
                    "'attacks'"
                )
            if len({attack.norm for attack in matches}) > 1:
                raise ValueError(
                    f"gate check {check.attack}@{check.eps:g} is ambiguous: give its 'norm'"
                )
        return self


class ValidateModelSpec(_Strict):
    """Internal: load an uploaded model and check it against its metadata."""

    kind: Literal["validate_model"]
    model_id: str


# What POST /v1/jobs accepts; ``train`` and ``transfer`` join as a union on ``kind``.
JobSpec = AuditSpec

USER_JOB_KINDS = ("audit",)


def request_hash(spec: BaseModel) -> str:
    """A digest of a validated spec, to tell an idempotent replay from a different request."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
