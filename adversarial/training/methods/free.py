"""Free adversarial training (Shafahi et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from adversarial.errors import TrainingError
from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    MethodContext,
    accumulated_input_gradient,
    bad_config,
    cross_entropy,
)


@dataclass(frozen=True, kw_only=True)
class FreeConfig(AdversarialConfig):
    """Free adversarial training (Shafahi et al., "Adversarial Training for Free!",
    NeurIPS 2019).

    Each minibatch is replayed ``replays`` (m) times. Every replay is one forward and one
    backward pass at ``x + delta``; that single backward pass gives the weight gradient
    (one optimizer update) and the input gradient, with which ``delta`` takes an ascent
    step of ``step_size`` and is projected back into the ball. ``delta`` carries over to
    the next minibatch (its first ``n`` rows, for a smaller last minibatch). A run with a
    budget of E epochs makes ``ceil(E / m)`` loop epochs, so it does as many gradient
    computations and updates as E epochs of natural training (exactly as many when m
    divides E).

    Attributes:
        eps, norm: the threat model.
        replays: m. Default 4.
        step_size: the ascent step; None means ``eps`` (the paper's).
    """

    name: ClassVar[str] = "free"
    replays: int = 4
    step_size: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.replays, bool) or not isinstance(self.replays, int):
            raise bad_config("free replays must be an integer.")
        if self.replays < 1:
            raise bad_config("free replays must be >= 1.")
        if self.step_size is not None and not self.step_size > 0:
            raise bad_config("free step_size must be > 0.")


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    # Channels-last strides have the channel dimension innermost (stride 1).
    channels_last = x.dim() == 4 and x.stride(1) == 1
    return torch.channels_last if channels_last else torch.contiguous_format


class FreeTraining(Method[FreeConfig]):
    """Free-AT: m replays per minibatch, one backward pass each, a carried perturbation."""

    name = "free"

    def __init__(self, config: FreeConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        self.step_size = config.eps if config.step_size is None else config.step_size
        # [batch_size, ...]: allocated at the first minibatch, which tells the example shape.
        self.perturbation: torch.Tensor | None = None

    @property
    def updates_per_batch(self) -> int:
        return self.config.replays

    def loop_epochs(self, epochs: int) -> int:
        return math.ceil(epochs / self.config.replays)

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, updater = self.context.model, self.context.updater
        threat = self.context.require_threat()
        count = x.shape[0]
        if self.perturbation is None:
            self.perturbation = torch.zeros(
                (self.context.batch_size, *x.shape[1:]), dtype=x.dtype, device=x.device
            ).to(memory_format=_memory_format(x))
        delta = self.perturbation[:count]
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for _ in range(self.config.replays):
            # As in Shafahi et al.'s code, delta stays in the ball and x + delta is clipped
            # to the input range where it is used (delta goes on to other images).
            x_adv = threat.clip_range(x + delta).requires_grad_(True)
            loss = cross_entropy(model(x_adv), y)
            # The one backward pass: the weight gradient for this update, and on x_adv the
            # input gradient for the perturbation's ascent step.
            updater.update(loss)
            grad = accumulated_input_gradient(x_adv)
            delta.copy_(threat.project_perturbation_(threat.step(delta, grad, self.step_size)))
            total += loss.detach()
        return total / self.config.replays

    def state(self) -> dict[str, torch.Tensor]:
        if self.perturbation is None:
            return {}
        return {"perturbation": self.perturbation.detach().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) - {"perturbation"}:
            raise TrainingError("bad_checkpoint", "Unexpected Free-AT state in the checkpoint.")
        saved = state.get("perturbation")
        if saved is not None and (saved.dim() < 2 or saved.shape[0] != self.context.batch_size):
            raise TrainingError(
                "bad_checkpoint",
                "The checkpoint's Free-AT perturbation does not fit the batch size.",
            )
        device = self.context.generator.device
        self.perturbation = None if saved is None else saved.to(device).clone()
