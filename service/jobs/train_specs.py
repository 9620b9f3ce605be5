"""The training job's spec: what to train, with which method, schedule and data.

Pure pydantic, like the audit spec; the worker turns it into the engine's configurations
(``adversarial.training``). The defaults live here, once: they are part of the engine
version (``service.engine``), so a change of default re-trains rather than replays.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.architectures import ARCHITECTURES
from service.jobs.specs import AuditSpec, Norm

Eps = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
StepSize = Annotated[float | None, Field(None, gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchitectureChoice(_Strict):
    """A built-in architecture (``GET /v1/architectures``) to train from scratch."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> ArchitectureChoice:
        known = ARCHITECTURES.get(self.name)
        if known is None:
            raise ValueError(
                f"unknown architecture {self.name!r}; GET /v1/architectures lists: "
                + ", ".join(sorted(ARCHITECTURES))
            )
        unknown = sorted(set(self.kwargs) - set(known.kwargs))
        if unknown:
            raise ValueError(f"{self.name} takes no argument(s) {', '.join(unknown)}")
        return self


class FineTune(_Strict):
    """Start from an uploaded (or trained) model: all its layers, or only the last one."""

    model_id: str = Field(min_length=1, max_length=80)
    layers: Literal["all", "last"] = "all"


class _Adversarial(_Strict):
    eps: Eps
    norm: Norm = "linf"


class NaturalMethod(_Strict):
    """Plain cross-entropy training."""

    name: Literal["natural"]


class FgsmMethod(_Adversarial):
    """Goodfellow et al. 2015: ``alpha * J(x) + (1 - alpha) * J(x + eps * sign(grad))``."""

    name: Literal["fgsm"]
    alpha: float = Field(0.5, ge=0, le=1)


class PgdMethod(_Adversarial):
    """Madry et al. 2018: train on PGD-K examples (about K + 1 times natural's cost)."""

    name: Literal["pgd"]
    steps: int = Field(7, ge=1, le=100)
    step_size: StepSize = Field(None, description="Default: 2.5 * eps / steps.")
    random_start: bool = True


class FreeMethod(_Adversarial):
    """Shafahi et al. 2019: each minibatch replayed ``replays`` times, one backward pass for
    the weights and the perturbation, epochs divided by ``replays`` (natural's cost)."""

    name: Literal["free"]
    replays: int = Field(4, ge=1, le=32)
    step_size: StepSize = Field(None, description="Default: eps.")


class FastMethod(_Adversarial):
    """Wong et al. 2020: FGSM from a random start, step 1.25 eps, a one-cycle learning rate;
    stops (keeping the best epoch) on catastrophic overfitting."""

    name: Literal["fast"]
    step_size: StepSize = Field(None, description="Default: 1.25 * eps.")
    stop_on_overfitting: bool = True


class TradesMethod(_Adversarial):
    """Zhang et al. 2019: clean cross-entropy plus ``beta`` times the KL to PGD examples."""

    name: Literal["trades"]
    beta: float = Field(6.0, ge=0, le=1000)
    steps: int = Field(10, ge=1, le=100)
    step_size: StepSize = None


class VatMethod(_Adversarial):
    """Miyato et al. 2018: virtual adversarial training; examples labelled -1 are unlabeled
    and count only in the consistency term."""

    name: Literal["vat"]
    xi: float = Field(1e-2, gt=0, le=10)
    power_iterations: int = Field(1, ge=1, le=10)
    weight: float = Field(1.0, ge=0, le=1000)


TrainMethod = Annotated[
    NaturalMethod | FgsmMethod | PgdMethod | FreeMethod | FastMethod | TradesMethod | VatMethod,
    Field(discriminator="name"),
]


class SgdOptimizer(_Strict):
    """SGD with momentum."""

    name: Literal["sgd"]
    lr: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)


class AdamOptimizer(_Strict):
    """Adam."""

    name: Literal["adam"]
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)


Optimizer = Annotated[SgdOptimizer | AdamOptimizer, Field(discriminator="name")]


class ConstantSchedule(_Strict):
    """The optimizer's learning rate throughout."""

    name: Literal["constant"]


class MultiStepSchedule(_Strict):
    """Multiply the rate by ``gamma`` at each milestone (fractions of the run)."""

    name: Literal["multistep"]
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.5, 0.75], max_length=10
    )
    gamma: float = Field(0.1, gt=0, le=1)


class CosineSchedule(_Strict):
    """Cosine decay to ``final_fraction`` of the rate."""

    name: Literal["cosine"]
    final_fraction: float = Field(0.0, ge=0, le=1)


class OneCycleSchedule(_Strict):
    """Fast-AT's one-cycle: linear up to the rate at ``peak_fraction`` of the run, then down
    to zero, stepped every update."""

    name: Literal["one_cycle"]
    peak_fraction: float = Field(0.4, gt=0, lt=1)


Schedule = Annotated[
    ConstantSchedule | MultiStepSchedule | CosineSchedule | OneCycleSchedule,
    Field(discriminator="name"),
]


class Augmentation(_Strict):
    """Per-minibatch augmentation (written in torch, without torchvision)."""

    crop_padding: int = Field(0, ge=0, le=64)
    horizontal_flip: bool = False
    rotation_degrees: float = Field(0.0, ge=0, le=45)


class Validation(_Strict):
    """The held-out validation split every epoch is measured on."""

    fraction: float = Field(0.1, gt=0, lt=1, description="Of the training data, held out.")
    limit: int = Field(1000, ge=1, le=100_000, description="At most this many of them.")
    pgd_steps: int = Field(10, ge=1, le=200)


class TrainSpec(_Strict):
    """Train (or fine-tune) a model, register it, and optionally audit it."""

    kind: Literal["train"]
    name: str = Field("trained model", min_length=1, max_length=200)
    dataset_id: str = Field(
        "builtin:digits",
        min_length=1,
        max_length=80,
        description="The training data: a built-in's train split, or an uploaded dataset "
        "(all of it; audit on another upload).",
    )
    architecture: ArchitectureChoice | None = None
    fine_tune: FineTune | None = None
    method: TrainMethod = Field(default_factory=lambda: NaturalMethod(name="natural"))
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=16_384)
    optimizer: Optimizer | None = Field(
        None, description="Default: Adam, lr 3e-3 (5e-3 for fast), tuned on the digits."
    )
    schedule: Schedule | None = Field(
        None, description="Default: one_cycle for fast (as Wong et al.), cosine otherwise."
    )
    augmentation: Augmentation | None = None
    validation: Validation = Field(default_factory=Validation)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    audit: dict[str, Any] | None = Field(
        None,
        description="An audit spec without kind and model_id: audits the trained model when "
        "training ends (linked from the result's audit_job_id).",
    )

    def resolved_schedule(
        self,
    ) -> ConstantSchedule | MultiStepSchedule | CosineSchedule | OneCycleSchedule:
        """The schedule, or the method's default."""
        if self.schedule is not None:
            return self.schedule
        if self.method.name == "fast":
            return OneCycleSchedule(name="one_cycle")
        return CosineSchedule(name="cosine")

    def resolved_optimizer(self) -> SgdOptimizer | AdamOptimizer:
        """The optimizer, or the method's default."""
        if self.optimizer is not None:
            return self.optimizer
        return AdamOptimizer(name="adam", lr=5e-3 if self.method.name == "fast" else 3e-3)

    def audit_spec(self, model_id: str) -> AuditSpec | None:
        """The follow-up audit of the trained model ``model_id``."""
        if self.audit is None:
            return None
        return AuditSpec.model_validate({**self.audit, "kind": "audit", "model_id": model_id})

    def gradient_evaluations(self, num_examples: int) -> int:
        """Planned forward-backward passes over examples (the admission budget)."""
        method = self.method
        per_example = {
            "natural": 1,
            "fgsm": 2,
            "free": 1,
            "fast": 2,
            "vat": 1 + getattr(method, "power_iterations", 1) + 1,
        }.get(method.name)
        if per_example is None:
            per_example = 1 + int(getattr(method, "steps", 1))
        validation = min(self.validation.limit, num_examples) * (1 + self.validation.pgd_steps)
        return self.epochs * (num_examples * per_example + validation)

    @model_validator(mode="after")
    def _one_start(self) -> TrainSpec:
        if (self.architecture is None) == (self.fine_tune is None):
            raise ValueError("give either 'architecture' (train from scratch) or 'fine_tune'")
        if self.audit is not None:
            if {"kind", "model_id"} & set(self.audit):
                raise ValueError("audit: leave out 'kind' and 'model_id' (the trained model)")
            self.audit_spec("m_placeholder")
        return self
