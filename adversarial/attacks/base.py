"""The attack interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from adversarial.threat import ThreatModel

# Called after every gradient step with the number of examples the step covered, so that
# long attacks can report progress (and be cancelled by a callback that raises).
StepCallback = Callable[[int], None]


class Attack(ABC):
    """Base class of every attack.

    ``__call__(x, y)`` puts the model in eval mode, runs :meth:`perturb` and restores the
    model's mode, whatever happens. Attacks never modify ``x`` and return detached tensors
    inside the threat model's ball and input range.
    """

    name: ClassVar[str]
    # Gradient steps per example per restart: used to plan progress reporting.
    gradient_steps: ClassVar[int] = 1

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.model = model
        self.threat = threat
        self.generator = generator
        self.on_step = on_step

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.perturb(x.detach(), y.detach()).detach()
        finally:
            self.model.train(was_training)

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial inputs for clean inputs ``x`` ``[N, ...]`` and labels ``y`` ``[N]``."""

    def planned_steps(self) -> int:
        """Gradient steps this attack plans per example (an upper bound with early stopping)."""
        return self.gradient_steps

    def loss_gradient(
        self, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy input gradient at ``x_adv`` and the logits there.

        The loss is summed, not averaged, so an example's gradient does not depend on which
        other examples share its batch.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            loss = nn.functional.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        if self.on_step is not None:
            self.on_step(x_adv.shape[0])
        return grad.detach(), logits.detach()


AttackT = TypeVar("AttackT", bound=type[Attack])

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: AttackT) -> AttackT:
    """Class decorator: make an attack selectable by its ``name`` in audit specs."""
    ATTACKS[cls.name] = cls
    return cls


def make_attack(
    name: str,
    model: nn.Module,
    threat: ThreatModel,
    params: dict[str, Any] | None = None,
    *,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> Attack:
    """Build the attack registered under ``name`` with keyword ``params``."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        known = ", ".join(sorted(ATTACKS))
        raise ValueError(f"unknown attack {name!r}; known attacks: {known}") from None
    return cls(model, threat, generator=generator, on_step=on_step, **(params or {}))
