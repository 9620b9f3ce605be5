"""The autoattack ensemble, the per-sample summary and out-of-memory backoff."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adversarial.evaluation import AttackConfig, ensemble_components, evaluate
from tests.trained import digits_arrays, trained_digits_cnn

BUDGET = {"steps": 20, "queries": 300, "target_classes": 3}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_arrays()
    return x[:150], y[:150]


def test_autoattack_is_never_above_any_of_its_parts(model, data) -> None:
    parts = [
        AttackConfig("apgd-ce", "linf", 0.1, {"steps": 20}),
        AttackConfig("apgd-t", "linf", 0.1, {"steps": 20, "target_classes": 3}),
        AttackConfig("square", "linf", 0.1, {"queries": 300}),
    ]
    ensemble = AttackConfig("autoattack", "linf", 0.1, BUDGET)
    result = evaluate(model, *data, [*parts, ensemble], num_classes=10)
    *separate, combined = result.outcomes
    assert combined.robust_accuracy <= min(o.robust_accuracy for o in separate)
    # Cumulative component numbers only go down, cheapest component first.
    names = [c.name for c in combined.components]
    # Costs in gradient-step equivalents: 20, 20 x 3 targets, 300 queries / 3.
    assert names == ["apgd-ce", "apgd-t", "square"]
    accuracies = [c.robust_accuracy for c in combined.components]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] == combined.robust_accuracy
    # Each example counted robust survived every component.
    assert (combined.robust <= result.clean_correct).all()


def test_components_are_ordered_cheapest_first() -> None:
    standard = ensemble_components(AttackConfig("autoattack", "linf", 0.1), num_classes=10)
    assert [name for name, _ in standard] == ["apgd-ce", "apgd-t", "square"]
    assert dict(standard)["apgd-t"]["target_classes"] == 9
    binary = ensemble_components(AttackConfig("autoattack", "linf", 0.1), num_classes=2)
    assert [name for name, _ in binary] == ["apgd-ce", "square"]


def test_ensemble_carries_fooled_examples_to_larger_eps(model, data) -> None:
    configs = [AttackConfig("autoattack", "linf", eps, BUDGET) for eps in (0.05, 0.1, 0.2)]
    result = evaluate(model, *data, configs, num_classes=10)
    accuracies = [o.robust_accuracy for o in result.outcomes]
    assert accuracies == sorted(accuracies, reverse=True)
    small, middle, _ = result.outcomes
    assert not (middle.robust & ~small.robust).any()  # fooled at 0.05 stays fooled at 0.1


def test_per_sample_records_the_first_fall(model, data) -> None:
    x, y = data
    configs = [AttackConfig("fgsm", "linf", eps) for eps in (0.2, 0.05, 0.1)]
    result = evaluate(model, x, y, configs, num_classes=10)
    (summary,) = result.per_sample
    assert summary.norm == "linf"
    fell = summary.fell_at
    assert (fell[~result.clean_correct] == 0).all()
    for outcome in result.outcomes:
        fooled = outcome.fooled_indices
        assert (fell[fooled] <= outcome.config.eps).all()
    finite = torch.isfinite(fell) & result.clean_correct
    assert (summary.adversarial_predictions[finite] != y[finite]).all()
    distance = (summary.adversarial_inputs - x).flatten(1).abs().amax(dim=1)
    assert (distance[finite] <= fell[finite].float() + 1e-6).all()
    never = ~torch.isfinite(fell)
    assert torch.equal(summary.adversarial_inputs[never], x[never])
    assert math.isinf(float(fell.max())) or fell.max() <= 0.2


class OutOfMemoryAbove(nn.Module):
    """Raises the device's out-of-memory error for batches above ``limit`` examples."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.largest_batch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (batch {x.shape[0]})")
        self.largest_batch = max(self.largest_batch, x.shape[0])
        return self.inner(x)


def test_batches_halve_on_out_of_memory(model, data) -> None:
    limited = OutOfMemoryAbove(model, limit=40).eval()
    configs = [AttackConfig("pgd", "linf", 0.1, {"steps": 5, "random_start": False})]
    result = evaluate(limited, *data, configs, num_classes=10, batch_size=256)
    direct = evaluate(model, *data, configs, num_classes=10, batch_size=256)
    assert limited.largest_batch <= 40
    assert result.outcomes[0].robust_accuracy == direct.outcomes[0].robust_accuracy
