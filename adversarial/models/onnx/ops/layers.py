"""Linear algebra, convolution, pooling and normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adversarial.models.onnx.costs import conv_transpose_geometry, window_params
from adversarial.models.onnx.ops.base import (
    OpContext,
    normalized_axis,
    op,
    required,
    torch_pad_order,
)


@op("MatMul")
def _matmul(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return torch.matmul(required(ins[0]), required(ins[1]))


@op("Gemm")
def _gemm(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    a, b = required(ins[0]), required(ins[1])
    c = ins[2] if len(ins) > 2 else None
    attrs = ctx.node.attrs
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    if attrs.get("transA", 0):
        a = a.t()
    if (
        attrs.get("transB", 0)
        and alpha == 1.0
        and beta == 1.0
        and (c is None or (c.dim() == 1 and c.shape[0] == b.shape[0]))
    ):
        # Same kernel as nn.Linear, so exported Linear layers match bit for bit.
        return F.linear(a, b, c)
    if attrs.get("transB", 0):
        b = b.t()
    out = a @ b
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        out = out + (c * beta if beta != 1.0 else c)
    return out


@op("Einsum")
def _einsum(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    equation = str(ctx.node.attrs["equation"]).replace(" ", "")
    return torch.einsum(equation, *[required(t) for t in ins])


def _symmetric(pads: Sequence[int]) -> list[int] | None:
    n = len(pads) // 2
    return list(pads[:n]) if list(pads[:n]) == list(pads[n:]) else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@op("Conv")
def _conv(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, w = required(ins[0]), required(ins[1])
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    if n not in _CONV:
        raise ValueError(f"{n}-D convolution is not supported")
    kernel = [int(k) for k in ctx.node.attrs.get("kernel_shape", w.shape[2:])]
    strides, dilations, pads = window_params(ctx.node.attrs, x.shape[2:], kernel)
    padding = _symmetric(pads)
    if padding is None:
        x = F.pad(x, torch_pad_order(pads))
        padding = [0] * n
    group = int(ctx.node.attrs.get("group", 1))
    return _CONV[n](x, w, b, strides, padding, dilations, group)


@op("ConvTranspose")
def _conv_transpose(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, w = required(ins[0]), required(ins[1])
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    if n not in _CONV_T:
        raise ValueError(f"{n}-D transposed convolution is not supported")
    attrs = ctx.node.attrs
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    group = int(attrs.get("group", 1))
    # Full (unpadded) output, then the ONNX output_padding and pads are applied by padding
    # and cropping, which covers asymmetric pads and explicit output_shape alike.
    geometry = conv_transpose_geometry(attrs, [int(s) for s in x.shape[2:]], kernel)
    strides, dilations, pads = geometry.strides, geometry.dilations, geometry.pads
    output_padding = geometry.output_padding
    y = _CONV_T[n](x, w, None, strides, 0, 0, group, dilations)
    # output_padding adds trailing positions no input reaches (they hold only the bias).
    y = F.pad(y, torch_pad_order([0] * n + output_padding))
    y = F.pad(y, torch_pad_order([-p for p in pads]))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * n))
    return y


def _pool_window(ctx: OpContext, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in ctx.node.attrs["kernel_shape"]]
    strides, dilations, pads = window_params(ctx.node.attrs, x.shape[2:], kernel)
    return kernel, strides, dilations, pads


@op("MaxPool")
def _max_pool(ctx: OpContext, ins: list[Tensor | None]) -> list[Tensor]:
    x = required(ins[0])
    kernel, strides, dilations, pads = _pool_window(ctx, x)
    n = len(kernel)
    ceil_mode = bool(ctx.node.attrs.get("ceil_mode", 0))
    padding = _symmetric(pads)
    # torch accepts only symmetric pads of at most half the window; pad with -inf otherwise.
    if padding is None or any(
        p > ((k - 1) * d + 1) // 2 for p, k, d in zip(padding, kernel, dilations, strict=True)
    ):
        x = F.pad(x, torch_pad_order(pads), value=-math.inf)
        padding = [0] * n
    want_indices = len(ctx.node.outputs) > 1 and bool(ctx.node.outputs[1])
    if not want_indices:
        return [_MAX_POOL[n](x, kernel, strides, padding, dilations, ceil_mode)]
    y, idx = _MAX_POOL[n](x, kernel, strides, padding, dilations, ceil_mode, return_indices=True)
    # torch indexes within each (n, c) plane; ONNX indexes the flattened whole tensor.
    plane = math.prod(x.shape[2:])
    offsets = torch.arange(x.shape[0] * x.shape[1], device=x.device, dtype=torch.int64)
    offsets = (offsets * plane).reshape(x.shape[0], x.shape[1], *([1] * n))
    return [y, idx + offsets]


@op("AveragePool")
def _avg_pool(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    kernel, strides, _, pads = _pool_window(ctx, x)
    n = len(kernel)
    ceil_mode = bool(ctx.node.attrs.get("ceil_mode", 0))
    include_pad = bool(ctx.node.attrs.get("count_include_pad", 0))
    pool = _AVG_POOL[n]
    padding = _symmetric(pads)
    if padding is not None and all(p <= k // 2 for p, k in zip(padding, kernel, strict=True)):
        return pool(x, kernel, strides, padding, ceil_mode, include_pad)
    padded = F.pad(x, torch_pad_order(pads))
    if include_pad:
        return pool(padded, kernel, strides, 0, ceil_mode, True)
    # Average over real elements only: pool the zero-padded sum and a mask of real positions.
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pad_order(pads))
    return pool(padded, kernel, strides, 0, ceil_mode, True) / pool(
        ones, kernel, strides, 0, ceil_mode, True
    )


@op("GlobalAveragePool")
def _global_avg_pool(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _global_max_pool(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("LRN")
def _lrn(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    attrs = ctx.node.attrs
    size = int(attrs["size"])
    alpha = float(attrs.get("alpha", 1e-4))
    beta = float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    channels = x.shape[1]
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    # ONNX sums channels [c - before, c + after]; F.local_response_norm differs for even sizes.
    squares = (x * x).movedim(1, -1)
    squares = F.pad(squares, [before, after]).movedim(-1, 1)
    square_sum = squares[:, 0:channels]
    for i in range(1, size):
        square_sum = square_sum + squares[:, i : i + channels]
    return x / (bias + alpha / size * square_sum) ** beta


@op("BatchNormalization")
def _batch_norm(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias, mean, var = (required(t) for t in ins[:5])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)


@op("InstanceNormalization")
def _instance_norm(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = required(ins[0]), required(ins[1]), required(ins[2])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@op("LayerNormalization")
def _layer_norm(ctx: OpContext, ins: list[Tensor | None]) -> list[Tensor]:
    x, scale = required(ins[0]), required(ins[1])
    bias = ins[2] if len(ins) > 2 else None
    axis = normalized_axis(int(ctx.node.attrs.get("axis", -1)), x.dim())
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    norm_shape = tuple(x.shape[axis:])
    extra_outputs = any(o for o in ctx.node.outputs[1:])
    plain = tuple(scale.shape) == norm_shape and (bias is None or tuple(bias.shape) == norm_shape)
    if plain and not extra_outputs:
        return [F.layer_norm(x, norm_shape, scale, bias, eps)]
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dim=dims, keepdim=True, unbiased=False) + eps)
    y = (x - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv_std]


@op("GroupNormalization")
def _group_norm(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = required(ins[0]), required(ins[1]), required(ins[2])
    groups = int(ctx.node.attrs["num_groups"])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:
        # Opset 18 took one scale/bias per group; opset 21 takes one per channel.
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, eps)
