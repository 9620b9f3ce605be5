"""Model files as users upload them, made from the small trained digits CNN (cached)."""

from __future__ import annotations

import io
import json
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from adversarial.models.zoo import build_architecture
from tests.trained import digits_arrays, train, trained_digits_cnn

DIGITS_META = {"name": "digits-cnn", "input_shape": [1, 8, 8], "num_classes": 10}


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, dynamo: bool = False) -> bytes:
    """``model`` exported to ONNX with a dynamic batch axis."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        else:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
    return buffer.getvalue()


@lru_cache
def digits_onnx() -> bytes:
    """The trained digits CNN as ONNX."""
    return onnx_bytes(trained_digits_cnn(), torch.rand(2, 1, 8, 8))


@lru_cache
def digits_small_cnn_safetensors() -> bytes:
    """A trained built-in ``small_cnn`` state_dict as safetensors."""
    torch.manual_seed(0)
    x_train, y_train, _, _ = digits_arrays()
    model = train(build_architecture("small_cnn", {}, (1, 8, 8), 10), x_train, y_train, epochs=5)
    return save_safetensors(model.state_dict())


class RoundedInput(nn.Module):
    """Gradient masking: the network sees its input rounded to ``levels`` grey levels, so
    every input gradient is exactly zero while the accuracy barely changes."""

    def __init__(self, network: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.network = network
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(torch.round(x * self.levels) / self.levels)


@lru_cache
def masked_digits_onnx() -> bytes:
    """The trained digits CNN behind a ``round(4x)/4`` input layer, as ONNX."""
    return onnx_bytes(RoundedInput(trained_digits_cnn()).eval(), torch.rand(2, 1, 8, 8))


def torchscript_bytes(model: nn.Module) -> bytes:
    """``model`` compiled with ``torch.jit.script`` and saved with ``torch.jit.save``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def pt2_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` exported with ``torch.export`` (dynamic batch) and saved as a ``.pt2``."""
    exported = torch.export.export(
        model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


@lru_cache
def digits_torchscript() -> bytes:
    """The trained digits CNN as TorchScript."""
    return torchscript_bytes(trained_digits_cnn())


@lru_cache
def digits_pt2() -> bytes:
    """The trained digits CNN as a ``torch.export`` package."""
    return pt2_bytes(trained_digits_cnn(), torch.rand(2, 1, 8, 8))


def meta(fmt: str, **extra: object) -> dict[str, object]:
    """Upload metadata for the digits models."""
    return {**DIGITS_META, "format": fmt, **extra}


def malicious_pt(canary: Path) -> bytes:
    """A torch.save zip whose pickle writes ``canary`` when loaded without weights_only."""

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.write_text, (canary, "pwned"))

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, buffer)
    return buffer.getvalue()


def write_upload_files(folder: Path, *, masked: bool = False) -> dict[str, Path]:
    """Write the digits ONNX (behind a rounding input layer with ``masked``) and its meta
    to ``folder`` (for command-line tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "masked" if masked else "digits"
    onnx_path = folder / f"{name}.onnx"
    onnx_path.write_bytes(masked_digits_onnx() if masked else digits_onnx())
    meta_path = folder / f"{name}.meta.json"
    meta_path.write_text(json.dumps(meta("onnx", name=f"{name}-cnn")))
    return {"model": onnx_path, "meta": meta_path}
