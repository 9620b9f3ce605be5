"""Fast adversarial training (Wong, Rice, Kolter 2020): FGSM from a random start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from adversarial.randomness import GeneratorSource
from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    bad_config,
    cross_entropy,
    summed_cross_entropy,
)
from adversarial.training.overfitting import OverfittingRule


@dataclass(frozen=True, kw_only=True)
class FastConfig(AdversarialConfig):
    """Fast adversarial training (Wong, Rice, Kolter, "Fast is better than free: Revisiting
    adversarial training", ICLR 2020).

    Per minibatch: a uniformly random start in the ball, one FGSM step of ``step_size``
    (``1.25 * eps`` by default) projected back, and one update on the result. Two gradient
    computations per example; the attack's backward pass computes the input gradient only.
    Use it with the one-cycle schedule (:class:`~adversarial.training.OneCycleSchedule`).
    The method can collapse ("catastrophic overfitting"); with ``stop_on_overfitting`` the
    run checks after every epoch, stops with a warning and keeps the best epoch's weights.

    Attributes:
        eps, norm: the threat model.
        step_size: None means ``1.25 * eps``.
        stop_on_overfitting: see above. Default True.
        overfitting: the rule of that check.
    """

    name: ClassVar[str] = "fast"
    step_size: float | None = None
    stop_on_overfitting: bool = True
    overfitting: OverfittingRule = field(default_factory=OverfittingRule)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None and not self.step_size > 0:
            raise bad_config("fast step_size must be > 0.")


class FastTraining(Method[FastConfig]):
    """Random start, one FGSM step, one update; train mode throughout (as Wong et al.)."""

    name = "fast"

    @property
    def overfitting_rule(self) -> OverfittingRule | None:
        return self.config.overfitting if self.config.stop_on_overfitting else None

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, updater = self.context.model, self.context.updater
        threat = self.context.require_threat()
        step_size = (
            1.25 * self.config.eps if self.config.step_size is None else self.config.step_size
        )
        start = threat.random_init(
            x, GeneratorSource(x.shape[0], self.context.generator)
        ).requires_grad_(True)
        # Input gradient only: the weights' gradient at the start point is never used.
        (grad,) = torch.autograd.grad(summed_cross_entropy(model(start), y), start)
        x_adv = threat.project(threat.step(start.detach(), grad, step_size), x)
        loss = cross_entropy(model(x_adv), y)
        updater.update(loss)
        return loss.detach()
