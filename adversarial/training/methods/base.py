"""The strategy interface every training method implements, and what the loop hands it.

The loop owns the data order, augmentation, validation, checkpoints and the clock; a
method owns what happens to one minibatch: which inputs to attack, which losses to
backpropagate and when to step the optimizer (through :class:`Updater`, so that the
learning-rate schedule and the update count stay the loop's). Methods that carry state
across minibatches (Free-AT's perturbation) expose it through :meth:`Method.state` so that
checkpoints hold it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from adversarial.errors import TrainingError
from adversarial.threat import THREAT_MODELS, ThreatModel
from adversarial.training.overfitting import OverfittingRule
from adversarial.training.schedules import Schedule, learning_rate


def bad_config(message: str) -> TrainingError:
    """The error for a method configuration that cannot run."""
    return TrainingError("bad_training_config", message)


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's configuration; ``name`` is the method's registry key."""

    name: ClassVar[str]


@dataclass(frozen=True, kw_only=True)
class AdversarialConfig(MethodConfig):
    """What every adversarial method shares: the threat model it trains against.

    Attributes:
        eps: the radius of the ball, in input units (inputs live in the input range).
        norm: ``"linf"`` or ``"l2"``. Default ``"linf"``.
    """

    eps: float
    norm: str = "linf"

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise bad_config(f"eps must be a finite number > 0, got {self.eps!r}.")
        if self.norm not in THREAT_MODELS:
            known = ", ".join(sorted(THREAT_MODELS))
            raise bad_config(f"Unknown norm {self.norm!r}; known norms: {known}.")


class Updater:
    """The optimizer side of the loop: gradients, steps, and the schedule's learning rate.

    ``step`` sets the scheduled learning rate of the next update, steps the optimizer and
    counts the update; ``updates`` is the schedule's whole state.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        *,
        base_lr: float,
        updates_per_epoch: int,
        total_updates: int,
        updates: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lr = base_lr
        self.updates_per_epoch = updates_per_epoch
        self.total_updates = total_updates
        self.updates = updates
        self.last_lr = self.next_lr()

    def next_lr(self) -> float:
        """The learning rate the next update will use."""
        return learning_rate(
            self.schedule, self.base_lr, self.updates, self.updates_per_epoch, self.total_updates
        )

    def zero_grad(self) -> None:
        """Forget the accumulated weight gradients."""
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (a scalar) into the trainable weights, and
        into any input that requires a gradient."""
        loss.backward()  # type: ignore[no-untyped-call]

    def step(self) -> None:
        """Apply one update with the scheduled learning rate."""
        lr = self.next_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.updates += 1
        self.last_lr = lr

    def update(self, loss: torch.Tensor) -> None:
        """``zero_grad``, ``backward(loss)``, ``step``: one plain update."""
        self.zero_grad()
        self.backward(loss)
        self.step()


@dataclass
class MethodContext:
    """What a method works with, fixed for the run.

    Attributes:
        model: the classifier, in train mode during ``train_batch``.
        threat: the threat model (None for natural training), in the data's input range.
        generator: the method's random stream, on the training device.
        updater: the optimizer side (see :class:`Updater`).
        batch_size: the run's minibatch size (the last minibatch may be smaller).
    """

    model: nn.Module
    threat: ThreatModel | None
    generator: torch.Generator
    updater: Updater
    batch_size: int

    def require_threat(self) -> ThreatModel:
        """The threat model, which adversarial methods always have."""
        if self.threat is None:
            raise TrainingError("bad_training_config", "This method needs a threat model.")
        return self.threat


ConfigT = TypeVar("ConfigT", bound=MethodConfig)


class Method(ABC, Generic[ConfigT]):
    """A training method: a strategy for one minibatch of the shared loop.

    Subclasses set ``name`` and implement :meth:`train_batch`; those that replay or
    carry state override the other hooks.
    """

    name: ClassVar[str]
    # Whether examples must be labeled (VAT trains on unlabeled ones, label -1, too).
    needs_labels: ClassVar[bool] = True

    def __init__(self, config: ConfigT, context: MethodContext) -> None:
        self.config = config
        self.context = context

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates per minibatch (Free-AT: its replays)."""
        return 1

    def loop_epochs(self, epochs: int) -> int:
        """Loop epochs to run for a budget of ``epochs`` epochs of natural training."""
        return epochs

    @property
    def overfitting_rule(self) -> OverfittingRule | None:
        """The catastrophic-overfitting rule to stop on, or None for no check."""
        return None

    @abstractmethod
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one minibatch ``x`` ``[n, ...]`` (in the input range), ``y`` ``[n]``.

        Returns the minibatch's training objective (a detached scalar tensor, averaged over
        its examples): the loop sums it over the epoch without synchronizing per batch.
        """

    def state(self) -> dict[str, torch.Tensor]:
        """State carried from one minibatch to the next, for checkpoints."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""
        if state:
            raise TrainingError(
                "bad_checkpoint", f"The {self.name} method carries no state, but got some."
            )

    def describe(self) -> dict[str, Any]:
        """The method's name and settings, JSON-ready (checkpoints compare them)."""
        return {"name": self.name, **asdict(self.config)}


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with ``model`` in eval mode, restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a minibatch."""
    return nn.functional.cross_entropy(logits, labels)


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy: its input gradient is each example's own (for attack steps)."""
    return nn.functional.cross_entropy(logits, labels, reduction="sum")


def accumulated_input_gradient(inputs: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left on ``inputs`` (a leaf that requires a gradient)."""
    grad = inputs.grad
    if grad is None:
        raise RuntimeError("the backward pass did not reach the inputs")
    return grad
