"""Virtual adversarial training (Miyato et al. 2018): label-free adversarial smoothness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    bad_config,
    cross_entropy,
)
from adversarial.training.methods.trades import kl_from_logits

# Guards the normalization of an all-zero direction.
_TINY = 1e-12


@dataclass(frozen=True, kw_only=True)
class VATConfig(AdversarialConfig):
    """Virtual adversarial training (Miyato, Maeda, Koyama, Ishii, "Virtual Adversarial
    Training: A Regularization Method for Supervised and Semi-Supervised Learning", TPAMI
    2018).

    Loss: the cross-entropy of the *labeled* examples of the minibatch (label >= 0; label
    -1 marks an unlabeled example) plus ``weight`` times the local distributional smoothness
    of *all* of them, ``KL(p(x) || p(x + r_adv))`` with ``p(x)`` held constant. ``r_adv``
    comes from ``power_iterations`` steps of the power method: from a random unit
    direction ``d``, ``d <- normalize(grad_r KL(p(x) || p(x + xi * d)))``; the last
    gradient then takes a steepest step of length ``eps`` in the threat model's norm (for
    ``"l2"``, the paper's ``eps * d``). ``power_iterations + 2`` gradient computations per
    example.

    Attributes:
        eps, norm: the threat model (the paper's is L2).
        xi: the finite-difference radius of the power method. Default 1e-2 (the paper's
            1e-6 is below what float32 logits resolve on inputs in [0, 1]).
        power_iterations: default 1 (the paper's).
        weight: the smoothness term's weight (alpha in the paper). Default 1.0.
    """

    name: ClassVar[str] = "vat"
    xi: float = 1e-2
    power_iterations: int = 1
    weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.xi > 0:
            raise bad_config("vat xi must be > 0.")
        if (
            isinstance(self.power_iterations, bool)
            or not isinstance(self.power_iterations, int)
            or self.power_iterations < 1
        ):
            raise bad_config("vat power_iterations must be an integer >= 1.")
        if not self.weight >= 0:
            raise bad_config("vat weight must be >= 0.")


def _unit_directions(values: torch.Tensor) -> torch.Tensor:
    norms = values.flatten(1).norm(dim=1).view(-1, *([1] * (values.dim() - 1)))
    directions: torch.Tensor = values / (norms + _TINY)
    return directions


class VATTraining(Method[VATConfig]):
    """Cross-entropy on labeled examples plus the VAT smoothness term on every example."""

    name = "vat"
    needs_labels = False

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, updater = self.context.model, self.context.updater
        threat = self.context.require_threat()
        config = self.config
        logits = model(x)
        clean_logits = logits.detach()
        labeled = y >= 0
        if bool(labeled.all()):
            natural_loss = cross_entropy(logits, y)
        elif bool(labeled.any()):
            natural_loss = cross_entropy(logits[labeled], y[labeled])
        else:
            natural_loss = torch.zeros((), dtype=logits.dtype, device=logits.device)
        direction = _unit_directions(
            torch.randn(x.shape, generator=self.context.generator, device=x.device, dtype=x.dtype)
        )
        for _ in range(config.power_iterations):
            # The probe stays in the input range; its gradient is taken at the probe itself.
            probe = threat.clip_range(x + config.xi * direction).requires_grad_(True)
            divergence = kl_from_logits(clean_logits, model(probe), "sum")
            (grad,) = torch.autograd.grad(divergence, probe)
            direction = _unit_directions(grad)
        x_adv = threat.project(threat.step(x, direction, config.eps), x)
        smoothness = kl_from_logits(clean_logits, model(x_adv), "batchmean")
        loss = natural_loss + config.weight * smoothness
        updater.update(loss)
        return loss.detach()
