"""Resize (nearest, linear and cubic, every coordinate transformation mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from adversarial.models.onnx.ops.base import (
    OpContext,
    ints,
    normalized_axis,
    op,
    required,
)


def _resize_source(
    out_size: int, in_size: int, scale: float, mode: str, device: torch.device
) -> Tensor:
    """Source coordinates (float64) of each output position along one axis, as ONNX defines."""
    x = torch.arange(out_size, dtype=torch.float64, device=device)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        if out_size == 1:
            return torch.zeros_like(x)
        return x * (in_size - 1) / (out_size - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (scale * in_size)
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise ValueError(f"coordinate_transformation_mode {mode!r} is not supported")


def _cubic_weights(t: Tensor, a: float) -> list[Tensor]:
    def kernel(d: Tensor) -> Tensor:
        d = d.abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def _resize_axis(
    x: Tensor, axis: int, out_size: int, scale: float, attrs: dict[str, Any]
) -> Tensor:
    in_size = x.shape[axis]
    coord_mode = str(attrs.get("coordinate_transformation_mode", "half_pixel"))
    mode = str(attrs.get("mode", "nearest"))
    src = _resize_source(out_size, in_size, scale, coord_mode, x.device)
    last = in_size - 1

    def taps(index: Tensor) -> Tensor:
        return x.index_select(axis, index.clamp(0, last))

    def weighted(weight: Tensor) -> Tensor:
        shape = [1] * x.dim()
        shape[axis] = out_size
        return weight.to(x.dtype).reshape(shape)

    if mode == "nearest":
        rounding = str(attrs.get("nearest_mode", "round_prefer_floor"))
        if rounding == "round_prefer_floor":
            index = torch.ceil(src - 0.5)
        elif rounding == "round_prefer_ceil":
            index = torch.floor(src + 0.5)
        elif rounding == "floor":
            index = torch.floor(src)
        elif rounding == "ceil":
            index = torch.ceil(src)
        else:
            raise ValueError(f"nearest_mode {rounding!r} is not supported")
        return taps(index.to(torch.int64))
    base = torch.floor(src)
    frac = src - base
    base_index = base.to(torch.int64)
    if mode == "linear":
        # Neighbours outside the input repeat the edge, as in ONNX's reference and PyTorch.
        return taps(base_index) * weighted(1 - frac) + taps(base_index + 1) * weighted(frac)
    if mode == "cubic":
        weights = _cubic_weights(frac, float(attrs.get("cubic_coeff_a", -0.75)))
        indices = [base_index + k for k in (-1, 0, 1, 2)]
        if attrs.get("exclude_outside", 0):
            weights = [w * ((i >= 0) & (i <= last)) for w, i in zip(weights, indices, strict=True)]
            total = sum(weights[1:], weights[0])
            weights = [w / total for w in weights]
        out = taps(indices[0]) * weighted(weights[0])
        for index, weight in zip(indices[1:], weights[1:], strict=True):
            out = out + taps(index) * weighted(weight)
        return out
    raise ValueError(f"Resize mode {mode!r} is not supported")


def resize_plan(
    attrs: dict[str, Any], ins: list[Tensor | None], shape: Sequence[int]
) -> tuple[list[int], list[int], list[float]]:
    """Resize's axes, output sizes along them and scales, for an input of ``shape``."""
    rank = len(shape)
    axes = [normalized_axis(int(a), rank) for a in attrs.get("axes", range(rank))]
    scales_in = ins[2] if len(ins) > 2 else None
    sizes_in = ins[3] if len(ins) > 3 else None
    in_sizes = [int(shape[a]) for a in axes]
    if sizes_in is not None and sizes_in.numel() > 0:
        sizes = ints(sizes_in)
        policy = str(attrs.get("keep_aspect_ratio_policy", "stretch"))
        if policy == "stretch":
            scales = [s / i for s, i in zip(sizes, in_sizes, strict=True)]
        else:
            ratios = [s / i for s, i in zip(sizes, in_sizes, strict=True)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            scales = [common] * len(axes)
            sizes = [int(math.floor(common * i + 0.5)) for i in in_sizes]
    elif scales_in is not None and scales_in.numel() > 0:
        scales = [float(v) for v in scales_in.reshape(-1).tolist()]
        sizes = [int(math.floor(i * s)) for i, s in zip(in_sizes, scales, strict=True)]
    else:
        raise ValueError("Resize needs scales or sizes")
    return axes, sizes, scales


@op("Resize", host=(1, 2, 3))
def _resize(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    attrs = ctx.node.attrs
    axes, sizes, scales = resize_plan(attrs, ins, x.shape)
    for axis, size, scale in zip(axes, sizes, scales, strict=True):
        if size != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, size, scale, attrs)
    return x
