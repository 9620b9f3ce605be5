"""PGD adversarial training (Madry et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from adversarial.attacks import PGD
from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    MethodContext,
    bad_config,
    cross_entropy,
)


@dataclass(frozen=True, kw_only=True)
class PGDConfig(AdversarialConfig):
    """PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018): train on the final iterate of a K-step PGD attack.

    ``K + 1`` gradient computations per example: K input-gradient steps, then the
    training pass on the adversarial inputs. The attack is the engine's
    :class:`~adversarial.attacks.PGD` (every example runs all K steps), which runs the model
    in eval mode, as MadryLab's robustness library does, so batch-norm statistics are only
    updated by the inputs trained on.

    Attributes:
        eps, norm: the threat model.
        steps: K. Default 7 (Madry et al.'s CIFAR-10 setting).
        step_size: None means ``2.5 * eps / steps``.
        random_start: start from a uniform point in the ball. Default True.
    """

    name: ClassVar[str] = "pgd"
    steps: int = 7
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad_config("pgd steps must be an integer >= 1.")
        if self.step_size is not None and not self.step_size > 0:
            raise bad_config("pgd step_size must be > 0.")


class PGDTraining(Method[PGDConfig]):
    """Train on PGD adversarial examples of each minibatch."""

    name = "pgd"

    def __init__(self, config: PGDConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        self.attack = PGD(
            context.model,
            context.require_threat(),
            steps=config.steps,
            step_size=config.step_size,
            random_start=config.random_start,
            early_stop=False,
            generator=context.generator,
        )

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(x, y)
        loss = cross_entropy(self.context.model(x_adv), y)
        self.context.updater.update(loss)
        return loss.detach()
