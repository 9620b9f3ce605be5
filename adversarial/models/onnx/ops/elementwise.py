"""Elementwise ops and activations."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from adversarial.models.onnx.ops.base import (
    OPS,
    OpContext,
    OpFn,
    OpSpec,
    normalized_axis,
    op,
    required,
)

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Abs": torch.abs,
    "Acos": torch.acos,
    "Acosh": torch.acosh,
    "Asin": torch.asin,
    "Asinh": torch.asinh,
    "Atan": torch.atan,
    "Atanh": torch.atanh,
    "Ceil": torch.ceil,
    "Cos": torch.cos,
    "Cosh": torch.cosh,
    "Erf": torch.erf,
    "Exp": torch.exp,
    "Floor": torch.floor,
    "Log": torch.log,
    "Neg": torch.neg,
    "Not": torch.logical_not,
    "Reciprocal": torch.reciprocal,
    "Relu": torch.relu,
    "Round": torch.round,  # half to even, as ONNX specifies
    "Sigmoid": torch.sigmoid,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Sinh": torch.sinh,
    "Softsign": F.softsign,
    "Sqrt": torch.sqrt,
    "Tan": torch.tan,
    "Tanh": torch.tanh,
    "IsNaN": torch.isnan,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
}


def _make_unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    def run(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
        return fn(required(ins[0]))

    return run


for _name, _fn in _UNARY.items():
    OPS[_name] = OpSpec(fn=_make_unary(_fn))
del _name, _fn


def _int_div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _int_div,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


def _make_binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
        return fn(required(ins[0]), required(ins[1]))

    return run


for _name, _fn2 in _BINARY.items():
    OPS[_name] = OpSpec(fn=_make_binary(_fn2))
del _name, _fn2

# The two-input ops above broadcast their inputs (the executor guards their output size).
BINARY_OPS = tuple(_BINARY)


def _constant_placeholder(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    raise AssertionError("Constant nodes are turned into buffers when the module is built")


OPS["Constant"] = OpSpec(fn=_constant_placeholder)


@op("Identity", "Dropout")
def _identity(ctx: OpContext, ins: list[Tensor | None]) -> list[Tensor]:
    x = required(ins[0])
    if ctx.node.op_type == "Dropout" and len(ctx.node.outputs) > 1:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return [x]


@op("Mod")
def _mod(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    a, b = required(ins[0]), required(ins[1])
    if ctx.node.attrs.get("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


@op("Pow")
def _pow(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    base, exponent = required(ins[0]), required(ins[1])
    if base.is_floating_point() and exponent.dtype != base.dtype:
        exponent = exponent.to(base.dtype)
    out = torch.pow(base, exponent)
    return out if out.dtype == base.dtype else out.to(base.dtype)


@op("IsInf")
def _isinf(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    neg = ctx.node.attrs.get("detect_negative", 1)
    pos = ctx.node.attrs.get("detect_positive", 1)
    if neg and pos:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
        present = [t for t in ins if t is not None]
        out = present[0]
        for t in present[1:]:
            out = fn(out, t)
        if ctx.node.op_type == "Mean":
            out = out / len(present)
        return out

    return run


OPS["Max"] = OpSpec(fn=_variadic(torch.maximum))
OPS["Min"] = OpSpec(fn=_variadic(torch.minimum))
OPS["Sum"] = OpSpec(fn=_variadic(torch.add))
OPS["Mean"] = OpSpec(fn=_variadic(torch.add))


@op("Where")
def _where(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return torch.where(required(ins[0]).bool(), required(ins[1]), required(ins[2]))


@op("Clip")
def _clip(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    attrs = ctx.node.attrs
    bounds: list[Tensor | None] = []
    # Opset < 11 gives the bounds as attributes, later opsets as optional inputs.
    for position, name in ((1, "min"), (2, "max")):
        given = ins[position] if len(ins) > position else None
        if given is not None and given.numel() > 0:
            bounds.append(given.reshape(()).to(x.dtype))
        elif name in attrs:
            bounds.append(torch.tensor(float(attrs[name]), dtype=x.dtype, device=x.device))
        else:
            bounds.append(None)
    if bounds[0] is None and bounds[1] is None:
        return x
    return torch.clamp(x, bounds[0], bounds[1])


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


@op("LeakyRelu")
def _leaky_relu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return F.leaky_relu(required(ins[0]), float(ctx.node.attrs.get("alpha", 0.01)))


@op("PRelu")
def _prelu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x, slope = required(ins[0]), required(ins[1])
    return torch.where(x > 0, x, x * slope)


@op("Elu")
def _elu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return F.elu(required(ins[0]), float(ctx.node.attrs.get("alpha", 1.0)))


@op("Celu")
def _celu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return F.celu(required(ins[0]), float(ctx.node.attrs.get("alpha", 1.0)))


@op("Selu")
def _selu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    alpha = float(ctx.node.attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(ctx.node.attrs.get("gamma", 1.05070102214813232421875))
    return gamma * F.elu(required(ins[0]), alpha)


@op("ThresholdedRelu")
def _thresholded_relu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    return torch.where(x > float(ctx.node.attrs.get("alpha", 1.0)), x, torch.zeros_like(x))


@op("HardSigmoid")
def _hard_sigmoid(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    alpha = float(ctx.node.attrs.get("alpha", 0.2))
    beta = float(ctx.node.attrs.get("beta", 0.5))
    return torch.clamp(required(ins[0]) * alpha + beta, 0.0, 1.0)


@op("Softplus")
def _softplus(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    # ONNX is log(exp(x) + 1) exactly; F.softplus's linear tail above 20 is within 2e-9 of it.
    return F.softplus(required(ins[0]))


@op("Gelu")
def _gelu(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    return F.gelu(required(ins[0]), approximate=str(ctx.node.attrs.get("approximate", "none")))


def _coerce_2d(x: Tensor, axis: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    # Before opset 13 Softmax-like ops flattened the input to 2-D at ``axis``.
    axis = normalized_axis(axis, x.dim())
    outer = math.prod(x.shape[:axis])
    return fn(x.reshape(outer, -1)).reshape(x.shape)


@op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(ctx: OpContext, ins: list[Tensor | None]) -> Tensor:
    x = required(ins[0])
    op = ctx.node.op_type

    def apply(t: Tensor, dim: int) -> Tensor:
        if op == "Softmax":
            return torch.softmax(t, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(t, dim)
        return F.one_hot(t.argmax(dim), t.shape[dim]).movedim(-1, dim).to(t.dtype)

    if ctx.opset < 13:
        return _coerce_2d(x, int(ctx.node.attrs.get("axis", 1)), lambda t: apply(t, 1))
    return apply(x, normalized_axis(int(ctx.node.attrs.get("axis", -1)), x.dim()))
