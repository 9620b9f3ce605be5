"""FGSM adversarial training with Goodfellow et al.'s mixed objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    accumulated_input_gradient,
    bad_config,
    cross_entropy,
)
from adversarial.training.overfitting import OverfittingRule


@dataclass(frozen=True, kw_only=True)
class FGSMConfig(AdversarialConfig):
    """FGSM adversarial training (Goodfellow, Shlens, Szegedy 2015).

    Minimizes ``alpha * J(x) + (1 - alpha) * J(x_fgsm)`` with ``x_fgsm = project(x +
    step_size * sign(grad_x J(x)))``. Two gradient computations per example: the backward
    pass of the clean term gives both its weight gradient and the input gradient the
    attack needs.

    Attributes:
        eps, norm: the threat model.
        alpha: weight of the clean loss, in [0, 1]. Default 0.5 (the paper's).
        step_size: the FGSM step; None means ``eps``.
        stop_on_overfitting: stop on catastrophic overfitting (FGSM training from the
            clean point is prone to it) and keep the best epoch's weights. Default False.
        overfitting: the rule of that check.
    """

    name: ClassVar[str] = "fgsm"
    alpha: float = 0.5
    step_size: float | None = None
    stop_on_overfitting: bool = False
    overfitting: OverfittingRule = field(default_factory=OverfittingRule)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise bad_config(f"fgsm alpha must be in [0, 1], got {self.alpha!r}.")
        if self.step_size is not None and not self.step_size > 0:
            raise bad_config("fgsm step_size must be > 0.")


class FGSMTraining(Method[FGSMConfig]):
    """One FGSM step from the clean input, trained on the mixed objective."""

    name = "fgsm"

    @property
    def overfitting_rule(self) -> OverfittingRule | None:
        return self.config.overfitting if self.config.stop_on_overfitting else None

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, updater = self.context.model, self.context.updater
        threat = self.context.require_threat()
        alpha = self.config.alpha
        step_size = self.config.eps if self.config.step_size is None else self.config.step_size
        x = x.detach().requires_grad_(True)
        updater.zero_grad()
        clean_loss = cross_entropy(model(x), y)
        if alpha > 0:
            # One backward pass: the clean term's weight gradient and, on x, the input
            # gradient (scaled by alpha / n, which neither the sign nor an L2 step sees).
            updater.backward(alpha * clean_loss)
            grad = accumulated_input_gradient(x)
        else:
            (grad,) = torch.autograd.grad(clean_loss, x)
        clean = x.detach()
        x_adv = threat.project(threat.step(clean, grad, step_size), clean)
        if alpha < 1:
            adversarial_loss = cross_entropy(model(x_adv), y)
            updater.backward((1 - alpha) * adversarial_loss)
            loss = alpha * clean_loss.detach() + (1 - alpha) * adversarial_loss.detach()
        else:
            loss = clean_loss.detach()
        updater.step()
        return loss
