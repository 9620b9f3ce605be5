"""Optimizer configurations and the torch optimizers they build."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from adversarial.errors import TrainingError


def _check_rate(name: str, value: float, *, allow_zero: bool) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise TrainingError("bad_training_config", f"{name} must be finite and {bound}.")


@dataclass(frozen=True, kw_only=True)
class SGDConfig:
    """Stochastic gradient descent with (optionally Nesterov) momentum.

    Attributes:
        lr: the base learning rate (the schedule multiplies it).
        momentum: heavy-ball momentum. Default 0.9.
        nesterov: Nesterov momentum (needs ``momentum > 0``). Default False.
        weight_decay: L2 penalty added to the gradient. Default 0.
    """

    name: ClassVar[str] = "sgd"
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_rate("lr", self.lr, allow_zero=False)
        _check_rate("weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            raise TrainingError("bad_training_config", "momentum must be in [0, 1).")
        if self.nesterov and self.momentum == 0:
            raise TrainingError("bad_training_config", "nesterov needs momentum > 0.")


@dataclass(frozen=True, kw_only=True)
class AdamConfig:
    """Adam (Kingma & Ba 2015).

    Attributes:
        lr: the base learning rate (the schedule multiplies it). Default 0.001.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient (``torch.optim.Adam``'s, coupled,
            not AdamW's decoupled decay). Default 0.
    """

    name: ClassVar[str] = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_rate("lr", self.lr, allow_zero=False)
        _check_rate("weight_decay", self.weight_decay, allow_zero=True)
        _check_rate("eps", self.eps, allow_zero=False)
        betas = tuple(float(beta) for beta in self.betas)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise TrainingError("bad_training_config", "betas must be two values in [0, 1).")
        object.__setattr__(self, "betas", betas)


OptimizerConfig = SGDConfig | AdamConfig


def build_optimizer(
    config: OptimizerConfig, parameters: Sequence[nn.Parameter]
) -> torch.optim.Optimizer:
    """The torch optimizer ``config`` describes, over ``parameters`` (one parameter group)."""
    if isinstance(config, SGDConfig):
        return torch.optim.SGD(
            list(parameters),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(
        list(parameters),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
