"""Export a trained torch classifier to ONNX, the portable format every loader accepts."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from adversarial.errors import ModelFormatError


def export_onnx(model: nn.Module, input_shape: Sequence[int], *, opset: int | None = None) -> bytes:
    """``model`` as ONNX bytes with a dynamic batch axis: input ``"x"`` ``[N, *input_shape]``,
    output ``"logits"`` ``[N, K]``.

    Uses ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter: plain ONNX ops
    that the engine's ONNX loader and onnxruntime read). The model is traced in eval mode
    on its own device; its mode is restored afterwards. ``opset`` None means the
    exporter's default.

    Raises:
        ModelFormatError: ``export_failed`` when the model cannot be exported (an op ONNX
            has no counterpart for, data-dependent control flow, ...).
    """
    shape = [int(size) for size in input_shape]
    if not shape or any(size < 1 for size in shape):
        raise ModelFormatError("export_failed", f"Bad input shape {list(input_shape)}.")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(1, *shape, device=device)
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The exporter warns about its own deprecation and about tracing details.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as error:  # the exporter raises many types; all mean "cannot export"
        raise ModelFormatError("export_failed", f"ONNX export failed: {error}") from None
    finally:
        model.train(was_training)
    return buffer.getvalue()
