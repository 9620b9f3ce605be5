"""Learning-rate schedules, stepped per optimizer update.

A schedule is a pure function of the update's position, so its whole state is the number
of updates done (what checkpoints store). Positions are measured in *epoch equivalents*:
an epoch equivalent is one update per minibatch of the training set, so a Free-AT epoch
with ``m`` replays spans ``m`` epoch equivalents and milestones mean the same point of
training for every method. With ``U`` updates per epoch equivalent, update ``u`` (from 0)
runs at ``t = u / U`` (constant, multistep, cosine) or ``t = (u + 1) / U`` (one-cycle, as
Wong et al.'s code does, so that no update gets a zero learning rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from adversarial.errors import TrainingError


def _bad(message: str) -> TrainingError:
    return TrainingError("bad_training_config", message)


@dataclass(frozen=True, kw_only=True)
class ConstantSchedule:
    """The optimizer's ``lr`` for every update."""

    name: ClassVar[str] = "constant"

    def factor(self, progress: float, total: float) -> float:
        """Multiplier of the base ``lr`` at ``progress`` of ``total`` epoch equivalents."""
        return 1.0


@dataclass(frozen=True, kw_only=True)
class MultiStepSchedule:
    """``lr * gamma ** k`` after the ``k``-th milestone (in epoch equivalents) is passed.

    Attributes:
        milestones: increasing epoch counts; an update at ``t >= milestone`` has passed it
            (the first update of epoch ``m`` runs at the decayed rate, as in
            ``torch.optim.lr_scheduler.MultiStepLR`` stepped per epoch).
        gamma: the decay factor at each milestone. Default 0.1.
    """

    name: ClassVar[str] = "multistep"
    milestones: tuple[float, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        milestones = tuple(float(value) for value in self.milestones)
        if any(value <= 0 for value in milestones) or list(milestones) != sorted(milestones):
            raise _bad("multistep milestones must be positive and increasing.")
        if not 0.0 < self.gamma <= 1.0:
            raise _bad("multistep gamma must be in (0, 1].")
        object.__setattr__(self, "milestones", milestones)

    def factor(self, progress: float, total: float) -> float:
        """Multiplier of the base ``lr`` at ``progress`` of ``total`` epoch equivalents."""
        passed = sum(1 for milestone in self.milestones if progress >= milestone)
        return float(self.gamma**passed)


@dataclass(frozen=True, kw_only=True)
class CosineSchedule:
    """Cosine annealing from ``lr`` down to ``lr * final_fraction`` at the end of training.

    ``factor(t) = f + (1 - f) * (1 + cos(pi * t / T)) / 2`` (Loshchilov & Hutter 2017,
    without restarts), ``T`` the run's epoch equivalents.
    """

    name: ClassVar[str] = "cosine"
    final_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.final_fraction <= 1.0:
            raise _bad("cosine final_fraction must be in [0, 1].")

    def factor(self, progress: float, total: float) -> float:
        """Multiplier of the base ``lr`` at ``progress`` of ``total`` epoch equivalents."""
        cosine = (1.0 + math.cos(math.pi * min(progress / total, 1.0))) / 2.0
        return self.final_fraction + (1.0 - self.final_fraction) * cosine


@dataclass(frozen=True, kw_only=True)
class OneCycleSchedule:
    """Piecewise linear: 0 up to ``lr`` at ``peak_fraction`` of training, back to 0 at the end.

    The "cyclic" schedule of Wong et al. 2020 (locuslab/fast_adversarial): ``np.interp(t,
    [0, peak * T, T], [0, lr, 0])``, evaluated after each update (``t = (u + 1) / U``).
    Their MNIST and ImageNet runs peak at 2/5 of training (the default), their CIFAR-10 runs
    at 1/2.
    """

    name: ClassVar[str] = "one_cycle"
    peak_fraction: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 < self.peak_fraction < 1.0:
            raise _bad("one_cycle peak_fraction must be in (0, 1).")

    def factor(self, progress: float, total: float) -> float:
        """Multiplier of the base ``lr`` at ``progress`` of ``total`` epoch equivalents."""
        peak = self.peak_fraction * total
        if progress <= peak:
            return max(progress / peak, 0.0)
        return max((total - progress) / (total - peak), 0.0)


Schedule = ConstantSchedule | MultiStepSchedule | CosineSchedule | OneCycleSchedule


def learning_rate(
    schedule: Schedule, base_lr: float, update: int, updates_per_epoch: int, total_updates: int
) -> float:
    """The learning rate of update ``update`` (from 0) of ``total_updates``.

    ``updates_per_epoch`` is ``U``, the updates of one epoch equivalent (the number of
    minibatches); see the module docstring for where each update sits.
    """
    offset = 1 if isinstance(schedule, OneCycleSchedule) else 0
    progress = (update + offset) / updates_per_epoch
    total = total_updates / updates_per_epoch
    return base_lr * schedule.factor(progress, total)
