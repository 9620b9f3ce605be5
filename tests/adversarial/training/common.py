"""Tiny seeded models and data for the training tests: a few hundred digits, 1-2 epochs."""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import torch
from torch import nn

from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture
from adversarial.training import (
    AdamConfig,
    ConstantSchedule,
    MethodConfig,
    TrainingData,
    TrainingResult,
    ValidationConfig,
    seeded_initialization,
    train,
)

# 500 = 15 minibatches of 32 and a smaller last one of 20 (Free-AT's carried perturbation
# must handle it).
TRAIN_EXAMPLES = 500
VALIDATION_EXAMPLES = 64
BATCH_SIZE = 32
EPS = 0.1


@cache
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_train, y_train = load_builtin("digits", "train")
    x_test, y_test = load_builtin("digits", "test")
    return x_train, y_train, x_test, y_test


def tiny_data(*, validation: bool = True, examples: int = TRAIN_EXAMPLES) -> TrainingData:
    """The first ``examples`` digits of the train split, and 64 test digits to validate."""
    x_train, y_train, x_test, y_test = _digits()
    if not validation:
        return TrainingData(x_train[:examples].clone(), y_train[:examples].clone())
    return TrainingData(
        x_train[:examples].clone(),
        y_train[:examples].clone(),
        x_test[:VALIDATION_EXAMPLES].clone(),
        y_test[:VALIDATION_EXAMPLES].clone(),
    )


def tiny_model(seed: int = 0) -> nn.Module:
    """A seeded small CNN with few channels (trains in a fraction of a second)."""
    with seeded_initialization(seed):
        return build_architecture("small_cnn", {"channels": [16, 32]}, (1, 8, 8), 10)


def run(
    method: MethodConfig,
    *,
    model: nn.Module | None = None,
    data: TrainingData | None = None,
    **overrides: Any,
) -> tuple[nn.Module, TrainingResult]:
    """Train ``method`` on the tiny data with small defaults; ``overrides`` replace them."""
    model = tiny_model() if model is None else model
    arguments: dict[str, Any] = {
        "schedule": ConstantSchedule(),
        "optimizer": AdamConfig(lr=1e-2),
        "epochs": 2,
        "batch_size": BATCH_SIZE,
        "seed": 0,
        "validation": ValidationConfig(eps=EPS, pgd_steps=3),
    }
    arguments.update(overrides)
    result = train(model, tiny_data() if data is None else data, method, **arguments)
    return model, result


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's state."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def without_times(records: list[Any]) -> list[dict[str, Any]]:
    """Epoch records as dicts without their timing fields (which differ run to run)."""
    timed = ("seconds", "cpu_seconds", "validation_seconds")
    return [{k: v for k, v in replace(r).to_dict().items() if k not in timed} for r in records]


def same_weights(first: nn.Module, second: nn.Module) -> bool:
    """Bit-identical state dicts."""
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
