"""Reductions, arg-extremes, TopK and CumSum."""

from __future__ import annotations

import torch
from torch import Tensor

from adversarial.models.onnx.ops.base import (
    OPS,
    OpContext,
    OpFn,
    OpSpec,
    axes_from,
    ints,
    normalized_axis,
    op,
    required,
)


def _reduce(kind: str) -> OpFn:
    def run(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
        x = required(ins[0])
        keepdims = bool(ctx.node.attrs.get("keepdims", 1))
        axes = axes_from(ctx, ins, 1)
        if not axes:
            if ctx.node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted({normalized_axis(a, x.dim()) for a in axes}))
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keepdims)
        if kind == "sum":
            return x.sum(dim=dims, keepdim=keepdims)
        if kind == "max":
            return x.amax(dim=dims, keepdim=keepdims)
        if kind == "min":
            return x.amin(dim=dims, keepdim=keepdims)
        if kind == "prod":
            out = x
            for d in reversed(dims):
                out = out.prod(dim=d, keepdim=keepdims)
            return out
        if kind == "l1":
            return x.abs().sum(dim=dims, keepdim=keepdims)
        if kind == "l2":
            return (x * x).sum(dim=dims, keepdim=keepdims).sqrt()
        if kind == "sumsquare":
            return (x * x).sum(dim=dims, keepdim=keepdims)
        if kind == "logsum":
            return x.sum(dim=dims, keepdim=keepdims).log()
        return torch.logsumexp(x, dim=dims, keepdim=keepdims)

    return run


for _name, _kind in {
    "ReduceMean": "mean",
    "ReduceSum": "sum",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceProd": "prod",
    "ReduceL1": "l1",
    "ReduceL2": "l2",
    "ReduceSumSquare": "sumsquare",
    "ReduceLogSum": "logsum",
    "ReduceLogSumExp": "logsumexp",
}.items():
    OPS[_name] = OpSpec(fn=_reduce(_kind), host_inputs=frozenset({1}))
del _name, _kind


@op("ArgMax", "ArgMin")
def _arg_extreme(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    axis = normalized_axis(int(ctx.node.attrs.get("axis", 0)), x.dim())
    keepdims = bool(ctx.node.attrs.get("keepdims", 1))
    fn = torch.argmax if ctx.node.op_type == "ArgMax" else torch.argmin
    if ctx.node.attrs.get("select_last_index", 0):
        return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keepdims)
    return fn(x, dim=axis, keepdim=keepdims)


@op("TopK", host=(1,))
def _topk(ctx: OpContext, ins: list[Tensor | None]) -> list[Tensor]:
    x = required(ins[0])
    k = ints(ins[1])[0]
    axis = normalized_axis(int(ctx.node.attrs.get("axis", -1)), x.dim())
    largest = bool(ctx.node.attrs.get("largest", 1))
    values, indices = torch.topk(x, k, dim=axis, largest=largest, sorted=True)
    return [values, indices]


@op("CumSum", host=(1,))
def _cumsum(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    axis = normalized_axis(ints(ins[1])[0], x.dim())
    reverse = bool(ctx.node.attrs.get("reverse", 0))
    exclusive = bool(ctx.node.attrs.get("exclusive", 0))
    if reverse:
        x = x.flip(axis)
    out = torch.cumsum(x, dim=axis)
    if exclusive:
        out = out - x
    return out.flip(axis) if reverse else out
