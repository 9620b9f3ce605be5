"""Output shapes and FLOPs of ONNX ops, computed from input shapes alone (no tensors).

The static budget (from ONNX shape inference) and the executor's run-time guards both use
these, so the two agree on what an op costs. FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Shape = tuple[int, ...]

# Ops whose output is smaller than their input but whose work is the input's size.
READING_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ArgMax",
        "ArgMin",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "TopK",
    }
)


def numel(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


def broadcast_shapes(*shapes: Sequence[int]) -> Shape:
    """The numpy-style broadcast of ``shapes``; ValueError when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        padded = [1] * (rank - len(shape)) + [int(d) for d in shape]
        for i, size in enumerate(padded):
            if size == out[i] or size == 1:
                continue
            if out[i] != 1:
                raise ValueError(f"shapes {[list(s) for s in shapes]} do not broadcast")
            out[i] = size
    return tuple(out)


def matmul_cost(a: Sequence[int], b: Sequence[int]) -> tuple[Shape, int]:
    """Output shape and FLOPs of ``numpy.matmul`` of shapes ``a`` and ``b``."""
    if not a or not b:
        raise ValueError("MatMul inputs must have at least one dimension")
    a_matrix = [1, a[0]] if len(a) == 1 else list(a[-2:])
    b_matrix = [b[0], 1] if len(b) == 1 else list(b[-2:])
    batch = broadcast_shapes(a[:-2], b[:-2])
    rows, inner, cols = a_matrix[0], a_matrix[1], b_matrix[1]
    out = list(batch)
    if len(a) > 1:
        out.append(rows)
    if len(b) > 1:
        out.append(cols)
    return tuple(out), 2 * numel(batch) * rows * inner * cols


def gemm_cost(
    a: Sequence[int], b: Sequence[int], c: Sequence[int] | None, trans_a: bool, trans_b: bool
) -> tuple[Shape, int]:
    """Output shape and FLOPs of ``Gemm`` (``c`` broadcast onto the product, as torch does)."""
    if len(a) != 2 or len(b) != 2:
        raise ValueError("Gemm inputs must be matrices")
    rows, inner = (a[1], a[0]) if trans_a else (a[0], a[1])
    cols = b[0] if trans_b else b[1]
    out: Shape = (rows, cols)
    if c is not None:
        out = broadcast_shapes(out, c)
    return out, 2 * rows * inner * cols


def einsum_cost(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[Shape, int]:
    """Output shape and FLOPs (2 per product term) of ``torch.einsum(equation, ...)``."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"Einsum equation {equation!r} has {len(terms)} operands")
    sizes: dict[str, int] = {}
    ellipses: list[Sequence[int]] = []
    counts: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        before, dots, after = term.partition("...")
        if dots:
            explicit = len(before) + len(after)
            if len(shape) < explicit:
                raise ValueError(f"Einsum term {term!r} does not fit shape {list(shape)}")
            ellipses.append(shape[len(before) : len(shape) - len(after)])
            letters = list(before) + list(after)
            dims = list(shape[: len(before)]) + list(shape[len(shape) - len(after) :])
        else:
            if len(term) != len(shape):
                raise ValueError(f"Einsum term {term!r} does not fit shape {list(shape)}")
            letters, dims = list(term), list(shape)
        for letter, size in zip(letters, dims, strict=True):
            counts[letter] = counts.get(letter, 0) + 1
            known = sizes.get(letter, 1)
            if known not in (1, size) and size != 1:
                raise ValueError(f"Einsum label {letter!r} has sizes {known} and {size}")
            sizes[letter] = max(known, int(size))
    ellipsis = broadcast_shapes(*ellipses) if ellipses else ()
    if arrow:
        before, dots, after = rhs.partition("...")
        out_letters, out_ellipsis = list(before) + list(after), bool(dots)
        unknown = [letter for letter in out_letters if letter not in sizes]
        if unknown:
            raise ValueError(f"Einsum output labels {unknown} appear in no operand")
        out = tuple([sizes[c] for c in before] + (list(ellipsis) if out_ellipsis else [])) + tuple(
            sizes[c] for c in after
        )
    else:
        out = tuple(ellipsis) + tuple(sizes[c] for c in sorted(sizes) if counts[c] == 1)
    return out, 2 * numel(ellipsis) * numel(list(sizes.values()))


def same_pads(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    mode: str,
) -> list[int]:
    """ONNX-ordered pads [b1..bn, e1..en] of ``auto_pad`` SAME_UPPER / SAME_LOWER."""
    begins: list[int] = []
    ends: list[int] = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def window_params(
    attrs: Mapping[str, Any], in_sizes: Sequence[int], kernel: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and ONNX-ordered pads [b1, b2, ..., e1, e2, ...] for a window op."""
    n = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = same_pads(in_sizes, kernel, strides, dilations, auto_pad)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = [int(p) for p in attrs.get("pads", [0] * (2 * n))]
    return strides, dilations, pads


def window_output_sizes(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    *,
    ceil_mode: bool = False,
) -> list[int]:
    """Spatial output sizes of a convolution or pooling window (an upper bound in ceil mode)."""
    n = len(kernel)
    sizes = []
    for i in range(n):
        span = in_sizes[i] + pads[i] + pads[i + n] - ((kernel[i] - 1) * dilations[i] + 1)
        steps = -(-span // strides[i]) if ceil_mode else span // strides[i]
        sizes.append(max(steps + 1, 0))
    return sizes


def padded_sizes(in_sizes: Sequence[int], pads: Sequence[int]) -> list[int]:
    """``in_sizes`` grown by ONNX-ordered ``pads`` (negative pads crop)."""
    n = len(in_sizes)
    return [max(in_sizes[i] + pads[i] + pads[i + n], 0) for i in range(n)]


@dataclass(frozen=True)
class ConvTransposeGeometry:
    """How a ConvTranspose output is made: the full output, then pads cropped from it."""

    strides: list[int]
    dilations: list[int]
    output_padding: list[int]
    # Spatial sizes of the full (unpadded) output, output_padding included.
    full: list[int]
    # ONNX-ordered crops applied to ``full`` (negative values grow it).
    pads: list[int]

    @property
    def out_sizes(self) -> list[int]:
        """Spatial sizes of the final output."""
        return padded_sizes(self.full, [-p for p in self.pads])


def conv_transpose_geometry(
    attrs: Mapping[str, Any], in_sizes: Sequence[int], kernel: Sequence[int]
) -> ConvTransposeGeometry:
    """The ONNX ConvTranspose output geometry, covering output_shape, auto_pad and pads."""
    n = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    output_padding = [int(p) for p in attrs.get("output_padding", [0] * n)]
    full = [
        s * (i - 1) + (k - 1) * d + 1 + extra
        for i, k, s, d, extra in zip(
            in_sizes, kernel, strides, dilations, output_padding, strict=True
        )
    ]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            target = [int(v) for v in attrs["output_shape"]][-n:]
        else:
            target = [i * s for i, s in zip(in_sizes, strides, strict=True)]
        totals = [f - t for f, t in zip(full, target, strict=True)]
        if auto_pad == "SAME_UPPER":
            begins = [t // 2 for t in totals]
        else:
            begins = [t - t // 2 for t in totals]
        ends = [t - bg for t, bg in zip(totals, begins, strict=True)]
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = [int(p) for p in attrs.get("pads", [0] * (2 * n))]
    return ConvTransposeGeometry(strides, dilations, output_padding, full, pads)
