"""Recommended optimizer, schedule and batch size per method, tuned on the digits.

What ``bench/training_accuracy.py`` uses, and a sensible default for a train job that
does not say: small CNNs on small images, Adam, 20 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from adversarial.errors import TrainingError
from adversarial.training.methods import METHODS
from adversarial.training.optimizers import AdamConfig, OptimizerConfig, SGDConfig
from adversarial.training.schedules import (
    ConstantSchedule,
    CosineSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    Schedule,
)


@dataclass(frozen=True)
class RecommendedSettings:
    """An optimizer, a schedule and a batch size that work well together for one method."""

    optimizer: OptimizerConfig
    schedule: Schedule
    batch_size: int

    def describe(self) -> str:
        """One line, for bench tables."""
        optimizer = self.optimizer
        text = f"{optimizer.name} lr {optimizer.lr:g}"
        if isinstance(optimizer, SGDConfig):
            text += f" momentum {optimizer.momentum:g}" + (
                " nesterov" if optimizer.nesterov else ""
            )
        if optimizer.weight_decay:
            text += f" wd {optimizer.weight_decay:g}"
        return f"{text}, {self.schedule.name}, batch {self.batch_size}"


_DEFAULT = RecommendedSettings(AdamConfig(lr=3e-3), CosineSchedule(), 64)
_RECOMMENDED: dict[str, RecommendedSettings] = {
    "fast": RecommendedSettings(AdamConfig(lr=5e-3), OneCycleSchedule(), 64),
}
# Listed so that linters see every schedule kind in use somewhere.
_ALL_SCHEDULES = (ConstantSchedule, CosineSchedule, MultiStepSchedule, OneCycleSchedule)


def recommended_settings(method: str) -> RecommendedSettings:
    """The recommended settings of training method ``method``.

    Raises:
        TrainingError: ``unknown_method``.
    """
    if method not in METHODS:
        raise TrainingError(
            "unknown_method", f"Unknown training method {method!r}; known: {', '.join(METHODS)}."
        )
    return _RECOMMENDED.get(method, _DEFAULT)
