"""TRADES (Zhang et al. 2019): clean cross-entropy plus a KL term at an adversarial point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn import functional

from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    bad_config,
    cross_entropy,
    evaluation_mode,
)

# TRADES starts its inner maximization this close to x: at x itself the KL term is at its
# minimum and has a zero gradient.
_START_SCALE = 0.001


@dataclass(frozen=True, kw_only=True)
class TradesConfig(AdversarialConfig):
    """TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and
    Accuracy", ICML 2019).

    Minimizes ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` (softmax outputs; KL averaged over
    the minibatch), with ``x'`` maximizing the KL term over the ball: ``steps`` ascent steps
    from ``x + 0.001 * N(0, I)``, the model in eval mode as in the reference code. ``steps
    + 2`` gradient computations per example (the training pass goes back through the clean
    and the adversarial forward pass).

    Attributes:
        eps, norm: the threat model.
        beta: the trade-off (1 / lambda in the paper). Default 6.0 (the paper's CIFAR-10
            setting).
        steps: ascent steps of the inner maximization. Default 10.
        step_size: None means ``2.5 * eps / steps``.
    """

    name: ClassVar[str] = "trades"
    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise bad_config("trades beta must be >= 0.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad_config("trades steps must be an integer >= 1.")
        if self.step_size is not None and not self.step_size > 0:
            raise bad_config("trades step_size must be > 0.")


def kl_from_logits(
    target_logits: torch.Tensor, logits: torch.Tensor, reduction: str
) -> torch.Tensor:
    """``KL(softmax(target_logits) || softmax(logits))``, per ``reduction``."""
    return functional.kl_div(
        functional.log_softmax(logits, dim=1),
        functional.log_softmax(target_logits, dim=1),
        reduction=reduction,
        log_target=True,
    )


class TradesTraining(Method[TradesConfig]):
    """Inner KL maximization in eval mode, then one update on the TRADES objective."""

    name = "trades"

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, updater = self.context.model, self.context.updater
        threat = self.context.require_threat()
        config = self.config
        step_size = (
            2.5 * config.eps / config.steps if config.step_size is None else config.step_size
        )
        with evaluation_mode(model):
            with torch.no_grad():
                clean_logits = model(x)
            noise = torch.randn(
                x.shape, generator=self.context.generator, device=x.device, dtype=x.dtype
            )
            x_adv = threat.project(x + _START_SCALE * noise, x)
            for _ in range(config.steps):
                x_adv.requires_grad_(True)
                divergence = kl_from_logits(clean_logits, model(x_adv), "sum")
                (grad,) = torch.autograd.grad(divergence, x_adv)
                x_adv = threat.project(threat.step(x_adv.detach(), grad, step_size), x)
        logits = model(x)
        natural_loss = cross_entropy(logits, y)
        robust_loss = kl_from_logits(logits, model(x_adv), "batchmean")
        loss = natural_loss + config.beta * robust_loss
        updater.update(loss)
        return loss.detach()
