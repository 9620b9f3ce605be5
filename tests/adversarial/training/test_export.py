"""ONNX export of a trained model: the engine's own ONNX loader gives the same logits."""

from __future__ import annotations

import pytest
import torch

from adversarial.errors import ModelFormatError
from adversarial.models.onnx import load_onnx
from adversarial.models.wrapper import InputSpaceModel
from adversarial.models.zoo import build_architecture
from adversarial.training import NaturalConfig, export_onnx
from tests.adversarial.training.common import run, tiny_model


def test_exported_model_matches_the_trained_one() -> None:
    model, _ = run(NaturalConfig(), epochs=1, validation=None)
    model.train()
    data = export_onnx(model, (1, 8, 8))
    assert model.training  # the mode is restored
    loaded = load_onnx(data)
    x = torch.rand(5, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_export_with_normalization_inside_the_wrapper() -> None:
    torch.manual_seed(0)
    network = build_architecture("lenet5", {}, (3, 32, 32), 10)
    model = InputSpaceModel(
        network, input_shape=(3, 32, 32), num_classes=10, normalization=([0.5] * 3, [0.25] * 3)
    ).eval()
    loaded = load_onnx(export_onnx(model, (3, 32, 32)))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ModelFormatError) as error:
        export_onnx(tiny_model(), (0, 8, 8))
    assert error.value.code == "export_failed"
