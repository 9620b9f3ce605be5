"""Validity checks fire on purpose-built broken models and stay silent on a normal one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adversarial.checks import large_eps_check, model_checks, result_checks
from adversarial.evaluation import AttackConfig, evaluate
from tests.trained import digits_arrays, trained_digits_cnn

# CPU-sized budgets for the ensemble (AutoAttack's standard is 100 steps, 5000 queries).
AUTOATTACK = {"steps": 25, "queries": 400, "target_classes": 3}


class Rounding(nn.Module):
    """Quantizes its input before the network: gradients are exactly zero."""

    def __init__(self, network: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.network = network
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(torch.round(x * self.levels) / self.levels)


class Softmaxed(nn.Module):
    """Ends in a softmax: outputs probabilities instead of logits."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x).softmax(dim=1)


class DropoutAlwaysOn(nn.Module):
    """Applies dropout even in eval mode: a randomized model."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(nn.functional.dropout(x, p=0.3, training=True))


@pytest.fixture(scope="module")
def network() -> nn.Module:
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_arrays()
    return x[:200], y[:200]


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float]):
    configs = [AttackConfig("fgsm", "linf", e) for e in eps]
    configs += [AttackConfig("pgd", "linf", e, {"steps": 10}) for e in eps]
    configs += [AttackConfig("autoattack", "linf", e, AUTOATTACK) for e in eps]
    result = evaluate(model, x, y, configs, num_classes=10)
    findings = model_checks(model, x, y) + result_checks(result)
    correct = result.clean_correct
    findings += large_eps_check(model, x[correct], y[correct], input_range=(0.0, 1.0))[1]
    return result, {f.code for f in findings}


def test_silent_on_a_normally_trained_model(network, data) -> None:
    result, codes = audit(network, *data, [0.05, 0.1, 0.2])
    assert codes == set(), codes
    assert result.clean_accuracy > 0.95


def test_rounding_input_layer_is_caught(network, data) -> None:
    model = Rounding(network).eval()
    result, codes = audit(model, *data, [0.2])
    assert "zero_gradients" in codes
    assert "black_box_beats_white_box" in codes
    fgsm, pgd, autoattack = result.outcomes
    # The gradient attacks see nothing; the ensemble's Square breaks the model anyway.
    assert fgsm.robust_accuracy > 0.8
    assert pgd.robust_accuracy > 0.5
    assert autoattack.robust_accuracy < min(fgsm.robust_accuracy, pgd.robust_accuracy) - 0.3


def test_softmax_output_is_caught(network, data) -> None:
    codes = {f.code for f in model_checks(Softmaxed(network).eval(), *data)}
    assert "probability_outputs" in codes


def test_dropout_left_on_is_caught(network, data) -> None:
    codes = {f.code for f in model_checks(DropoutAlwaysOn(network).eval(), *data)}
    assert "randomized_model" in codes


def test_nan_gradients_are_caught(network, data) -> None:
    class NanGradient(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # sqrt of negatives: NaN in the gradient, finite outputs.
            return network(x) + 0 * torch.sqrt(x - 2).nan_to_num().sum(dim=(1, 2, 3))[:, None]

    codes = {f.code for f in model_checks(NanGradient().eval(), *data)}
    assert "nan_gradients" in codes


def test_result_checks_on_crafted_numbers(network, data) -> None:
    x, y = data
    # A step size of 0 makes PGD do nothing: weaker than FGSM, no better than noise.
    configs = [
        AttackConfig("fgsm", "linf", 0.15),
        AttackConfig("pgd", "linf", 0.15, {"steps": 3, "step_size": 1e-9, "random_start": False}),
        AttackConfig("pgd", "linf", 0.05, {"steps": 10}),
        AttackConfig("pgd", "linf", 0.1, {"steps": 10}),
    ]
    result = evaluate(network, x, y, configs, num_classes=10)
    codes = {f.code for f in result_checks(result)}
    assert "iterative_weaker_than_fgsm" in codes
    assert "attack_no_better_than_noise" in codes
    # Hand the rising-curve check an attack that got worse with eps.
    result.outcomes[3].robust_accuracy = result.outcomes[2].robust_accuracy + 0.2
    result.outcomes[3].config = AttackConfig("pgd", "linf", 0.1, {"steps": 10})
    codes = {f.code for f in result_checks(result)}
    assert "accuracy_rises_with_eps" in codes


def test_large_eps_check(network, data) -> None:
    accuracy, findings = large_eps_check(network, *data, input_range=(0.0, 1.0))
    assert accuracy <= 0.1
    assert findings == []
    # Binarizing the input: zero gradients, and PGD's random start (+-eps around a 0 or 1
    # pixel, clipped to the range) rounds back to the same image, so PGD never moves.
    binarized = Rounding(network, levels=1).eval()
    x, y = data
    correct = binarized(x).argmax(dim=1) == y
    accuracy, findings = large_eps_check(binarized, x[correct], y[correct], input_range=(0.0, 1.0))
    assert accuracy > 0.5
    assert [f.code for f in findings] == ["not_broken_at_large_eps"]
