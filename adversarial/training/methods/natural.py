"""Natural (standard) training: cross-entropy on the clean minibatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from adversarial.training.methods.base import Method, MethodConfig, cross_entropy


@dataclass(frozen=True, kw_only=True)
class NaturalConfig(MethodConfig):
    """Natural training: no adversary. One gradient computation per example."""

    name: ClassVar[str] = "natural"


class NaturalTraining(Method[NaturalConfig]):
    """Minimize the cross-entropy of the clean inputs: one forward, one backward pass."""

    name = "natural"

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = cross_entropy(self.context.model(x), y)
        self.context.updater.update(loss)
        return loss.detach()
