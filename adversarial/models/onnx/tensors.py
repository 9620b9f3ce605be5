"""ONNX tensors, sparse tensors and attributes decoded into torch values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from torch import Tensor

from adversarial.errors import ModelFormatError

ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
}


def dtype_name(onnx_type: int) -> str:
    """The ONNX name of an element type (``FLOAT``), for messages."""
    try:
        return str(TensorProto.DataType.Name(onnx_type))
    except ValueError:
        return f"type {onnx_type}"


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; ``unsupported_op`` for types torch lacks."""
    try:
        return ONNX_TO_TORCH_DTYPE[onnx_type]
    except KeyError:
        raise ModelFormatError(
            "unsupported_op",
            f"ONNX tensor element type {dtype_name(onnx_type)} is not supported; supported: "
            + ", ".join(sorted(dtype_name(t) for t in ONNX_TO_TORCH_DTYPE)),
        ) from None


def tensor_from_proto(proto: TensorProto) -> Tensor:
    """A TensorProto decoded into a fresh CPU tensor (``onnx_invalid`` if it cannot be)."""
    dtype = torch_dtype(proto.data_type)
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:  # malformed raw_data length and the like
        raise ModelFormatError(
            "onnx_invalid", f"ONNX tensor {proto.name!r} cannot be decoded: {exc}"
        ) from exc
    if dtype == torch.bfloat16:
        # numpy has no bfloat16; onnx hands back an ml_dtypes array with the same bit layout.
        bits = np.ascontiguousarray(array).view(np.uint16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> Tensor:
    """A SparseTensorProto expanded into a dense CPU tensor."""
    values = tensor_from_proto(sparse.values)
    indices = tensor_from_proto(sparse.indices).to(torch.int64)
    shape = [int(d) for d in sparse.dims]
    dense = torch.zeros(math.prod(shape), dtype=values.dtype)
    if indices.dim() == 2:  # [NNZ, rank] coordinates -> linear positions
        strides = torch.tensor(
            [math.prod(shape[i + 1 :]) for i in range(len(shape))], dtype=torch.int64
        )
        indices = (indices * strides).sum(dim=1)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(shape)


def attribute_value(attr: AttributeProto) -> Any:
    """A node attribute as a Python value (tensors decoded, strings as str)."""
    if attr.type == AttributeProto.TENSOR:
        return tensor_from_proto(attr.t)
    if attr.type == AttributeProto.SPARSE_TENSOR:
        return sparse_to_dense(attr.sparse_tensor)
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        return None  # control flow ops are unsupported and refused before this matters
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def constant_value(node: onnx.NodeProto) -> Tensor:
    """The tensor a ``Constant`` node holds, whichever attribute form it uses."""
    if len(node.attribute) != 1:
        raise ModelFormatError("onnx_invalid", f"Constant node {node.name!r} needs one attribute")
    attr = node.attribute[0]
    value = attribute_value(attr)
    if attr.name in ("value", "sparse_value"):
        return value  # type: ignore[no-any-return]
    if attr.name == "value_float":
        return torch.tensor(value, dtype=torch.float32)
    if attr.name == "value_floats":
        return torch.tensor(list(value), dtype=torch.float32)
    if attr.name == "value_int":
        return torch.tensor(value, dtype=torch.int64)
    if attr.name == "value_ints":
        return torch.tensor(list(value), dtype=torch.int64)
    raise ModelFormatError(
        "unsupported_op", f"Constant node {node.name!r}: attribute {attr.name!r} is not supported"
    )
