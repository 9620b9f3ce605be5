"""What every op implementation shares: the registry, the per-call context and argument helpers.

An op implementation is ``fn(ctx, inputs) -> output(s)``: ``inputs`` are the node's inputs in
order (None for an omitted optional one), ``ctx`` holds the node (its attributes) and the facts
of the current call. :func:`op` registers an implementation under one or more ONNX op names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

# Shape-like inputs (shapes, axes, pads, repeats) read as Python values hold at most this many
# values: real ranks are below 10 and pads twice that; Split sizes are the longest ones.
MAX_VALUES_READ = 4096


@dataclass(frozen=True)
class Node:
    """One graph node as the executor runs it: op, names of its inputs/outputs, decoded attrs."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    # Whether the first input is computed from the graph input (rather than from constants).
    first_input_from_x: bool = False


@dataclass
class OpContext:
    """Per-call facts some ops need (current and export batch size, opset)."""

    opset: int
    batch: int
    export_batch: int | None
    node: Node = field(init=False)


OpFn = Callable[[OpContext, list[Tensor | None]], "Tensor | Sequence[Tensor | None]"]


@dataclass(frozen=True)
class OpSpec:
    """A registered op: its implementation and the inputs it reads as Python values."""

    fn: OpFn
    # Input positions read as Python values (shapes, axes, pads): left where they are (usually
    # on the host) instead of being copied to the data's device.
    host_inputs: frozenset[int] = frozenset()


OPS: dict[str, OpSpec] = {}


def supported_ops() -> list[str]:
    """Names of the ai.onnx ops :func:`load_onnx` can run, sorted."""
    return sorted(OPS)


def op(*names: str, host: Sequence[int] = ()) -> Callable[[OpFn], OpFn]:
    """Register the decorated function as the implementation of the ops ``names``.

    ``host`` lists the input positions the op reads as Python values (shapes, axes, pads).
    """

    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = OpSpec(fn=fn, host_inputs=frozenset(host))
        return fn

    return register


def required(t: Tensor | None) -> Tensor:
    """``t``, or a ValueError when a required input is omitted."""
    if t is None:
        raise ValueError("a required input is missing")
    return t


def ints(t: Tensor | None) -> list[int]:
    """The values of an integer tensor as a flat list (empty for an omitted input).

    Only shape-like inputs (shapes, axes, pads, repeats, sizes) are read this way; a longer
    one than :data:`MAX_VALUES_READ` is refused instead of becoming a huge Python list.
    """
    if t is None:
        return []
    if t.numel() > MAX_VALUES_READ:
        raise ValueError(
            f"a shape-like input holds {t.numel()} values; at most {MAX_VALUES_READ} are read"
        )
    return [int(v) for v in t.reshape(-1).tolist()]


def scalar(t: Tensor | None, default: float | None = None) -> Any:
    """The first value of ``t`` as a Python number, or ``default`` for an omitted/empty one."""
    if t is None or t.numel() == 0:
        return default
    return t.reshape(-1)[0].item()


def normalized_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[0, rank)``, negative axes counted from the end; ValueError if out of range."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def axes_from(ctx: OpContext, ins: list[Tensor | None], index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (older opsets) or from input ``index`` (newer ones)."""
    if "axes" in ctx.node.attrs:
        return [int(v) for v in ctx.node.attrs["axes"]]
    if len(ins) > index and ins[index] is not None:
        return ints(ins[index])
    return None


def torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the last n dims -> F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out
