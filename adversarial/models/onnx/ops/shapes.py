"""Shapes and tensor manipulation: reshapes, slicing, gathering, padding, creation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from adversarial.models.onnx.costs import broadcast_shapes
from adversarial.models.onnx.ops.base import (
    OpContext,
    axes_from,
    ints,
    normalized_axis,
    op,
    required,
    scalar,
    torch_pad_order,
)
from adversarial.models.onnx.tensors import torch_dtype


@op("Shape", host=(0,))
def _shape(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    dims = list(required(ins[0]).shape)
    rank = len(dims)
    start = int(ctx.node.attrs.get("start", 0))
    end = int(ctx.node.attrs.get("end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    # Shape values live on the host so shape arithmetic never waits for the accelerator.
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size", host=(0,))
def _size(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return torch.tensor(required(ins[0]).numel(), dtype=torch.int64)


@op("Cast")
def _cast(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return required(ins[0]).to(torch_dtype(int(ctx.node.attrs["to"])))


@op("CastLike")
def _cast_like(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return required(ins[0]).to(required(ins[1]).dtype)


@op("ConstantOfShape", host=(0,))
def _constant_of_shape(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    shape = ints(ins[0])
    device = required(ins[0]).device
    value = ctx.node.attrs.get("value")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=device)


@op("Reshape", host=(1,))
def _reshape(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    target = ints(ins[1])
    allowzero = bool(ctx.node.attrs.get("allowzero", 0))
    if (
        target
        and ctx.node.first_input_from_x
        and ctx.export_batch is not None
        and ctx.batch != ctx.export_batch
        and target[0] == ctx.export_batch
        and x.dim() > 0
        and x.shape[0] == ctx.batch
    ):
        # A fixed-batch export baked its batch size into the target (see module docstring).
        target[0] = ctx.batch
    if not allowzero:
        target = [x.shape[i] if v == 0 and i < x.dim() else v for i, v in enumerate(target)]
    return x.reshape(target)


@op("Flatten")
def _flatten(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    axis = int(ctx.node.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Squeeze", host=(1,))
def _squeeze(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    axes = axes_from(ctx, ins, 1)
    if axes is None:
        return x.squeeze()
    dims = tuple(normalized_axis(a, x.dim()) for a in axes)
    for d in dims:
        if x.shape[d] != 1:
            raise ValueError(f"Squeeze axis {d} has size {x.shape[d]}, not 1")
    return x.squeeze(dims) if dims else x


@op("Unsqueeze", host=(1,))
def _unsqueeze(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    axes = axes_from(ctx, ins, 1) or []
    rank = x.dim() + len(axes)
    for d in sorted(normalized_axis(a, rank) for a in axes):
        x = x.unsqueeze(d)
    return x


@op("Transpose")
def _transpose(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    perm = ctx.node.attrs.get("perm")
    if perm is None:
        perm = list(reversed(range(x.dim())))
    return x.permute(*[int(p) for p in perm])


@op("Concat")
def _concat(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    parts = [t for t in ins if t is not None]
    axis = normalized_axis(int(ctx.node.attrs["axis"]), parts[0].dim())
    return torch.cat(parts, dim=axis)


@op("Split", host=(1,))
def _split(ctx: OpContext, ins: list[Tensor | None]) -> list[Tensor]:
    x = required(ins[0])
    axis = normalized_axis(int(ctx.node.attrs.get("axis", 0)), x.dim())
    dim = x.shape[axis]
    if "split" in ctx.node.attrs:
        sizes = [int(v) for v in ctx.node.attrs["split"]]
    elif len(ins) > 1 and ins[1] is not None:
        sizes = ints(ins[1])
    else:
        parts = int(ctx.node.attrs.get("num_outputs", len(ctx.node.outputs)))
        # Opset 18: uneven splits put the remainder in a smaller last chunk.
        chunk = -(-dim // parts)
        sizes = [min(chunk, dim - i * chunk) for i in range(parts)]
    return list(torch.split(x, sizes, dim=axis))


def _slice_indices(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


@op("Slice", host=(1, 2, 3, 4))
def _slice(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    attrs = ctx.node.attrs
    if "starts" in attrs:  # opset < 10 form
        starts = [int(v) for v in attrs["starts"]]
        ends = [int(v) for v in attrs["ends"]]
        axes = [int(v) for v in attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    if len(starts) > x.dim():
        raise ValueError(f"Slice has {len(starts)} starts for a rank-{x.dim()} input")
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = normalized_axis(axis, x.dim())
        dim = x.shape[axis]
        if step == 0:
            raise ValueError("Slice step cannot be 0")
        lo, hi = _slice_indices(start, end, step, dim)
        if step > 0:
            index = [slice(None)] * axis + [slice(lo, hi, step)]
            x = x[tuple(index)]
        else:
            # Tensors cannot be sliced with a negative step; gather the positions instead.
            positions = torch.arange(lo, hi, step, dtype=torch.int64, device=x.device)
            x = x.index_select(axis, positions)
    return x


@op("Gather")
def _gather(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    data, indices = required(ins[0]), required(ins[1]).to(torch.int64)
    axis = normalized_axis(int(ctx.node.attrs.get("axis", 0)), data.dim())
    dim = data.shape[axis]
    indices = torch.where(indices < 0, indices + dim, indices)
    out = data.index_select(axis, indices.reshape(-1))
    shape = (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :])
    return out.reshape(shape)


@op("GatherElements")
def _gather_elements(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    data, indices = required(ins[0]), required(ins[1]).to(torch.int64)
    axis = normalized_axis(int(ctx.node.attrs.get("axis", 0)), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@op("GatherND")
def _gather_nd(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    data, indices = required(ins[0]), required(ins[1]).to(torch.int64)
    depth = indices.shape[-1]
    sizes = torch.tensor(data.shape[:depth], dtype=torch.int64, device=indices.device)
    indices = torch.where(indices < 0, indices + sizes, indices)
    return data[tuple(indices[..., i] for i in range(depth))]


@op("Expand", host=(1,))
def _expand(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    return x.expand(broadcast_shapes(x.shape, ints(ins[1])))


@op("Tile", host=(1,))
def _tile(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    repeats = ints(ins[1])
    return x.repeat(repeats)


def _pad_index(dim: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    positions = torch.arange(-before, dim + after, dtype=torch.int64, device=device)
    if mode == "edge":
        return positions.clamp(0, dim - 1)
    if mode == "wrap":
        return positions.remainder(dim)
    if dim == 1:
        return torch.zeros_like(positions)
    period = 2 * (dim - 1)
    folded = positions.remainder(period)
    return torch.where(folded >= dim, period - folded, folded)


def pad_widths(attrs: dict[str, Any], ins: list[Tensor | None], rank: int) -> list[int]:
    """Pad's ONNX-ordered widths over every axis [b1..b_rank, e1..e_rank] (negative crops)."""
    pads = [int(v) for v in attrs["pads"]] if "pads" in attrs else ints(ins[1])
    axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(rank))
    axes = [normalized_axis(a, rank) for a in axes]
    n = len(axes)
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[axis + rank] = pads[i], pads[i + n]
    return full


@op("Pad", host=(1, 2, 3))
def _pad(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    attrs = ctx.node.attrs
    mode = str(attrs.get("mode", "constant"))
    if "value" in attrs:
        value = float(attrs["value"])
    else:
        value = scalar(ins[2] if len(ins) > 2 else None, 0.0)
    full = pad_widths(attrs, ins, x.dim())
    if mode == "constant":
        return F.pad(x, torch_pad_order(full), value=value)
    # Negative pads crop; apply them first, then grow each axis by gathering source positions.
    x = F.pad(x, torch_pad_order([min(p, 0) for p in full]))
    for axis in range(x.dim()):
        before, after = max(full[axis], 0), max(full[axis + x.dim()], 0)
        if before or after:
            x = x.index_select(axis, _pad_index(x.shape[axis], before, after, mode, x.device))
    return x


@op("Range", host=(0, 1, 2))
def _range(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    start, limit, delta = required(ins[0]), required(ins[1]), required(ins[2])
    s, lim, d = start.item(), limit.item(), delta.item()
    return torch.arange(s, lim, d, dtype=start.dtype, device=start.device)


@op("NonZero")
def _nonzero(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return torch.nonzero(required(ins[0])).t().contiguous()


@op("Trilu", host=(1,))
def _trilu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    k = ints(ins[1])[0] if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(x, k) if ctx.node.attrs.get("upper", 1) else torch.tril(x, k)


@op("OneHot", host=(1,))
def _one_hot(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    indices, values = required(ins[0]).to(torch.int64), required(ins[2])
    depth = int(scalar(ins[1]))
    indices = torch.where(indices < 0, indices + depth, indices)
    hot = F.one_hot(indices, depth).to(torch.bool)
    out = torch.where(hot, values[1], values[0])
    axis = int(ctx.node.attrs.get("axis", -1))
    return out.movedim(-1, normalized_axis(axis, out.dim()))


@op("DepthToSpace")
def _depth_to_space(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    bs = int(ctx.node.attrs["blocksize"])
    n, c, h, w = x.shape
    if ctx.node.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def _space_to_depth(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    bs = int(ctx.node.attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)
