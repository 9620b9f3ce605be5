"""Fine-tuning a subset: "last" and explicit parameter lists leave the rest bit-identical."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adversarial.errors import TrainingError
from adversarial.training import FGSMConfig, NaturalConfig, last_layer
from tests.adversarial.training.common import EPS, run, tiny_model, weights


def test_last_trains_only_the_last_linear_layer() -> None:
    model = tiny_model()
    before = weights(model)
    _, result = run(FGSMConfig(eps=EPS), model=model, trainable="last", epochs=1)
    after = model.state_dict()
    assert result.trainable_parameters == ["classifier.2.weight", "classifier.2.bias"]
    for key, value in before.items():
        if key.startswith("classifier.2."):
            assert not torch.equal(value, after[key])
        else:
            assert torch.equal(value, after[key]), key
    # requires_grad is restored afterwards.
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_an_explicit_parameter_list() -> None:
    model = tiny_model()
    first_conv = model.features[0].weight  # type: ignore[index]
    before = weights(model)
    _, result = run(NaturalConfig(), model=model, trainable=[first_conv], epochs=1)
    assert result.trainable_parameters == ["features.0.weight"]
    after = model.state_dict()
    assert not torch.equal(before["features.0.weight"], after["features.0.weight"])
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k != "features.0.weight")


class _NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_frozen_batch_norm_keeps_its_running_statistics() -> None:
    torch.manual_seed(0)
    model = _NormNet()
    before = weights(model)
    run(FGSMConfig(eps=EPS), model=model, trainable="last", epochs=1)
    after = model.state_dict()
    for key in ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.weight"], after["head.weight"])
    # With everything trainable the statistics do move (the check above can fail).
    torch.manual_seed(0)
    free_model = _NormNet()
    run(NaturalConfig(), model=free_model, epochs=1, validation=None)
    assert not torch.equal(
        before["norm.running_mean"], free_model.state_dict()["norm.running_mean"]
    )


def test_last_layer_without_a_linear_is_the_last_module_with_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 10, 6), nn.Flatten())
    assert last_layer(model) is model[2]


def test_bad_trainable_values_are_refused() -> None:
    outsider = nn.Parameter(torch.zeros(3))
    for trainable in ("some", [outsider], []):
        with pytest.raises(TrainingError) as error:
            run(NaturalConfig(), trainable=trainable, epochs=1, validation=None)
        assert error.value.code in {"bad_training_config", "no_trainable_parameters"}
