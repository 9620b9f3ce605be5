"""The executor: :class:`OnnxGraphModule`, an ``nn.Module`` that replays a checked graph."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adversarial.errors import ModelFormatError
from adversarial.models.onnx.ops import OPS
from adversarial.models.onnx.ops.base import Node, OpContext, OpSpec

# Constants up to this many elements get a host copy (shape vectors, axes, indices, scales).
HOST_CONST_MAX_ELEMENTS = 4096


def move_to_common_device(ins: list[Tensor | None], host: frozenset[int]) -> list[Tensor | None]:
    """Copy host inputs to the accelerator the other inputs are on, except positions ``host``."""
    device = None
    for i, t in enumerate(ins):
        if t is not None and i not in host and t.device.type != "cpu":
            device = t.device
            break
    if device is None:
        return ins
    return [
        t.to(device) if t is not None and i not in host and t.device != device else t
        for i, t in enumerate(ins)
    ]


class OnnxGraphModule(nn.Module):
    """An ONNX graph replayed with torch ops; ``forward(x)`` returns the graph's first output.

    Build it with :func:`load_onnx`. The graph is always evaluated in inference mode.
    """

    def __init__(
        self,
        *,
        nodes: list[Node],
        constants: dict[str, Tensor],
        input_name: str,
        input_dtype: torch.dtype,
        output_name: str,
        opset: int,
        export_batch: int | None,
    ) -> None:
        super().__init__()
        self._nodes = nodes
        self._input_name = input_name
        self._input_dtype = input_dtype
        self._output_name = output_name
        self._opset = opset
        self._export_batch = export_batch
        self._buffer_of: dict[str, str] = {}
        # Host (CPU) copies of small constants: integer ones feed shape arithmetic by default;
        # any of them is what an op reads as Python values (Resize scales, Pad value), so no
        # device round trip is needed. They are read-only copies that .to() does not move.
        self._host_copy: dict[str, Tensor] = {}
        self._host_default: set[str] = set()
        for i, (name, tensor) in enumerate(constants.items()):
            buffer_name = f"const_{i}"
            self.register_buffer(buffer_name, tensor)
            self._buffer_of[name] = buffer_name
            if tensor.numel() <= HOST_CONST_MAX_ELEMENTS:
                self._host_copy[name] = tensor.clone()
                if not tensor.is_floating_point() and not tensor.is_complex():
                    self._host_default.add(name)

    @property
    def opset(self) -> int:
        """The ai.onnx opset version the graph was exported with."""
        return self._opset

    @property
    def input_name(self) -> str:
        """Name of the graph input ``forward`` feeds."""
        return self._input_name

    def extra_repr(self) -> str:
        return f"nodes={len(self._nodes)}, opset={self._opset}, input={self._input_name!r}"

    def _lookup(
        self, env: dict[str, Tensor], node: Node, position: int, name: str, spec: OpSpec
    ) -> Tensor | None:
        if not name:
            return None
        if position in spec.host_inputs and name in self._host_copy:
            return self._host_copy[name]
        value = env.get(name)
        if value is None:
            # The checker guarantees every input is produced; only an optional output this
            # interpreter does not compute (e.g. training-mode statistics) can be missing.
            raise ModelFormatError(
                "unsupported_op",
                f"ONNX node {node.name!r} ({node.op_type}) reads {name!r}, an optional output "
                "this interpreter does not compute",
            )
        return value

    def forward(self, x: Tensor) -> Tensor:
        """Run the graph on ``x`` (``[N, ...]``) and return its first output."""
        in_dtype = x.dtype
        if x.dtype != self._input_dtype:
            x = x.to(self._input_dtype)
        env: dict[str, Tensor] = {}
        for name, buffer_name in self._buffer_of.items():
            if name in self._host_default:
                env[name] = self._host_copy[name]
            else:
                env[name] = getattr(self, buffer_name)
        env[self._input_name] = x
        ctx = OpContext(
            opset=self._opset,
            batch=int(x.shape[0]) if x.dim() > 0 else 1,
            export_batch=self._export_batch,
        )
        for node in self._nodes:
            spec = OPS[node.op_type]
            ins = [self._lookup(env, node, i, name, spec) for i, name in enumerate(node.inputs)]
            ins = move_to_common_device(ins, spec.host_inputs)
            ctx.node = node
            try:
                result = spec.fn(ctx, ins)
            except ModelFormatError:
                raise
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                shapes = [tuple(t.shape) if t is not None else None for t in ins]
                raise ModelFormatError(
                    "onnx_invalid",
                    f"ONNX node {node.name or '(unnamed)'!r} ({node.op_type}) failed on input "
                    f"shapes {shapes}: {exc}",
                ) from exc
            outs = [result] if isinstance(result, Tensor) else list(result)
            for name, value in zip(node.outputs, outs, strict=False):
                if name and value is not None:
                    env[name] = value
        out = env.get(self._output_name)
        if out is None:
            raise ModelFormatError(
                "unsupported_op", f"ONNX graph output {self._output_name!r} was not computed"
            )
        if out.device != x.device:
            out = out.to(x.device)
        if out.is_floating_point() and in_dtype.is_floating_point and out.dtype != in_dtype:
            out = out.to(in_dtype)
        return out
