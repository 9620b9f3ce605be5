"""TorchScript and torch.export models: loaded only with allow_code (the jail), exact there.

These tests load our own, benign programs in the test process; uploads only ever load in
the jail (tests/worker/test_jail.py).
"""

from __future__ import annotations

import pytest
import torch

from adversarial.errors import ModelFormatError
from adversarial.models import loading
from adversarial.models.loading import ModelSpec, check_model, load_model
from tests.model_files import digits_pt2, digits_small_cnn_safetensors, digits_torchscript
from tests.trained import digits_arrays, trained_digits_cnn

FILES = {"torchscript": digits_torchscript, "pt2": digits_pt2}


def spec(model_format: str, **overrides: object) -> ModelSpec:
    return ModelSpec(format=model_format, input_shape=(1, 8, 8), num_classes=10, **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_format", ["torchscript", "pt2"])
def test_code_format_matches_the_plain_model_and_its_gradients(model_format: str) -> None:
    model = load_model(FILES[model_format](), spec(model_format), allow_code=True)
    check_model(model, spec(model_format))
    _, _, x_test, y_test = digits_arrays()
    inputs = x_test[:32].clone().requires_grad_(True)
    reference_inputs = x_test[:32].clone().requires_grad_(True)
    reference = trained_digits_cnn()

    loss = torch.nn.functional.cross_entropy(model(inputs), y_test[:32])
    (gradients,) = torch.autograd.grad(loss, inputs)
    reference_loss = torch.nn.functional.cross_entropy(reference(reference_inputs), y_test[:32])
    (reference_gradients,) = torch.autograd.grad(reference_loss, reference_inputs)

    torch.testing.assert_close(model(x_test).detach(), reference(x_test).detach())
    # White-box attacks follow these: they must be the model's true input gradients.
    assert gradients.abs().sum() > 0
    torch.testing.assert_close(gradients, reference_gradients)


@pytest.mark.parametrize("model_format", ["torchscript", "pt2"])
def test_code_format_switches_modes_like_any_model(model_format: str) -> None:
    model = load_model(FILES[model_format](), spec(model_format), allow_code=True)
    model.train()
    assert model.training
    model.eval()
    assert not model.training
    check_model(model.train(), spec(model_format))
    assert model.training  # check_model restores the mode


@pytest.mark.parametrize("model_format", ["torchscript", "pt2"])
def test_code_format_is_refused_without_allow_code_and_never_loaded(
    model_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a code-carrying file reached its loader")

    monkeypatch.setattr(loading.torch.jit, "load", refuse)
    monkeypatch.setattr(loading.torch.export, "load", refuse)
    with pytest.raises(ModelFormatError) as caught:
        load_model(FILES[model_format](), spec(model_format))
    assert caught.value.code == f"{model_format}_refused"
    assert "jail" in caught.value.message
    assert "torch.onnx.export" in caught.value.message


@pytest.mark.parametrize(
    ("declared", "data", "code"),
    [
        ("pt2", digits_torchscript, "not_pt2"),
        ("torchscript", digits_pt2, "not_torchscript"),
        ("torchscript", digits_small_cnn_safetensors, "not_a_zip"),
    ],
)
def test_declared_code_format_must_be_the_files_kind(declared: str, data, code: str) -> None:
    with pytest.raises(ModelFormatError) as caught:
        load_model(data(), spec(declared), allow_code=True)
    assert caught.value.code == code


def test_a_torchscript_file_declared_as_pt_points_to_its_format() -> None:
    with pytest.raises(ModelFormatError) as caught:
        load_model(digits_torchscript(), spec("pt", architecture="mlp"))
    assert caught.value.code == "torchscript_refused"
    assert "format 'torchscript'" in caught.value.message


def test_code_formats_take_no_architecture() -> None:
    with pytest.raises(ModelFormatError) as caught:
        load_model(digits_pt2(), spec("pt2", architecture="mlp"), allow_code=True)
    assert caught.value.code == "architecture_not_applicable"


def test_broken_archive_of_a_code_format_is_invalid() -> None:
    data = bytearray(digits_torchscript())
    start = data.index(b"code/")
    data[start + 40 : start + 400] = b"\x00" * 360  # garble the compiled code
    with pytest.raises(ModelFormatError) as caught:
        load_model(bytes(data), spec("torchscript"), allow_code=True)
    assert caught.value.code in {"torchscript_invalid", "zip_corrupt"}


def test_spec_survives_json() -> None:
    original = ModelSpec(
        format="safetensors",
        input_shape=(3, 32, 32),
        num_classes=10,
        input_range=(0.0, 255.0),
        normalization=((0.5, 0.4, 0.3), (0.2, 0.2, 0.2)),
        architecture="small_cnn",
        architecture_kwargs={"width": 8},
    )
    assert ModelSpec.from_json(original.to_json()) == original
    with pytest.raises(ModelFormatError) as caught:
        ModelSpec.from_json({"format": "onnx"})
    assert caught.value.code == "bad_spec"
