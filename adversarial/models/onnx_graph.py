"""A pure-PyTorch interpreter for ONNX classifier graphs.

White-box attacks need input gradients, and an uploaded ONNX file is only data: this module
parses it with ``onnx`` (no code from the file is ever executed, nothing is unpickled) and
replays its nodes with differentiable torch ops, so ``loss.backward()`` reaches the input.

Scope and conventions:

* Default-domain (``ai.onnx``) opsets ``MIN_OPSET``..``MAX_OPSET`` (11..22) are accepted.
  Opsets 13..20 are tested against ``torch.onnx.export`` (TorchScript and dynamo exporters);
  11, 13..15 and 17..22 with hand-built graphs against ``onnx.reference``. Both the attribute
  and the input form of ops that moved attributes to inputs (Clip, Split, Squeeze, Unsqueeze,
  Reduce*, Pad, Slice) are understood, and Softmax/LogSoftmax/Hardmax keep their pre-13
  "flatten to 2-D at axis" meaning in opsets 11 and 12. The supported ops are
  :func:`supported_ops`; anything else is refused at load time, naming the op.
* ``ai.onnx.ml`` graphs (scikit-learn via skl2onnx) are refused: they are not differentiable
  and run elsewhere as black-box targets. Other domains (custom ops) are refused, after local
  functions (which the dynamo exporter emits in ``pkg.*`` domains) have been inlined.
* Tensors stored as external data are refused: an upload is one self-contained file.
* Initializers and ``Constant`` nodes become buffers, so ``module.to(device)`` moves them.
  Small constants also keep a host (CPU) copy. Integer ones and ``Shape`` outputs are used from
  the host, so shape arithmetic (Shape, Gather, Concat, ...) runs on the CPU and ops that need
  Python values (Reshape targets, Slice bounds, Pad widths, Resize scales) read them without a
  device synchronisation; a host tensor is copied to the data's device when an op mixes the
  two.
* The graph is always run in inference mode: BatchNormalization uses its running statistics and
  Dropout is the identity whatever ``module.training`` says.
* Fixed-batch exports: when the graph input's first dimension is a fixed number B (an export
  without a dynamic batch axis) and the module is called with another batch size N, a Reshape
  whose data is computed from the input, has N leading rows and whose target's first entry is
  the literal B gets N instead.
  That is the ``x.view(x.size(0), -1)`` pattern the TorchScript exporter constant-folds to
  ``Reshape(x, [1, -1])``. Other ops that bake the export batch into constants (Expand/Tile to a
  fixed shape, ...) are not rewritten: such graphs only run at their export batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.checker
import onnx.inliner
import torch
import torch.nn.functional as F
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from torch import Tensor, nn

from adversarial.errors import ModelFormatError

__all__ = ["MAX_OPSET", "MIN_OPSET", "OnnxGraphModule", "load_onnx", "supported_ops"]

MIN_OPSET = 11
MAX_OPSET = 22

_DEFAULT_DOMAINS = ("", "ai.onnx")
_ML_DOMAIN = "ai.onnx.ml"

# Constants up to this many elements get a host copy (shape vectors, axes, indices, scales).
_HOST_CONST_MAX_ELEMENTS = 4096
# Ops that build a tensor from shape *values* in the file (ConstantOfShape, Expand, Tile, ...)
# could otherwise ask for terabytes; 2**28 elements is 1 GiB of float32.
MAX_CREATED_ELEMENTS = 1 << 28

_ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
}


def _dtype_name(onnx_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(onnx_type))
    except ValueError:
        return f"type {onnx_type}"


def _torch_dtype(onnx_type: int) -> torch.dtype:
    try:
        return _ONNX_TO_TORCH_DTYPE[onnx_type]
    except KeyError:
        raise ModelFormatError(
            "unsupported_op",
            f"ONNX tensor element type {_dtype_name(onnx_type)} is not supported; supported: "
            + ", ".join(sorted(_dtype_name(t) for t in _ONNX_TO_TORCH_DTYPE)),
        ) from None


def _tensor_from_proto(proto: TensorProto) -> Tensor:
    dtype = _torch_dtype(proto.data_type)
    try:
        array = numpy_helper.to_array(proto)
    except Exception as exc:  # malformed raw_data length and the like
        raise ModelFormatError(
            "onnx_invalid", f"ONNX tensor {proto.name!r} cannot be decoded: {exc}"
        ) from exc
    if dtype == torch.bfloat16:
        # numpy has no bfloat16; onnx hands back an ml_dtypes array with the same bit layout.
        bits = np.ascontiguousarray(array).view(np.uint16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> Tensor:
    values = _tensor_from_proto(sparse.values)
    indices = _tensor_from_proto(sparse.indices).to(torch.int64)
    shape = [int(d) for d in sparse.dims]
    _check_size(math.prod(shape), "sparse tensor")
    dense = torch.zeros(math.prod(shape), dtype=values.dtype)
    if indices.dim() == 2:  # [NNZ, rank] coordinates -> linear positions
        strides = torch.tensor(
            [math.prod(shape[i + 1 :]) for i in range(len(shape))], dtype=torch.int64
        )
        indices = (indices * strides).sum(dim=1)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(shape)


# --------------------------------------------------------------------------------------------
# Static checks on the protobuf
# --------------------------------------------------------------------------------------------


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Sequence[AttributeProto]) -> Iterator[TensorProto]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _model_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node.attribute)


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graph_nodes(attr.g)
            for sub in attr.graphs:
                yield from _graph_nodes(sub)


def _check_external_data(model: onnx.ModelProto) -> None:
    for tensor in _model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ModelFormatError(
                "onnx_external_data",
                f"ONNX tensor {tensor.name!r} is stored as external data; upload a single "
                "self-contained .onnx file (onnx.save_model(..., save_as_external_data=False)); "
                "external data files are refused",
            )


def _check_domains(model: onnx.ModelProto) -> None:
    ml_ops: set[str] = set()
    unknown: set[str] = set()
    for node in _graph_nodes(model.graph):
        if node.domain in _DEFAULT_DOMAINS:
            continue
        if node.domain == _ML_DOMAIN:
            ml_ops.add(node.op_type)
        else:
            unknown.add(f"{node.op_type!r} (domain {node.domain!r})")
    if ml_ops:
        raise ModelFormatError(
            "onnx_ml_domain",
            f"ONNX graph uses the {_ML_DOMAIN} domain (ops: {', '.join(sorted(ml_ops))}), "
            "typically a scikit-learn model converted with skl2onnx; it cannot be "
            "differentiated; white-box audits need a neural network graph",
        )
    if unknown:
        raise ModelFormatError(
            "onnx_unknown_domain",
            f"ONNX graph uses ops outside the standard ai.onnx domain: {', '.join(sorted(unknown))}"
            "; custom operators are refused",
        )


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelFormatError("onnx_invalid", "ONNX model does not import the ai.onnx opset")
    opset = int(max(versions))
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelFormatError(
            "onnx_invalid",
            f"ONNX opset {opset} is not supported; export with an opset between {MIN_OPSET} and "
            f"{MAX_OPSET} (e.g. torch.onnx.export(..., opset_version=17))",
        )
    return opset


def _check_ops(model: onnx.ModelProto, opset: int) -> None:
    missing = sorted({n.op_type for n in _graph_nodes(model.graph) if n.op_type not in _OPS})
    if missing:
        names = ", ".join(repr(m) for m in missing)
        noun = "op" if len(missing) == 1 else "ops"
        verb = "is" if len(missing) == 1 else "are"
        raise ModelFormatError(
            "unsupported_op",
            f"ONNX {noun} {names} (domain ai.onnx, opset {opset}) {verb} not supported; "
            f"supported ops: {', '.join(supported_ops())}",
        )


# --------------------------------------------------------------------------------------------
# Graph representation and execution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    # Whether the first input is computed from the graph input (rather than from constants).
    first_input_from_x: bool = False


@dataclass
class _Ctx:
    """Per-call facts some ops need (current and export batch size, opset)."""

    opset: int
    batch: int
    export_batch: int | None
    node: _Node = field(init=False)


_OpFn = Callable[[_Ctx, list[Tensor | None]], "Tensor | Sequence[Tensor | None]"]


@dataclass(frozen=True)
class _OpSpec:
    fn: _OpFn
    # Input positions read as Python values (shapes, axes, pads): left where they are (usually
    # on the host) instead of being copied to the data's device.
    host_inputs: frozenset[int] = frozenset()


_OPS: dict[str, _OpSpec] = {}


def supported_ops() -> list[str]:
    """Names of the ai.onnx ops :func:`load_onnx` can run, sorted."""
    return sorted(_OPS)


def _attr_value(attr: AttributeProto) -> Any:
    if attr.type == AttributeProto.TENSOR:
        return _tensor_from_proto(attr.t)
    if attr.type == AttributeProto.SPARSE_TENSOR:
        return _sparse_to_dense(attr.sparse_tensor)
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        return None  # control flow ops are unsupported and refused before this matters
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
    return value


def _constant_value(node: onnx.NodeProto) -> Tensor:
    if len(node.attribute) != 1:
        raise ModelFormatError("onnx_invalid", f"Constant node {node.name!r} needs one attribute")
    attr = node.attribute[0]
    value = _attr_value(attr)
    if attr.name in ("value", "sparse_value"):
        return value  # type: ignore[no-any-return]
    if attr.name == "value_float":
        return torch.tensor(value, dtype=torch.float32)
    if attr.name == "value_floats":
        return torch.tensor(list(value), dtype=torch.float32)
    if attr.name == "value_int":
        return torch.tensor(value, dtype=torch.int64)
    if attr.name == "value_ints":
        return torch.tensor(list(value), dtype=torch.int64)
    raise ModelFormatError(
        "unsupported_op", f"Constant node {node.name!r}: attribute {attr.name!r} is not supported"
    )


def _move_to_common_device(ins: list[Tensor | None], host: frozenset[int]) -> list[Tensor | None]:
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
        nodes: list[_Node],
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
            if tensor.numel() <= _HOST_CONST_MAX_ELEMENTS:
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
        self, env: dict[str, Tensor], node: _Node, position: int, name: str, spec: _OpSpec
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
        ctx = _Ctx(
            opset=self._opset,
            batch=int(x.shape[0]) if x.dim() > 0 else 1,
            export_batch=self._export_batch,
        )
        for node in self._nodes:
            spec = _OPS[node.op_type]
            ins = [self._lookup(env, node, i, name, spec) for i, name in enumerate(node.inputs)]
            ins = _move_to_common_device(ins, spec.host_inputs)
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


def load_onnx(data: bytes, *, max_bytes: int | None = None) -> nn.Module:
    """Parse and check an ONNX classifier and return a differentiable torch module.

    ``forward(x)`` takes the single graph input as a float tensor ``[N, ...]`` and returns the
    first graph output. Raises :class:`~adversarial.errors.ModelFormatError` with code
    ``too_large``, ``onnx_invalid``, ``onnx_external_data``, ``onnx_ml_domain``,
    ``onnx_unknown_domain`` or ``unsupported_op``.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ModelFormatError(
            "too_large", f"ONNX file is {len(data)} bytes; the limit is {max_bytes} bytes"
        )
    try:
        model = onnx.ModelProto.FromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError and, on some inputs, others
        raise ModelFormatError("onnx_invalid", f"not a valid ONNX model: {exc}") from exc
    if not model.HasField("graph") or len(model.graph.output) == 0:
        raise ModelFormatError("onnx_invalid", "not a valid ONNX model: it has no graph outputs")

    _check_external_data(model)
    if len(model.functions) > 0:
        # The dynamo exporter wraps pieces in local functions of its own domains; inline them
        # so that only the ops they are made of are judged.
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise ModelFormatError(
                "onnx_invalid", f"ONNX local functions cannot be inlined: {exc}"
            ) from exc
    _check_domains(model)
    opset = _default_opset(model)
    _check_ops(model, opset)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelFormatError("onnx_invalid", f"ONNX model fails the checker: {exc}") from exc
    return _build(model, opset)


def _build(model: onnx.ModelProto, opset: int) -> OnnxGraphModule:
    graph = model.graph
    constants: dict[str, Tensor] = {}
    for init in graph.initializer:
        constants[init.name] = _tensor_from_proto(init)
    for sparse in graph.sparse_initializer:
        constants[sparse.values.name] = _sparse_to_dense(sparse)

    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise ModelFormatError(
            "onnx_invalid",
            f"ONNX graph must have exactly one input besides its initializers, found "
            f"{len(inputs)}: {[i.name for i in inputs]}",
        )
    graph_input = inputs[0]
    tensor_type = graph_input.type.tensor_type
    input_dtype = _torch_dtype(tensor_type.elem_type) if tensor_type.elem_type else torch.float32
    if not input_dtype.is_floating_point:
        raise ModelFormatError(
            "onnx_invalid",
            f"ONNX graph input {graph_input.name!r} has element type "
            f"{_dtype_name(tensor_type.elem_type)}; a classifier input must be floating point",
        )
    export_batch = None
    if tensor_type.HasField("shape") and len(tensor_type.shape.dim) > 0:
        first = tensor_type.shape.dim[0]
        if first.HasField("dim_value") and first.dim_value > 0:
            export_batch = int(first.dim_value)

    nodes: list[_Node] = []
    from_input = {graph_input.name}
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant_value(node)
            continue
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        if any(name in from_input for name in node.input):
            from_input.update(node.output)
        nodes.append(
            _Node(
                op_type=node.op_type,
                name=node.name or f"{node.op_type}_{index}",
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                attrs=attrs,
                first_input_from_x=len(node.input) > 0 and node.input[0] in from_input,
            )
        )
    _validate_static_attrs(nodes)

    output_name = graph.output[0].name
    produced = {graph_input.name, *constants, *(o for n in nodes for o in n.outputs)}
    if output_name not in produced:
        raise ModelFormatError(
            "onnx_invalid", f"ONNX graph output {output_name!r} is produced by no node"
        )
    return OnnxGraphModule(
        nodes=nodes,
        constants=constants,
        input_name=graph_input.name,
        input_dtype=input_dtype,
        output_name=output_name,
        opset=opset,
        export_batch=export_batch,
    )


def _validate_static_attrs(nodes: list[_Node]) -> None:
    """Refuse attribute values the interpreter does not implement, at load time."""

    def refuse(node: _Node, what: str) -> None:
        raise ModelFormatError(
            "unsupported_op", f"ONNX op {node.op_type!r} (node {node.name!r}) with {what}"
        )

    for node in nodes:
        a = node.attrs
        if node.op_type == "BatchNormalization" and a.get("training_mode", 0):
            refuse(node, "training_mode=1 is not supported; export the model in eval() mode")
        if node.op_type == "AveragePool" and any(d != 1 for d in a.get("dilations", [])):
            refuse(node, "dilations other than 1 is not supported")
        if node.op_type == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
            if a.get("storage_order", 0):
                refuse(node, "storage_order=1 and an Indices output is not supported")
        if node.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
                refuse(node, f"auto_pad={a['auto_pad']!r} is not supported")
        if node.op_type == "Pad" and a.get("mode", "constant") not in (
            "constant",
            "reflect",
            "edge",
            "wrap",
        ):
            refuse(node, f"mode={a['mode']!r} is not supported")
        if node.op_type == "Gelu" and a.get("approximate", "none") not in ("none", "tanh"):
            refuse(node, f"approximate={a['approximate']!r} is not supported")
        if node.op_type == "GatherND" and a.get("batch_dims", 0):
            refuse(node, "batch_dims other than 0 is not supported")
        if node.op_type == "Resize":
            if a.get("coordinate_transformation_mode") == "tf_crop_and_resize":
                refuse(node, "coordinate_transformation_mode='tf_crop_and_resize' is not supported")
            if a.get("antialias", 0) and a.get("mode", "nearest") != "nearest":
                refuse(node, "antialias=1 is not supported")
            if a.get("mode", "nearest") not in ("nearest", "linear", "cubic"):
                refuse(node, f"mode={a['mode']!r} is not supported")
        if node.op_type == "Cast" and a.get("to") is not None:
            _torch_dtype(int(a["to"]))


# --------------------------------------------------------------------------------------------
# Helpers for op implementations
# --------------------------------------------------------------------------------------------


def _op(*names: str, host: Sequence[int] = ()) -> Callable[[_OpFn], _OpFn]:
    def register(fn: _OpFn) -> _OpFn:
        for name in names:
            _OPS[name] = _OpSpec(fn=fn, host_inputs=frozenset(host))
        return fn

    return register


def _req(t: Tensor | None) -> Tensor:
    if t is None:
        raise ValueError("a required input is missing")
    return t


def _ints(t: Tensor | None) -> list[int]:
    if t is None:
        return []
    return [int(v) for v in t.reshape(-1).tolist()]


def _scalar(t: Tensor | None, default: float | None = None) -> Any:
    if t is None or t.numel() == 0:
        return default
    return t.reshape(-1)[0].item()


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _check_size(numel: int, what: str) -> None:
    if numel > MAX_CREATED_ELEMENTS:
        raise ModelFormatError(
            "too_large",
            f"ONNX {what} would create {numel} elements (limit {MAX_CREATED_ELEMENTS})",
        )


def _axes_from(ctx: _Ctx, ins: list[Tensor | None], index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute (older opsets) or from input ``index`` (newer ones)."""
    if "axes" in ctx.node.attrs:
        return [int(v) for v in ctx.node.attrs["axes"]]
    if len(ins) > index and ins[index] is not None:
        return _ints(ins[index])
    return None


# --------------------------------------------------------------------------------------------
# Elementwise ops
# --------------------------------------------------------------------------------------------

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


def _make_unary(fn: Callable[[Tensor], Tensor]) -> _OpFn:
    def run(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
        return fn(_req(ins[0]))

    return run


for _name, _fn in _UNARY.items():
    _OPS[_name] = _OpSpec(fn=_make_unary(_fn))
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


def _make_binary(fn: Callable[[Tensor, Tensor], Tensor]) -> _OpFn:
    def run(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
        return fn(_req(ins[0]), _req(ins[1]))

    return run


for _name, _fn2 in _BINARY.items():
    _OPS[_name] = _OpSpec(fn=_make_binary(_fn2))
del _name, _fn2


def _constant_placeholder(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    raise AssertionError("Constant nodes are turned into buffers when the module is built")


_OPS["Constant"] = _OpSpec(fn=_constant_placeholder)


@_op("Identity", "Dropout")
def _identity(ctx: _Ctx, ins: list[Tensor | None]) -> list[Tensor]:
    x = _req(ins[0])
    if ctx.node.op_type == "Dropout" and len(ctx.node.outputs) > 1:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return [x]


@_op("Mod")
def _mod(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    a, b = _req(ins[0]), _req(ins[1])
    if ctx.node.attrs.get("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


@_op("Pow")
def _pow(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    base, exponent = _req(ins[0]), _req(ins[1])
    if base.is_floating_point() and exponent.dtype != base.dtype:
        exponent = exponent.to(base.dtype)
    out = torch.pow(base, exponent)
    return out if out.dtype == base.dtype else out.to(base.dtype)


@_op("IsInf")
def _isinf(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    neg = ctx.node.attrs.get("detect_negative", 1)
    pos = ctx.node.attrs.get("detect_positive", 1)
    if neg and pos:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> _OpFn:
    def run(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
        present = [t for t in ins if t is not None]
        out = present[0]
        for t in present[1:]:
            out = fn(out, t)
        if ctx.node.op_type == "Mean":
            out = out / len(present)
        return out

    return run


_OPS["Max"] = _OpSpec(fn=_variadic(torch.maximum))
_OPS["Min"] = _OpSpec(fn=_variadic(torch.minimum))
_OPS["Sum"] = _OpSpec(fn=_variadic(torch.add))
_OPS["Mean"] = _OpSpec(fn=_variadic(torch.add))


@_op("Where")
def _where(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return torch.where(_req(ins[0]).bool(), _req(ins[1]), _req(ins[2]))


@_op("Clip")
def _clip(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
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


@_op("LeakyRelu")
def _leaky_relu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return F.leaky_relu(_req(ins[0]), float(ctx.node.attrs.get("alpha", 0.01)))


@_op("PRelu")
def _prelu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, slope = _req(ins[0]), _req(ins[1])
    return torch.where(x > 0, x, x * slope)


@_op("Elu")
def _elu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return F.elu(_req(ins[0]), float(ctx.node.attrs.get("alpha", 1.0)))


@_op("Celu")
def _celu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return F.celu(_req(ins[0]), float(ctx.node.attrs.get("alpha", 1.0)))


@_op("Selu")
def _selu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    alpha = float(ctx.node.attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(ctx.node.attrs.get("gamma", 1.05070102214813232421875))
    return gamma * F.elu(_req(ins[0]), alpha)


@_op("ThresholdedRelu")
def _thresholded_relu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    return torch.where(x > float(ctx.node.attrs.get("alpha", 1.0)), x, torch.zeros_like(x))


@_op("HardSigmoid")
def _hard_sigmoid(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    alpha = float(ctx.node.attrs.get("alpha", 0.2))
    beta = float(ctx.node.attrs.get("beta", 0.5))
    return torch.clamp(_req(ins[0]) * alpha + beta, 0.0, 1.0)


@_op("Softplus")
def _softplus(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    # ONNX is log(exp(x) + 1) exactly; F.softplus's linear tail above 20 is within 2e-9 of it.
    return F.softplus(_req(ins[0]))


@_op("Gelu")
def _gelu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return F.gelu(_req(ins[0]), approximate=str(ctx.node.attrs.get("approximate", "none")))


def _coerce_2d(x: Tensor, axis: int, fn: Callable[[Tensor], Tensor]) -> Tensor:
    # Before opset 13 Softmax-like ops flattened the input to 2-D at ``axis``.
    axis = _axis(axis, x.dim())
    outer = math.prod(x.shape[:axis])
    return fn(x.reshape(outer, -1)).reshape(x.shape)


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    op = ctx.node.op_type

    def apply(t: Tensor, dim: int) -> Tensor:
        if op == "Softmax":
            return torch.softmax(t, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(t, dim)
        return F.one_hot(t.argmax(dim), t.shape[dim]).movedim(-1, dim).to(t.dtype)

    if ctx.opset < 13:
        return _coerce_2d(x, int(ctx.node.attrs.get("axis", 1)), lambda t: apply(t, 1))
    return apply(x, _axis(int(ctx.node.attrs.get("axis", -1)), x.dim()))


# --------------------------------------------------------------------------------------------
# Linear algebra, convolution, pooling, normalisation
# --------------------------------------------------------------------------------------------


@_op("MatMul")
def _matmul(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return torch.matmul(_req(ins[0]), _req(ins[1]))


@_op("Gemm")
def _gemm(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    a, b = _req(ins[0]), _req(ins[1])
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


@_op("Einsum")
def _einsum(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    equation = str(ctx.node.attrs["equation"]).replace(" ", "")
    return torch.einsum(equation, *[_req(t) for t in ins])


def _same_pads(
    in_sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    mode: str,
) -> list[int]:
    begins: list[int] = []
    ends: list[int] = []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _spatial_params(
    attrs: dict[str, Any], x: Tensor, kernel: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and ONNX-ordered pads [b1, b2, ..., e1, e2, ...] for a window op."""
    n = len(kernel)
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x.shape[2:], kernel, strides, dilations, auto_pad)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = [int(p) for p in attrs.get("pads", [0] * (2 * n))]
    return strides, dilations, pads


def _torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the last n dims -> F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: Sequence[int]) -> list[int] | None:
    n = len(pads) // 2
    return list(pads[:n]) if list(pads[:n]) == list(pads[n:]) else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@_op("Conv")
def _conv(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, w = _req(ins[0]), _req(ins[1])
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    if n not in _CONV:
        raise ValueError(f"{n}-D convolution is not supported")
    kernel = [int(k) for k in ctx.node.attrs.get("kernel_shape", w.shape[2:])]
    strides, dilations, pads = _spatial_params(ctx.node.attrs, x, kernel)
    padding = _symmetric(pads)
    if padding is None:
        x = F.pad(x, _torch_pad_order(pads))
        padding = [0] * n
    group = int(ctx.node.attrs.get("group", 1))
    return _CONV[n](x, w, b, strides, padding, dilations, group)


@_op("ConvTranspose")
def _conv_transpose(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, w = _req(ins[0]), _req(ins[1])
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    if n not in _CONV_T:
        raise ValueError(f"{n}-D transposed convolution is not supported")
    attrs = ctx.node.attrs
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1] * n)]
    dilations = [int(d) for d in attrs.get("dilations", [1] * n)]
    output_padding = [int(p) for p in attrs.get("output_padding", [0] * n)]
    group = int(attrs.get("group", 1))
    in_sizes = [int(s) for s in x.shape[2:]]
    # Full (unpadded) output, then the ONNX output_padding and pads are applied by padding
    # and cropping, which covers asymmetric pads and explicit output_shape alike.
    full = [
        s * (i - 1) + (k - 1) * d + 1 + op
        for i, k, s, d, op in zip(in_sizes, kernel, strides, dilations, output_padding, strict=True)
    ]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if "output_shape" in attrs:
            target = [int(v) for v in attrs["output_shape"]][-n:]
        else:
            target = [i * s for i, s in zip(in_sizes, strides, strict=True)]
        _check_size(x.shape[0] * w.shape[1] * group * math.prod(target), "ConvTranspose")
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
    y = _CONV_T[n](x, w, None, strides, 0, 0, group, dilations)
    # output_padding adds trailing positions no input reaches (they hold only the bias).
    y = F.pad(y, _torch_pad_order([0] * n + output_padding))
    y = F.pad(y, _torch_pad_order([-p for p in pads]))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * n))
    return y


def _pool_window(ctx: _Ctx, x: Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in ctx.node.attrs["kernel_shape"]]
    strides, dilations, pads = _spatial_params(ctx.node.attrs, x, kernel)
    return kernel, strides, dilations, pads


@_op("MaxPool")
def _max_pool(ctx: _Ctx, ins: list[Tensor | None]) -> list[Tensor]:
    x = _req(ins[0])
    kernel, strides, dilations, pads = _pool_window(ctx, x)
    n = len(kernel)
    ceil_mode = bool(ctx.node.attrs.get("ceil_mode", 0))
    padding = _symmetric(pads)
    # torch accepts only symmetric pads of at most half the window; pad with -inf otherwise.
    if padding is None or any(
        p > ((k - 1) * d + 1) // 2 for p, k, d in zip(padding, kernel, dilations, strict=True)
    ):
        x = F.pad(x, _torch_pad_order(pads), value=-math.inf)
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


@_op("AveragePool")
def _avg_pool(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    kernel, strides, _, pads = _pool_window(ctx, x)
    n = len(kernel)
    ceil_mode = bool(ctx.node.attrs.get("ceil_mode", 0))
    include_pad = bool(ctx.node.attrs.get("count_include_pad", 0))
    pool = _AVG_POOL[n]
    padding = _symmetric(pads)
    if padding is not None and all(p <= k // 2 for p, k in zip(padding, kernel, strict=True)):
        return pool(x, kernel, strides, padding, ceil_mode, include_pad)
    padded = F.pad(x, _torch_pad_order(pads))
    if include_pad:
        return pool(padded, kernel, strides, 0, ceil_mode, True)
    # Average over real elements only: pool the zero-padded sum and a mask of real positions.
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad_order(pads))
    return pool(padded, kernel, strides, 0, ceil_mode, True) / pool(
        ones, kernel, strides, 0, ceil_mode, True
    )


@_op("GlobalAveragePool")
def _global_avg_pool(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("GlobalMaxPool")
def _global_max_pool(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("LRN")
def _lrn(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
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


@_op("BatchNormalization")
def _batch_norm(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias, mean, var = (_req(t) for t in ins[:5])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)


@_op("InstanceNormalization")
def _instance_norm(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = _req(ins[0]), _req(ins[1]), _req(ins[2])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@_op("LayerNormalization")
def _layer_norm(ctx: _Ctx, ins: list[Tensor | None]) -> list[Tensor]:
    x, scale = _req(ins[0]), _req(ins[1])
    bias = ins[2] if len(ins) > 2 else None
    axis = _axis(int(ctx.node.attrs.get("axis", -1)), x.dim())
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


@_op("GroupNormalization")
def _group_norm(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x, scale, bias = _req(ins[0]), _req(ins[1]), _req(ins[2])
    groups = int(ctx.node.attrs["num_groups"])
    eps = float(ctx.node.attrs.get("epsilon", 1e-5))
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:
        # Opset 18 took one scale/bias per group; opset 21 takes one per channel.
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, eps)


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


def _reduce(kind: str) -> _OpFn:
    def run(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
        x = _req(ins[0])
        keepdims = bool(ctx.node.attrs.get("keepdims", 1))
        axes = _axes_from(ctx, ins, 1)
        if not axes:
            if ctx.node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted({_axis(a, x.dim()) for a in axes}))
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
    _OPS[_name] = _OpSpec(fn=_reduce(_kind), host_inputs=frozenset({1}))
del _name, _kind


@_op("ArgMax", "ArgMin")
def _arg_extreme(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    axis = _axis(int(ctx.node.attrs.get("axis", 0)), x.dim())
    keepdims = bool(ctx.node.attrs.get("keepdims", 1))
    fn = torch.argmax if ctx.node.op_type == "ArgMax" else torch.argmin
    if ctx.node.attrs.get("select_last_index", 0):
        return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keepdims)
    return fn(x, dim=axis, keepdim=keepdims)


@_op("TopK", host=(1,))
def _topk(ctx: _Ctx, ins: list[Tensor | None]) -> list[Tensor]:
    x = _req(ins[0])
    k = _ints(ins[1])[0]
    axis = _axis(int(ctx.node.attrs.get("axis", -1)), x.dim())
    largest = bool(ctx.node.attrs.get("largest", 1))
    values, indices = torch.topk(x, k, dim=axis, largest=largest, sorted=True)
    return [values, indices]


@_op("CumSum", host=(1,))
def _cumsum(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    axis = _axis(_ints(ins[1])[0], x.dim())
    reverse = bool(ctx.node.attrs.get("reverse", 0))
    exclusive = bool(ctx.node.attrs.get("exclusive", 0))
    if reverse:
        x = x.flip(axis)
    out = torch.cumsum(x, dim=axis)
    if exclusive:
        out = out - x
    return out.flip(axis) if reverse else out


# --------------------------------------------------------------------------------------------
# Shapes and tensor manipulation
# --------------------------------------------------------------------------------------------


@_op("Shape", host=(0,))
def _shape(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    dims = list(_req(ins[0]).shape)
    rank = len(dims)
    start = int(ctx.node.attrs.get("start", 0))
    end = int(ctx.node.attrs.get("end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    # Shape values live on the host so shape arithmetic never waits for the accelerator.
    return torch.tensor(dims[start:end], dtype=torch.int64)


@_op("Size", host=(0,))
def _size(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return torch.tensor(_req(ins[0]).numel(), dtype=torch.int64)


@_op("Cast")
def _cast(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return _req(ins[0]).to(_torch_dtype(int(ctx.node.attrs["to"])))


@_op("CastLike")
def _cast_like(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return _req(ins[0]).to(_req(ins[1]).dtype)


@_op("ConstantOfShape", host=(0,))
def _constant_of_shape(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    shape = _ints(ins[0])
    _check_size(math.prod(shape), "ConstantOfShape")
    device = _req(ins[0]).device
    value = ctx.node.attrs.get("value")
    if value is None:
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=device)


@_op("Reshape", host=(1,))
def _reshape(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    target = _ints(ins[1])
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


@_op("Flatten")
def _flatten(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    axis = int(ctx.node.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_op("Squeeze", host=(1,))
def _squeeze(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    axes = _axes_from(ctx, ins, 1)
    if axes is None:
        return x.squeeze()
    dims = tuple(_axis(a, x.dim()) for a in axes)
    for d in dims:
        if x.shape[d] != 1:
            raise ValueError(f"Squeeze axis {d} has size {x.shape[d]}, not 1")
    return x.squeeze(dims) if dims else x


@_op("Unsqueeze", host=(1,))
def _unsqueeze(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    axes = _axes_from(ctx, ins, 1) or []
    rank = x.dim() + len(axes)
    for d in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(d)
    return x


@_op("Transpose")
def _transpose(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    perm = ctx.node.attrs.get("perm")
    if perm is None:
        perm = list(reversed(range(x.dim())))
    return x.permute(*[int(p) for p in perm])


@_op("Concat")
def _concat(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    parts = [t for t in ins if t is not None]
    axis = _axis(int(ctx.node.attrs["axis"]), parts[0].dim())
    return torch.cat(parts, dim=axis)


@_op("Split", host=(1,))
def _split(ctx: _Ctx, ins: list[Tensor | None]) -> list[Tensor]:
    x = _req(ins[0])
    axis = _axis(int(ctx.node.attrs.get("axis", 0)), x.dim())
    dim = x.shape[axis]
    if "split" in ctx.node.attrs:
        sizes = [int(v) for v in ctx.node.attrs["split"]]
    elif len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1])
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


@_op("Slice", host=(1, 2, 3, 4))
def _slice(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    attrs = ctx.node.attrs
    if "starts" in attrs:  # opset < 10 form
        starts = [int(v) for v in attrs["starts"]]
        ends = [int(v) for v in attrs["ends"]]
        axes = [int(v) for v in attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(axis, x.dim())
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


@_op("Gather")
def _gather(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    data, indices = _req(ins[0]), _req(ins[1]).to(torch.int64)
    axis = _axis(int(ctx.node.attrs.get("axis", 0)), data.dim())
    dim = data.shape[axis]
    indices = torch.where(indices < 0, indices + dim, indices)
    out = data.index_select(axis, indices.reshape(-1))
    shape = (*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :])
    return out.reshape(shape)


@_op("GatherElements")
def _gather_elements(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    data, indices = _req(ins[0]), _req(ins[1]).to(torch.int64)
    axis = _axis(int(ctx.node.attrs.get("axis", 0)), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@_op("GatherND")
def _gather_nd(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    data, indices = _req(ins[0]), _req(ins[1]).to(torch.int64)
    depth = indices.shape[-1]
    sizes = torch.tensor(data.shape[:depth], dtype=torch.int64, device=indices.device)
    indices = torch.where(indices < 0, indices + sizes, indices)
    return data[tuple(indices[..., i] for i in range(depth))]


def _broadcast_shape(a: list[int], b: list[int]) -> list[int]:
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + a
    b = [1] * (rank - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return out


@_op("Expand", host=(1,))
def _expand(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    shape = _broadcast_shape(list(x.shape), _ints(ins[1]))
    _check_size(math.prod(shape), "Expand")
    return x.expand(shape)


@_op("Tile", host=(1,))
def _tile(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    repeats = _ints(ins[1])
    _check_size(x.numel() * math.prod(repeats), "Tile")
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


@_op("Pad", host=(1, 2, 3))
def _pad(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    attrs = ctx.node.attrs
    mode = str(attrs.get("mode", "constant"))
    pads = [int(v) for v in attrs["pads"]] if "pads" in attrs else _ints(ins[1])
    if "value" in attrs:
        value = float(attrs["value"])
    else:
        value = _scalar(ins[2] if len(ins) > 2 else None, 0.0)
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.dim()))
    axes = [_axis(a, x.dim()) for a in axes]
    n = len(axes)
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(axes):
        full[axis], full[axis + x.dim()] = pads[i], pads[i + n]
    grown = list(x.shape)
    for axis in range(x.dim()):
        grown[axis] += full[axis] + full[axis + x.dim()]
    _check_size(math.prod(grown), "Pad")
    if mode == "constant":
        return F.pad(x, _torch_pad_order(full), value=value)
    # Negative pads crop; apply them first, then grow each axis by gathering source positions.
    x = F.pad(x, _torch_pad_order([min(p, 0) for p in full]))
    for axis in range(x.dim()):
        before, after = max(full[axis], 0), max(full[axis + x.dim()], 0)
        if before or after:
            x = x.index_select(axis, _pad_index(x.shape[axis], before, after, mode, x.device))
    return x


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


@_op("Resize", host=(1, 2, 3))
def _resize(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    attrs = ctx.node.attrs
    rank = x.dim()
    axes = [_axis(int(a), rank) for a in attrs.get("axes", range(rank))]
    scales_in = ins[2] if len(ins) > 2 else None
    sizes_in = ins[3] if len(ins) > 3 else None
    in_sizes = [int(x.shape[a]) for a in axes]
    if sizes_in is not None and sizes_in.numel() > 0:
        sizes = _ints(sizes_in)
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
    grown = list(x.shape)
    for axis, size in zip(axes, sizes, strict=True):
        grown[axis] = size
    _check_size(math.prod(grown), "Resize")
    for axis, size, scale in zip(axes, sizes, scales, strict=True):
        if size != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, size, scale, attrs)
    return x


@_op("Range", host=(0, 1, 2))
def _range(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    start, limit, delta = _req(ins[0]), _req(ins[1]), _req(ins[2])
    s, lim, d = start.item(), limit.item(), delta.item()
    _check_size(max(0, math.ceil((lim - s) / d)) if d else 0, "Range")
    return torch.arange(s, lim, d, dtype=start.dtype, device=start.device)


@_op("NonZero")
def _nonzero(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    return torch.nonzero(_req(ins[0])).t().contiguous()


@_op("Trilu", host=(1,))
def _trilu(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    k = _ints(ins[1])[0] if len(ins) > 1 and ins[1] is not None else 0
    return torch.triu(x, k) if ctx.node.attrs.get("upper", 1) else torch.tril(x, k)


@_op("OneHot", host=(1,))
def _one_hot(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    indices, values = _req(ins[0]).to(torch.int64), _req(ins[2])
    depth = int(_scalar(ins[1]))
    indices = torch.where(indices < 0, indices + depth, indices)
    hot = F.one_hot(indices, depth).to(torch.bool)
    out = torch.where(hot, values[1], values[0])
    axis = int(ctx.node.attrs.get("axis", -1))
    return out.movedim(-1, _axis(axis, out.dim()))


@_op("DepthToSpace")
def _depth_to_space(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    bs = int(ctx.node.attrs["blocksize"])
    n, c, h, w = x.shape
    if ctx.node.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@_op("SpaceToDepth")
def _space_to_depth(ctx: _Ctx, ins: list[Tensor | None]) -> Tensor:
    x = _req(ins[0])
    bs = int(ctx.node.attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)
