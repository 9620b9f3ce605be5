"""Safe loading of untrusted uploads: refusals happen before any of their code can run."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from adversarial.errors import ModelFormatError
from adversarial.models import loading
from adversarial.models.archive import check_torch_zip
from adversarial.models.loading import ModelSpec, check_model, load_model
from adversarial.models.zoo import build_architecture

PT_SPEC = ModelSpec(format="pt", input_shape=(1, 8, 8), num_classes=10, architecture="mlp")


class WritesCanary:
    """Unpickling this object creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class UserNet(nn.Module):
    """A user's own model class, as pickled by ``torch.save(model)``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs.flatten(1))


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _state_dict_bytes() -> bytes:
    return _saved(build_architecture("mlp", {}, (1, 8, 8), 10).state_dict())


def _rewritten(
    data: bytes, *, rename: dict[str, str] | None = None, deflate: bool = False
) -> bytes:
    """The same archive with entries renamed and/or recompressed."""
    rename = rename or {}
    output = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(output, "w") as target:
        for entry in source.infolist():
            info = zipfile.ZipInfo(rename.get(entry.filename, entry.filename))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            target.writestr(info, source.read(entry.filename))
    return output.getvalue()


def _error_code(data: bytes, spec: ModelSpec = PT_SPEC, **options: Any) -> str:
    with pytest.raises(ModelFormatError) as caught:
        load_model(data, spec, **options)
    return caught.value.code


@pytest.fixture
def torch_load_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the bytes reach torch.load."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(loading.torch, "load", refuse)


# --- pickled code ------------------------------------------------------------------------


def test_malicious_pickle_in_a_torch_zip_is_refused_without_running(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    data = _saved({"weight": WritesCanary(canary)})

    assert _error_code(data) == "pickle_refused"
    assert not canary.exists()


def test_malicious_plain_pickle_is_refused_without_running(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    data = pickle.dumps(WritesCanary(canary))

    assert _error_code(data) == "not_a_zip"
    assert not canary.exists()


def test_legacy_torch_save_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFormatError) as caught:
        load_model(buffer.getvalue(), PT_SPEC)
    assert caught.value.code == "not_a_zip"
    assert "legacy" in caught.value.message


def test_pickle_with_a_zip_appended_is_refused(torch_load_forbidden: None) -> None:
    # A polyglot: zipfile finds the archive at the end, torch would read the pickle at the start.
    data = pickle.dumps({"weight": 1}) + _state_dict_bytes()
    assert _error_code(data) == "not_a_zip"


@pytest.mark.parametrize("model", [nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), UserNet()])
def test_whole_pickled_model_is_refused_with_advice(model: nn.Module) -> None:
    with pytest.raises(ModelFormatError) as caught:
        load_model(_saved(model), PT_SPEC)
    assert caught.value.code == "pickled_model_refused"
    assert "state_dict()" in caught.value.message
    assert "torch.onnx.export" in caught.value.message


def test_non_state_dict_content_is_refused() -> None:
    assert _error_code(_saved({"weights": [1.0, 2.0]})) == "not_a_state_dict"
    assert _error_code(_saved(torch.zeros(3))) == "not_a_state_dict"


# --- formats that carry code -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_is_refused_without_loading(torch_load_forbidden: None) -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    with pytest.raises(ModelFormatError) as caught:
        load_model(buffer.getvalue(), PT_SPEC)
    assert caught.value.code == "torchscript_refused"
    assert "carries code" in caught.value.message
    assert "torch.save(model.state_dict(), path)" in caught.value.message
    assert "torch.onnx.export" in caught.value.message


def test_torch_export_package_is_refused_without_loading(torch_load_forbidden: None) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    exported = torch.export.export(model, (torch.rand(2, 1, 8, 8),))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    with pytest.raises(ModelFormatError) as caught:
        load_model(buffer.getvalue(), PT_SPEC)
    assert caught.value.code == "pt2_refused"
    assert "save_file(model.state_dict(), path)" in caught.value.message


# --- zip structure -----------------------------------------------------------------------


def test_clean_state_dict_archive_passes_the_zip_check() -> None:
    names = check_torch_zip(_state_dict_bytes(), max_total_bytes=2**20)
    assert any(name.endswith("/data.pkl") for name in names)


def test_deflated_entry_is_refused(torch_load_forbidden: None) -> None:
    assert _error_code(_rewritten(_state_dict_bytes(), deflate=True)) == "zip_compressed_entry"


def test_compression_hidden_in_the_local_header_is_refused() -> None:
    data = bytearray(_state_dict_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        offset = archive.infolist()[0].header_offset
    struct.pack_into("<H", data, offset + 8, zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFormatError) as caught:
        check_torch_zip(bytes(data), max_total_bytes=2**20)
    assert caught.value.code == "zip_compressed_entry"


def test_oversized_total_is_refused(torch_load_forbidden: None) -> None:
    data = _state_dict_bytes()
    with pytest.raises(ModelFormatError) as caught:
        check_torch_zip(data, max_total_bytes=len(data) // 2)
    assert caught.value.code == "zip_too_large"

    # A central directory that declares a huge entry, under a file-size cap it fits.
    patched = bytearray(data)
    record = patched.find(b"PK\x01\x02")
    struct.pack_into("<I", patched, record + 24, 2**31)
    assert _error_code(bytes(patched), max_bytes=2 * len(data)) == "zip_too_large"


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(ModelFormatError) as caught:
        check_torch_zip(_state_dict_bytes(), max_total_bytes=2**20, max_entries=3)
    assert caught.value.code == "zip_too_many_entries"


@pytest.mark.parametrize(
    "bad_name",
    [
        "archive/../../etc/passwd",
        "/archive/data.pkl",
        "archive\\data.pkl",
        "elsewhere/data.pkl",
        "data.pkl",
        "archive//data.pkl",
    ],
)
def test_odd_entry_names_are_refused(bad_name: str, torch_load_forbidden: None) -> None:
    data = _state_dict_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first = archive.infolist()[0].filename
    assert _error_code(_rewritten(data, rename={first: bad_name})) == "zip_bad_entry_name"


def test_duplicate_entry_names_are_refused() -> None:
    data = _state_dict_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        first, second = (entry.filename for entry in archive.infolist()[:2])
    with pytest.warns(UserWarning, match="Duplicate name"):
        duplicated = _rewritten(data, rename={second: first})
    with pytest.raises(ModelFormatError) as caught:
        check_torch_zip(duplicated, max_total_bytes=2**20)
    assert caught.value.code == "zip_bad_entry_name"


# --- other load errors -------------------------------------------------------------------


def test_file_over_the_size_cap_is_refused_first(torch_load_forbidden: None) -> None:
    assert _error_code(_state_dict_bytes(), max_bytes=100) == "too_large"


def test_unknown_format_is_refused() -> None:
    spec = ModelSpec(format="keras", input_shape=(1, 8, 8), num_classes=10, architecture="mlp")
    assert _error_code(b"anything", spec) == "unknown_format"


def test_invalid_safetensors_is_refused() -> None:
    spec = ModelSpec(
        format="safetensors", input_shape=(1, 8, 8), num_classes=10, architecture="mlp"
    )
    assert _error_code(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", spec) == (
        "safetensors_invalid"
    )


def test_onnx_with_an_architecture_is_refused() -> None:
    spec = ModelSpec(format="onnx", input_shape=(1, 8, 8), num_classes=10, architecture="mlp")
    assert _error_code(b"onnx bytes", spec) == "architecture_not_applicable"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"input_shape": (1, 8)}, "bad_input_shape"),
        ({"input_shape": (0, 8, 8)}, "bad_input_shape"),
        ({"num_classes": 1}, "bad_num_classes"),
        ({"input_range": (1.0, 0.0)}, "bad_input_range"),
        ({"normalization": ((0.5,), ("x",))}, "bad_normalization"),
    ],
)
def test_bad_spec_is_refused(fields: dict[str, Any], code: str) -> None:
    arguments: dict[str, Any] = {"format": "pt", "input_shape": (1, 8, 8), "num_classes": 10}
    with pytest.raises(ModelFormatError) as caught:
        ModelSpec(**{**arguments, **fields})
    assert caught.value.code == code


def test_spec_accepts_json_lists() -> None:
    spec = ModelSpec(
        format="pt",
        input_shape=[1, 8, 8],  # type: ignore[arg-type]
        num_classes=10,
        input_range=[0, 255],  # type: ignore[arg-type]
        normalization=([0.5], [0.25]),  # type: ignore[arg-type]
    )
    assert spec.input_shape == (1, 8, 8)
    assert spec.input_range == (0.0, 255.0)
    assert spec.normalization == ((0.5,), (0.25,))


# --- check_model -------------------------------------------------------------------------


class ConstantOutput(nn.Module):
    """Returns ``value`` for every class; ``width`` logits per example."""

    def __init__(self, width: int, value: float = 0.0) -> None:
        super().__init__()
        self.width = width
        self.value = value

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.full((inputs.shape[0], self.width), self.value)


SPEC_8X8 = ModelSpec(format="pt", input_shape=(1, 8, 8), num_classes=10)


def _check_error(model: nn.Module, spec: ModelSpec = SPEC_8X8) -> ModelFormatError:
    with pytest.raises(ModelFormatError) as caught:
        check_model(model, spec)
    return caught.value


def test_wrong_output_width_is_a_bad_output_shape() -> None:
    error = _check_error(ConstantOutput(width=9))
    assert error.code == "bad_output_shape"
    assert "[1, 9]" in error.message
    assert "[1, 10]" in error.message


def test_non_tensor_output_is_a_bad_output_shape() -> None:
    class ReturnsTuple(nn.Module):
        def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = torch.zeros(inputs.shape[0], 10)
            return logits, logits

    assert _check_error(ReturnsTuple()).code == "bad_output_shape"


def test_nan_output_is_refused() -> None:
    assert _check_error(ConstantOutput(width=10, value=float("nan"))).code == "non_finite_output"


def test_integer_output_is_refused() -> None:
    class ReturnsLabels(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return torch.zeros(inputs.shape[0], 10, dtype=torch.int64)

    assert _check_error(ReturnsLabels()).code == "bad_output_dtype"


def test_wrong_declared_input_shape_is_a_failed_forward() -> None:
    network = build_architecture("mlp", {}, (1, 8, 8), 10)
    error = _check_error(network, ModelSpec(format="pt", input_shape=(1, 28, 28), num_classes=10))
    assert error.code == "forward_failed"
    assert "784" in error.message


@pytest.mark.parametrize("training", [True, False])
def test_good_model_passes_and_keeps_its_mode(training: bool) -> None:
    spec = ModelSpec(
        format="safetensors",
        input_shape=(1, 8, 8),
        num_classes=10,
        architecture="small_cnn",
        normalization=((0.5,), (0.25,)),
    )
    state_dict = build_architecture("small_cnn", {}, (1, 8, 8), 10).state_dict()
    model = load_model(save_safetensors(state_dict), spec)
    model.train(training)

    check_model(model, spec)

    assert model.training is training
    assert all(module.training is training for module in model.modules())


def test_mode_is_restored_when_the_forward_fails() -> None:
    network = build_architecture("mlp", {}, (1, 8, 8), 10).train()
    _check_error(network, ModelSpec(format="pt", input_shape=(3, 8, 8), num_classes=10))
    assert network.training
