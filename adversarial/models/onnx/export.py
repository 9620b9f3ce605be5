"""Writing fine-tuned weights back into the user's original ONNX file."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import torch
from torch import Tensor

from adversarial.errors import ModelFormatError
from adversarial.models.onnx.executor import OnnxGraphModule
from adversarial.models.onnx.tensors import tensor_from_proto, torch_dtype

# Every TensorProto field that can hold values; a rewritten initializer keeps only raw_data.
_DATA_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
    "raw_data",
)


def export_onnx_with_weights(original: bytes, module: OnnxGraphModule) -> bytes:
    """The user's ONNX file with the module's current initializer values written back.

    ``module`` must have been loaded from ``original`` (:func:`load_onnx`). Every initializer
    whose current value differs bit for bit from the stored one is rewritten as ``raw_data``
    with the same name, data type and dims (a value the module holds in another dtype, e.g.
    after ``module.double()``, is cast back). Every other byte of the model is left as it was,
    so initializers that did not change are bit-identical to the original's.

    Raises:
        ModelFormatError: ``onnx_invalid`` when ``original`` does not parse;
            ``onnx_export_mismatch`` when its initializers are not the module's (other
            names, dims or a data type the module cannot hold).
    """
    try:
        model = onnx.ModelProto.FromString(bytes(original))
    except Exception as exc:  # protobuf raises DecodeError and, on some inputs, others
        raise ModelFormatError("onnx_invalid", f"not a valid ONNX model: {exc}") from exc
    stored = {tensor.name: tensor for tensor in model.graph.initializer}
    current = module.initializers()
    if set(stored) != set(current):
        differing = sorted(set(stored) ^ set(current))
        raise ModelFormatError(
            "onnx_export_mismatch",
            "The ONNX file's initializers are not the module's (differing names: "
            f"{', '.join(map(repr, differing[:8]))}); export into the file it was loaded from",
        )
    for name, value in current.items():
        proto = stored[name]
        if list(value.shape) != [int(d) for d in proto.dims]:
            raise ModelFormatError(
                "onnx_export_mismatch",
                f"ONNX initializer {name!r} has dims {list(proto.dims)} in the file but "
                f"{list(value.shape)} in the module",
            )
        target = torch_dtype(proto.data_type)
        new_bytes = _little_endian_bytes(value.detach().to("cpu", target))
        if new_bytes == _little_endian_bytes(tensor_from_proto(proto)):
            continue  # unchanged: the stored proto stays exactly as the user wrote it
        for field in _DATA_FIELDS:
            proto.ClearField(field)
        proto.raw_data = new_bytes
    exported: bytes = model.SerializeToString()
    return exported


def _little_endian_bytes(tensor: Tensor) -> bytes:
    """The tensor's values as ONNX ``raw_data``: contiguous, little-endian."""
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)  # numpy has no bfloat16; the bits are what is stored
    array: np.ndarray = tensor.numpy()
    if sys.byteorder == "big":
        array = array.byteswap()
    data: bytes = array.tobytes()
    return data
