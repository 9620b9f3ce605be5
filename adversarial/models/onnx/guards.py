"""Run-time guards: what an op is about to allocate and compute, from its actual inputs.

Shape inference cannot predict everything (a shape computed from data, a dimension it leaves
unknown), so before each op runs the executor asks the op's guard for the shapes of the tensors
it will create and the FLOPs it will spend, and refuses the op beyond the budgets
(:class:`~adversarial.models.onnx.limits.OnnxLimits`) before anything is allocated.

Every supported op that can create a tensor larger than its largest input has a guard:
broadcasting elementwise ops, MatMul/Gemm/Einsum, convolutions and pooling (whose pads and
channel counts can grow a tensor), Concat, Expand, Tile, Pad, Resize, Range, ConstantOfShape,
OneHot, Gather, GatherND, NonZero, LRN and LayerNormalization (whose scale broadcasts). The ops
without one (unary elementwise ops, reshapes, slices, ...) produce at most as many elements as
an input they were given, which was itself checked when it was made, and their work is
proportional to their output, which the activation budget counts. Reductions (and TopK, the
arg-extremes and global pools) read a whole input to produce a small output: their guard
counts the input's size as their FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from adversarial.models.onnx.costs import (
    READING_OPS,
    Shape,
    broadcast_shapes,
    conv_transpose_geometry,
    einsum_cost,
    gemm_cost,
    matmul_cost,
    numel,
    padded_sizes,
    window_output_sizes,
    window_params,
)
from adversarial.models.onnx.ops.base import OpContext, ints, normalized_axis, required, scalar
from adversarial.models.onnx.ops.elementwise import BINARY_OPS
from adversarial.models.onnx.ops.resize import resize_plan
from adversarial.models.onnx.ops.shapes import pad_widths


@dataclass(frozen=True)
class OpCost:
    """What one op run creates (the shapes of its outputs and large temporaries) and its FLOPs.

    ``work_shape`` is the tensor whose first axis says whether the FLOPs grow with the batch
    (the last created shape when None).
    """

    shapes: tuple[Shape, ...]
    flops: int = 0
    work_shape: Shape | None = None

    @property
    def batch_shape(self) -> Shape:
        """The shape the executor scales this cost by (its first axis may be the batch)."""
        if self.work_shape is not None:
            return self.work_shape
        return self.shapes[-1] if self.shapes else ()


Guard = Callable[[OpContext, list[Tensor | None]], OpCost]

GUARDS: dict[str, Guard] = {}

# Guards that read input values (shapes, repeats, pads, sizes, bounds, depth), not only input
# shapes: their cost cannot be cached by input shapes.
VALUE_DEPENDENT = frozenset(
    {"Expand", "Tile", "Pad", "Resize", "Range", "ConstantOfShape", "OneHot"}
)


def _guard(*names: str) -> Callable[[Guard], Guard]:
    def register(fn: Guard) -> Guard:
        for name in names:
            GUARDS[name] = fn
        return fn

    return register


def _shape(t: Tensor | None) -> Shape:
    return tuple(int(d) for d in required(t).shape)


@_guard(*BINARY_OPS, "Mod", "Pow", "PRelu", "Where", "Max", "Min", "Sum", "Mean")
def _broadcasting(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    return OpCost((broadcast_shapes(*(_shape(t) for t in ins if t is not None)),))


@_guard("LayerNormalization")
def _layer_norm(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    # The scale and bias broadcast against x: a [N, 1] input with a long scale grows.
    return OpCost((broadcast_shapes(*(_shape(t) for t in ins if t is not None)),))


@_guard("MatMul")
def _matmul(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    shape, flops = matmul_cost(_shape(ins[0]), _shape(ins[1]))
    return OpCost((shape,), flops)


@_guard("Gemm")
def _gemm(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    c = ins[2] if len(ins) > 2 else None
    attrs = ctx.node.attrs
    shape, flops = gemm_cost(
        _shape(ins[0]),
        _shape(ins[1]),
        None if c is None else _shape(c),
        bool(attrs.get("transA", 0)),
        bool(attrs.get("transB", 0)),
    )
    return OpCost((shape,), flops)


@_guard("Einsum")
def _einsum(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    shapes = [_shape(t) for t in ins]
    shape, flops = einsum_cost(str(ctx.node.attrs["equation"]), shapes)
    return OpCost((shape,), flops)


@_guard("Conv")
def _conv(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x, w = _shape(ins[0]), _shape(ins[1])
    if len(x) < 3 or len(w) != len(x):
        raise ValueError(f"Conv input {list(x)} and weight {list(w)} do not match")
    kernel = [int(k) for k in ctx.node.attrs.get("kernel_shape", w[2:])]
    strides, dilations, pads = window_params(ctx.node.attrs, x[2:], kernel)
    out = (x[0], w[0], *window_output_sizes(x[2:], kernel, strides, dilations, pads))
    padded = (x[0], x[1], *padded_sizes(x[2:], pads))
    return OpCost((padded, out), 2 * numel(out) * numel(w[1:]))


@_guard("ConvTranspose")
def _conv_transpose(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x, w = _shape(ins[0]), _shape(ins[1])
    if len(x) < 3 or len(w) != len(x):
        raise ValueError(f"ConvTranspose input {list(x)} and weight {list(w)} do not match")
    attrs = ctx.node.attrs
    kernel = [int(k) for k in attrs.get("kernel_shape", w[2:])]
    channels = w[1] * int(attrs.get("group", 1))
    geometry = conv_transpose_geometry(attrs, x[2:], kernel)
    full = (x[0], channels, *geometry.full)
    out = (x[0], channels, *geometry.out_sizes)
    return OpCost((full, out), 2 * numel(x) * numel(w[1:]))


@_guard("MaxPool", "AveragePool")
def _pool(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x = _shape(ins[0])
    if len(x) < 3:
        raise ValueError(f"pooling needs an [N, C, ...] input, not {list(x)}")
    kernel = [int(k) for k in ctx.node.attrs["kernel_shape"]]
    strides, dilations, pads = window_params(ctx.node.attrs, x[2:], kernel)
    ceil_mode = bool(ctx.node.attrs.get("ceil_mode", 0))
    sizes = window_output_sizes(x[2:], kernel, strides, dilations, pads, ceil_mode=ceil_mode)
    out = (x[0], x[1], *sizes)
    padded = (x[0], x[1], *padded_sizes(x[2:], pads))
    return OpCost((padded, out), numel(out) * numel(kernel))


@_guard("LRN")
def _lrn(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x = _shape(ins[0])
    if len(x) < 2:
        raise ValueError(f"LRN needs an [N, C, ...] input, not {list(x)}")
    size = int(ctx.node.attrs["size"])
    # The channel axis is padded by size - 1 and summed over size shifted windows.
    padded = (x[0], x[1] + max(size - 1, 0), *x[2:])
    return OpCost((padded, x), 2 * numel(x) * max(size, 1))


@_guard(*READING_OPS)
def _reading(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    # Small outputs of a large input: nothing is created, but the whole input is read, and
    # thousands of such nodes on one large tensor would take hours.
    x = _shape(ins[0])
    return OpCost((), numel(x), work_shape=x)


@_guard("Concat")
def _concat(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    shapes = [_shape(t) for t in ins if t is not None]
    if not shapes:
        raise ValueError("Concat needs at least one input")
    axis = normalized_axis(int(ctx.node.attrs["axis"]), len(shapes[0]))
    out = list(shapes[0])
    out[axis] = sum(s[axis] if len(s) > axis else 0 for s in shapes)
    return OpCost((tuple(out),))


@_guard("Expand")
def _expand(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    return OpCost((broadcast_shapes(_shape(ins[0]), ints(ins[1])),))


@_guard("Tile")
def _tile(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x, repeats = _shape(ins[0]), ints(ins[1])
    if len(repeats) < len(x):
        raise ValueError(f"Tile repeats {repeats} do not cover the input's {len(x)} axes")
    x = (1,) * (len(repeats) - len(x)) + x
    return OpCost((tuple(max(s * r, 0) for s, r in zip(x, repeats, strict=True)),))


@_guard("Pad")
def _pad(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x = _shape(ins[0])
    full = pad_widths(ctx.node.attrs, ins, len(x))
    return OpCost((tuple(padded_sizes(x, full)),))


@_guard("Resize")
def _resize(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x = list(_shape(ins[0]))
    axes, sizes, _ = resize_plan(ctx.node.attrs, ins, x)
    # One axis is resized at a time; an early upscale followed by a downscale makes an
    # intermediate larger than the output, so each step is a created tensor.
    steps: list[Shape] = []
    for axis, size in zip(axes, sizes, strict=True):
        x[axis] = max(size, 0)
        steps.append(tuple(x))
    return OpCost(tuple(steps) or (tuple(x),))


@_guard("Range")
def _range(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    start, limit, delta = (float(scalar(required(t))) for t in ins[:3])
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        raise ValueError(f"Range({start}, {limit}, {delta}) is not a finite range")
    return OpCost(((max(0, math.ceil((limit - start) / delta)),),))


@_guard("ConstantOfShape")
def _constant_of_shape(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    shape = ints(ins[0])
    if any(d < 0 for d in shape):
        raise ValueError(f"ConstantOfShape shape {shape} has a negative dimension")
    return OpCost((tuple(shape),))


@_guard("OneHot")
def _one_hot(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    indices = _shape(ins[0])
    depth = int(scalar(required(ins[1])))
    if depth < 0:
        raise ValueError(f"OneHot depth {depth} is negative")
    rank = len(indices) + 1
    axis = normalized_axis(int(ctx.node.attrs.get("axis", -1)), rank)
    out = (*indices[:axis], depth, *indices[axis:])
    # F.one_hot makes an int64 tensor, then a mask, then the output: count the three.
    return OpCost((out, out, out))


@_guard("Gather")
def _gather(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    data, indices = _shape(ins[0]), _shape(ins[1])
    axis = normalized_axis(int(ctx.node.attrs.get("axis", 0)), len(data))
    return OpCost(((*data[:axis], *indices, *data[axis + 1 :]),))


@_guard("GatherND")
def _gather_nd(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    data, indices = _shape(ins[0]), _shape(ins[1])
    if not indices or indices[-1] > len(data):
        raise ValueError(f"GatherND indices {list(indices)} do not fit data {list(data)}")
    return OpCost(((*indices[:-1], *data[indices[-1] :]),))


@_guard("NonZero")
def _nonzero(ctx: OpContext, ins: list[Tensor | None]) -> OpCost:
    x = _shape(ins[0])
    # At most every element is non-zero; the result holds one coordinate per axis.
    return OpCost(((max(len(x), 1), numel(x)),))
