"""The executor: :class:`OnnxGraphModule`, an ``nn.Module`` that replays a checked graph.

Before each op runs, its run-time guard (:mod:`.guards`) says what it would create and
compute, and the pass is refused beyond the module's :class:`~.limits.OnnxLimits`; after it
runs, its outputs are added to the pass's activation total.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adversarial.errors import ModelFormatError
from adversarial.models.onnx.costs import numel
from adversarial.models.onnx.guards import GUARDS, VALUE_DEPENDENT, OpCost
from adversarial.models.onnx.limits import OnnxLimits, refuse
from adversarial.models.onnx.ops import OPS
from adversarial.models.onnx.ops.base import Node, OpContext, OpSpec
from adversarial.models.onnx.weights import GraphWeights

# Constants up to this many elements get a host copy (shape vectors, axes, indices, scales).
HOST_CONST_MAX_ELEMENTS = 4096

# Cached guard charges are dropped beyond this many (a few batch sizes times the nodes).
_CHARGE_CACHE_ENTRIES = 65_536


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


@dataclass(frozen=True)
class _Charge:
    """An op's cost as the budget counts it at one batch size (see :class:`_PassBudget`)."""

    cost: OpCost
    largest: float  # the largest tensor it creates, counted
    largest_shape: tuple[int, ...]
    created: float  # all tensors it creates, counted
    flops: float  # counted


class _PassBudget:
    """One forward pass's running totals, checked against the limits.

    Budgets are stated at ``limits.validation_batch``. On a larger batch a tensor whose first
    dimension is the batch is counted at ``validation_batch / batch`` of its size (its
    per-example size is what the static check saw), every other tensor at full size.
    """

    def __init__(self, limits: OnnxLimits, batch: int) -> None:
        self.limits = limits
        self.batch = batch
        self.scale = limits.validation_batch / batch if batch > limits.validation_batch else 1.0
        self.activations = 0.0
        self.flops = 0.0

    def _counted(self, shape: Sequence[int], amount: float) -> float:
        if self.scale < 1.0 and len(shape) > 0 and shape[0] == self.batch:
            return amount * self.scale
        return amount

    def _where(self, node: Node, shape: Sequence[int]) -> str:
        where = f"ONNX node {node.name!r} ({node.op_type}) at batch {self.batch}"
        if self._counted(shape, 1.0) < 1.0:
            where += f", scaled to the validation batch {self.limits.validation_batch},"
        return where

    def charge(self, cost: OpCost) -> _Charge:
        """``cost`` as counted at this pass's batch size (depends on nothing else)."""
        largest, created = 0.0, 0.0
        largest_shape: tuple[int, ...] = ()
        for shape in cost.shapes:
            counted = self._counted(shape, float(numel(shape)))
            if counted >= largest:
                largest, largest_shape = counted, shape
            created += counted
        flops = self._counted(cost.batch_shape, float(cost.flops)) if cost.flops else 0.0
        return _Charge(cost, largest, largest_shape, created, flops)

    def before(self, node: Node, charge: _Charge) -> None:
        """Refuse the op if what it is about to create or compute exceeds a budget."""
        limits = self.limits
        if charge.largest > limits.max_tensor_elements:
            shape = charge.largest_shape
            raise refuse(
                "max_tensor_elements",
                math.ceil(charge.largest),
                limits.max_tensor_elements,
                "elements",
                f"{self._where(node, shape)}: a tensor of shape {list(shape)}",
            )
        if self.activations + charge.created > limits.max_activation_elements:
            raise refuse(
                "max_activation_elements",
                math.ceil(self.activations + charge.created),
                limits.max_activation_elements,
                "elements",
                f"{self._where(node, charge.cost.batch_shape)}: the activations of the pass so far",
            )
        if charge.flops:
            self.flops += charge.flops
            allowed = limits.max_flops_per_example * limits.validation_batch
            if self.flops > allowed:
                raise refuse(
                    "max_flops_per_example",
                    math.ceil(self.flops / limits.validation_batch),
                    limits.max_flops_per_example,
                    "FLOPs per example",
                    f"{self._where(node, charge.cost.batch_shape)}: the pass so far",
                )

    def after(self, node: Node, outputs: Iterable[Tensor | None]) -> None:
        """Add the op's outputs to the pass's activations (they stay alive until it ends)."""
        scaled = self.scale < 1.0
        for value in outputs:
            if value is not None:
                elements = float(value.numel())
                if scaled and value.dim() > 0 and value.shape[0] == self.batch:
                    elements *= self.scale
                self.activations += elements
        if self.activations > self.limits.max_activation_elements:
            raise refuse(
                "max_activation_elements",
                math.ceil(self.activations),
                self.limits.max_activation_elements,
                "elements",
                f"ONNX node {node.name!r} ({node.op_type}) at batch {self.batch}: the "
                "activations of the pass so far",
            )


class OnnxGraphModule(nn.Module):
    """An ONNX graph replayed with torch ops; ``forward(x)`` returns the graph's first output.

    Build it with :func:`~adversarial.models.onnx.load_onnx`. The graph is always evaluated in
    inference mode (BatchNormalization uses its running statistics, Dropout is the identity),
    also while fine-tuning: :meth:`make_trainable` turns weights into parameters and changes
    nothing else. Every pass is checked against :attr:`limits` (see :mod:`.guards`).
    """

    def __init__(
        self,
        *,
        nodes: list[Node],
        constants: dict[str, Tensor],
        initializer_names: Iterable[str],
        input_name: str,
        input_dtype: torch.dtype,
        output_name: str,
        opset: int,
        export_batch: int | None,
        limits: OnnxLimits,
    ) -> None:
        super().__init__()
        self._nodes = nodes
        self._input_name = input_name
        self._input_dtype = input_dtype
        self._output_name = output_name
        self._opset = opset
        self._export_batch = export_batch
        self._limits = limits
        self._initializer_names = [name for name in initializer_names if name in constants]
        self._weights = GraphWeights(nodes, self._initializer_names)
        # Charges of shape-only guards by (node index, batch, input shapes): a pass at a batch
        # size seen before pays a dict lookup per node instead of the shape arithmetic.
        self._charge_cache: dict[tuple[int, int, tuple[tuple[int, ...] | None, ...]], _Charge] = {}
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

    @property
    def limits(self) -> OnnxLimits:
        """The budgets every forward pass is checked against."""
        return self._limits

    def extra_repr(self) -> str:
        return f"nodes={len(self._nodes)}, opset={self._opset}, input={self._input_name!r}"

    # --- initializers and fine-tuning --------------------------------------------------------

    def initializers(self) -> dict[str, Tensor]:
        """The current value of each graph initializer, by ONNX name, in graph order.

        These are the dense ``graph.initializer`` entries (sparse initializers are constants
        here: not listed, not trainable, never exported back). The tensors are the module's own
        buffers or parameters, not copies.
        """
        return {name: getattr(self, self._buffer_of[name]) for name in self._initializer_names}

    def trainable_initializers(self) -> list[str]:
        """Initializers :meth:`make_trainable` accepts, in graph order.

        Those that are floating point, consumed as weights (a Conv/ConvTranspose weight or
        bias, a Gemm/MatMul/Einsum operand, a normalisation scale or bias, an Add or Mul
        operand, a PRelu slope, a Gather table; directly or through Identity, Cast, Transpose,
        Reshape, Squeeze, Unsqueeze or Flatten), and never read as Python values (shapes,
        scales, pads). BatchNormalization running statistics are not weights.
        """
        host_inputs = {name: spec.host_inputs for name, spec in OPS.items()}
        weights = self._weights.weights(host_inputs)
        return [
            name
            for name, tensor in self.initializers().items()
            if tensor.is_floating_point() and name in weights
        ]

    def make_trainable(self, names: Iterable[str] | None = None) -> list[nn.Parameter]:
        """Turn the initializers ``names`` (all trainable ones when None) into parameters.

        The forward pass is unchanged (same values, same ops); gradients now reach these
        tensors and an optimizer can update them. Calling it again for a name returns the same
        parameter. Returns the parameters in the order of ``names`` (graph order for None).

        Raises:
            ModelFormatError: ``onnx_not_trainable`` for a name that is not one of
                :meth:`trainable_initializers` (the message says why).
        """
        allowed = self.trainable_initializers()
        wanted = allowed if names is None else list(dict.fromkeys(names))
        refused = [name for name in wanted if name not in allowed]
        if refused:
            known = set(self._initializer_names)
            reasons = [
                f"{name!r} ({'not a weight' if name in known else 'no such initializer'})"
                for name in refused
            ]
            raise ModelFormatError(
                "onnx_not_trainable",
                f"ONNX initializers {', '.join(reasons)} cannot be trained; trainable: "
                + (", ".join(repr(name) for name in allowed) or "none"),
            )
        parameters: list[nn.Parameter] = []
        for name in wanted:
            attribute = self._buffer_of[name]
            current = getattr(self, attribute)
            if not isinstance(current, nn.Parameter):
                delattr(self, attribute)
                current = nn.Parameter(current.detach().clone(), requires_grad=True)
                self.register_parameter(attribute, current)
                # A parameter is read from the module only; a stale host copy must not exist.
                self._host_copy.pop(name, None)
            parameters.append(current)
        return parameters

    def last_layer_initializers(self) -> list[str]:
        """The trainable initializers of the graph's final weight-bearing layer.

        That is the last Gemm, MatMul, Conv, ConvTranspose or Einsum (in topological order)
        that the output depends on and that has a trainable initializer, with the bias of an
        ``Add`` that directly consumes its output. Typically a classifier's final Linear
        layer: ``[weight, bias]``.

        Raises:
            ModelFormatError: ``onnx_not_trainable`` when the graph has no such layer.
        """
        names = self._weights.last_layer(self._output_name, set(self.trainable_initializers()))
        if not names:
            raise ModelFormatError(
                "onnx_not_trainable",
                "The ONNX graph has no Gemm, MatMul, Conv, ConvTranspose or Einsum layer with "
                "trainable initializers before its output",
            )
        return names

    # --- execution ---------------------------------------------------------------------------

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

    def _charge(
        self, index: int, node: Node, ctx: OpContext, ins: list[Tensor | None], budget: _PassBudget
    ) -> _Charge | None:
        """What the node is about to create and compute (None for ops that cannot grow)."""
        guard = GUARDS.get(node.op_type)
        if guard is None:
            return None
        if node.op_type in VALUE_DEPENDENT:
            return budget.charge(guard(ctx, ins))
        key = (index, ctx.batch, tuple(None if t is None else tuple(t.shape) for t in ins))
        charge = self._charge_cache.get(key)
        if charge is None:
            if len(self._charge_cache) > _CHARGE_CACHE_ENTRIES:
                self._charge_cache.clear()
            charge = self._charge_cache[key] = budget.charge(guard(ctx, ins))
        return charge

    def forward(self, x: Tensor) -> Tensor:
        """Run the graph on ``x`` (``[N, ...]``) and return its first output.

        Raises:
            ModelFormatError: ``onnx_invalid`` when a node fails on these inputs,
                ``unsupported_op`` for an output this interpreter does not compute, and
                ``model_too_large`` (:class:`~adversarial.errors.ModelTooLargeError`) before
                a node that would exceed a budget of :attr:`limits`.
        """
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
        batch = int(x.shape[0]) if x.dim() > 0 else 1
        ctx = OpContext(opset=self._opset, batch=batch, export_batch=self._export_batch)
        budget = _PassBudget(self._limits, batch)
        for index, node in enumerate(self._nodes):
            spec = OPS[node.op_type]
            ins = [self._lookup(env, node, i, name, spec) for i, name in enumerate(node.inputs)]
            ins = move_to_common_device(ins, spec.host_inputs)
            ctx.node = node
            try:
                charge = self._charge(index, node, ctx, ins, budget)
                if charge is not None:
                    budget.before(node, charge)
                result = spec.fn(ctx, ins)
            except ModelFormatError:
                raise
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError, ArithmeticError) as exc:
                shapes = [tuple(t.shape) if t is not None else None for t in ins]
                raise ModelFormatError(
                    "onnx_invalid",
                    f"ONNX node {node.name or '(unnamed)'!r} ({node.op_type}) failed on input "
                    f"shapes {shapes}: {exc}",
                ) from exc
            outs = [result] if isinstance(result, Tensor) else list(result)
            budget.after(node, outs)
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
