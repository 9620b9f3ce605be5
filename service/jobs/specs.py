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


Target = Annotated[
    Literal["least_likely"] | Annotated[int, Field(ge=0)] | None,
    Field(
        description="Targeted variant: 'least_likely' (the class with the lowest clean "
        "logit) or a class index; null for untargeted."
    ),
]
StepSize = Annotated[float | None, Field(gt=0, allow_inf_nan=False)]
EarlyStop = Annotated[
    bool,
    Field(
        description="Stop attacking an example once an iterate fools the model and keep "
        "that iterate (per-example worst case). false: every example runs all steps and the "
        "final iterate counts, as torchattacks does."
    ),
]


class _Attack(_Strict):
    """Fields every attack entry has; the rest are the engine attack's keyword arguments."""

    norm: Norm = "linf"
    eps: EpsList

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the engine's attack (or ensemble)."""
        return self.model_dump(exclude={"name", "norm", "eps"})


class FgsmAttack(_Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one gradient step of size eps."""

    name: Literal["fgsm"]
    target: Target = None


class RfgsmAttack(_Attack):
    """R+FGSM (Tramer et al. 2018): a random step of size alpha, then FGSM with eps - alpha."""

    name: Literal["rfgsm"]
    alpha: StepSize = Field(None, description="Default: eps / 2.")
    target: Target = None


class BimAttack(_Attack):
    """Basic Iterative Method (Kurakin et al. 2016): iterated FGSM steps from the clean input."""

    name: Literal["bim"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: 1.25 * eps / steps.")
    early_stop: EarlyStop = True
    target: Target = None


class MifgsmAttack(_Attack):
    """Momentum Iterative FGSM (Dong et al. 2018)."""

    name: Literal["mifgsm"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: eps / steps.")
    decay: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)
    early_stop: EarlyStop = True
    target: Target = None


class PgdAttack(_Attack):
    """Projected Gradient Descent (Madry et al. 2018); BIM without random start."""

    name: Literal["pgd"]
    steps: int = Field(10, ge=1, le=10_000)
    step_size: StepSize = Field(None, description="Default: 2.5 * eps / steps.")
    random_start: bool = True
    restarts: int = Field(1, ge=1, le=100)
    early_stop: EarlyStop = True
    target: Target = None


class ApgdCeAttack(_Attack):
    """APGD with cross-entropy (Croce & Hein 2020): step sizes that adapt, no tuning."""

    name: Literal["apgd-ce"]
    steps: int = Field(100, ge=1, le=10_000)
    restarts: int = Field(1, ge=1, le=100)
    rho: float = Field(0.75, gt=0, lt=1)


class ApgdTAttack(_Attack):
    """Targeted APGD with the DLR loss (Croce & Hein 2020) over the top target classes."""

    name: Literal["apgd-t"]
    steps: int = Field(100, ge=1, le=10_000)
    target_classes: int = Field(9, ge=1, le=1000)
    restarts: int = Field(1, ge=1, le=100)
    rho: float = Field(0.75, gt=0, lt=1)


class SquareAttack(_Attack):
    """Square Attack (Andriushchenko et al. 2020): score-based, no gradients."""

    name: Literal["square"]
    queries: int = Field(5000, ge=1, le=100_000)
    p_init: float = Field(0.8, gt=0, le=1)


class AutoAttackEnsemble(_Attack):
    """The AutoAttack ensemble: APGD-CE, APGD-T and Square, cheapest first, on the examples
    every earlier one failed on; an example counts as robust only if all three fail."""

    name: Literal["autoattack"]
    steps: int = Field(100, ge=1, le=10_000, description="APGD iterations.")
    target_classes: int = Field(9, ge=1, le=1000, description="APGD-T target classes.")
    queries: int = Field(5000, ge=1, le=100_000, description="Square queries.")


AttackEntry = (
    FgsmAttack
    | RfgsmAttack
    | BimAttack
    | MifgsmAttack
    | PgdAttack
    | ApgdCeAttack
    | ApgdTAttack
    | SquareAttack
    | AutoAttackEnsemble
)
AttackSpec = Annotated[AttackEntry, Field(discriminator="name")]
ATTACK_NAMES = (
    "fgsm",
    "rfgsm",
    "bim",
    "mifgsm",
    "pgd",
    "apgd-ce",
    "apgd-t",
    "square",
    "autoattack",
)

Preset = Literal["quick", "standard", "autoattack"]


def preset_attacks(preset: str, norm: str, eps: list[float]) -> list[AttackEntry]:
    """The attacks a preset stands for: ``quick`` (FGSM + PGD-10) and ``standard`` (PGD-50,
    3 restarts) for CI tiers, ``autoattack`` (the strong default)."""
    if preset == "quick":
        return [
            FgsmAttack(name="fgsm", norm=norm, eps=eps),
            PgdAttack(name="pgd", norm=norm, eps=eps, steps=10),
        ]
    if preset == "standard":
        return [PgdAttack(name="pgd", norm=norm, eps=eps, steps=50, restarts=3)]
    return [AutoAttackEnsemble(name="autoattack", norm=norm, eps=eps)]


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
    attacks: list[AttackSpec] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="Attacks to run; omit them to use 'preset' (default: autoattack).",
    )
    preset: Preset | None = Field(
        None,
        description="quick (FGSM + PGD-10), standard (PGD-50, 3 restarts) or autoattack "
        "(APGD-CE + APGD-T + Square); used when 'attacks' is omitted.",
    )
    norm: Norm = Field("linf", description="The preset's norm.")
    eps: EpsList | None = Field(
        None, description="The preset's eps (default 8/255 for linf, 0.5 for l2)."
    )
    gate: Gate | None = None
    checks: bool = Field(True, description="Run the evaluation validity checks.")

    def resolved_attacks(self) -> list[AttackEntry]:
        """The attacks to run: ``attacks``, or the preset's."""
        if self.attacks:
            return list(self.attacks)
        eps = self.eps or ([8 / 255] if self.norm == "linf" else [0.5])
        return preset_attacks(self.preset or "autoattack", self.norm, eps)

    @field_validator("attacks")
    @classmethod
    def _eps_unique(cls, attacks: list[AttackEntry] | None) -> list[AttackEntry] | None:
        for attack in attacks or []:
            for i, eps in enumerate(attack.eps):
                if any(same_eps(eps, other) for other in attack.eps[:i]):
                    raise ValueError(f"{attack.name}: eps {eps:g} is listed twice")
        return attacks

    @model_validator(mode="after")
    def _gate_refers_to_attacks(self) -> AuditSpec:
        if self.attacks and (self.preset or self.eps):
            raise ValueError("give either 'attacks' or 'preset' with 'eps', not both")
        if self.gate is None:
            return self
        attacks = self.resolved_attacks()
        for check in self.gate.min_robust_accuracy:
            matches = [
                attack
                for attack in attacks
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
