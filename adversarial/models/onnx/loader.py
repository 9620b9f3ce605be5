""":func:`load_onnx`: parse, check and build an ONNX classifier as a torch module."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnx.checker
import onnx.inliner
import torch
from torch import Tensor

from adversarial.errors import ModelFormatError
from adversarial.models.onnx.budgets import check_inferred_sizes, check_stored_sizes
from adversarial.models.onnx.checks import (
    check_domains,
    check_external_data,
    check_ops,
    default_opset,
)
from adversarial.models.onnx.executor import OnnxGraphModule
from adversarial.models.onnx.limits import OnnxLimits
from adversarial.models.onnx.ops import supported_ops
from adversarial.models.onnx.ops.base import Node
from adversarial.models.onnx.tensors import (
    attribute_value,
    constant_value,
    dtype_name,
    sparse_to_dense,
    tensor_from_proto,
    torch_dtype,
)


def load_onnx(
    data: bytes,
    *,
    max_bytes: int | None = None,
    limits: OnnxLimits | None = None,
    input_shape: Sequence[int] | None = None,
) -> OnnxGraphModule:
    """Parse and check an ONNX classifier and return a differentiable torch module.

    ``forward(x)`` takes the single graph input as a float tensor ``[N, ...]`` and returns the
    first graph output. ``limits`` (default :class:`OnnxLimits`) bounds what the model may
    cost; they are checked before any tensor is decoded, on shape inference with the input at
    ``[limits.validation_batch, *input_shape]`` (the declared per-example shape, e.g. the
    upload's ``[C, H, W]``; the graph's own declaration when None), and by the module before
    every op it runs.

    Raises:
        ModelFormatError: ``too_large`` (the file), ``onnx_invalid``, ``onnx_external_data``,
            ``onnx_ml_domain``, ``onnx_unknown_domain`` or ``unsupported_op``.
        ModelTooLargeError: ``model_too_large``, naming the :class:`OnnxLimits` field.
    """
    limits = OnnxLimits() if limits is None else limits
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

    check_external_data(model)
    # Before inlining, which could otherwise multiply nodes and constants without bound.
    check_stored_sizes(model, limits)
    if len(model.functions) > 0:
        # The dynamo exporter wraps pieces in local functions of its own domains; inline them
        # so that only the ops they are made of are judged.
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise ModelFormatError(
                "onnx_invalid", f"ONNX local functions cannot be inlined: {exc}"
            ) from exc
    check_domains(model)
    opset = default_opset(model)
    check_ops(model, opset, supported_ops())
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelFormatError("onnx_invalid", f"ONNX model fails the checker: {exc}") from exc
    graph_input = single_graph_input(model.graph)
    check_inferred_sizes(model, limits, input_name=graph_input.name, input_shape=input_shape)
    return build_module(model, opset, limits)


_MAX_LRN_SIZE = 1024


def single_graph_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    """The one graph input that is not an initializer (``onnx_invalid`` unless exactly one)."""
    stored = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = [i for i in graph.input if i.name not in stored]
    if len(inputs) != 1:
        raise ModelFormatError(
            "onnx_invalid",
            f"ONNX graph must have exactly one input besides its initializers, found "
            f"{len(inputs)}: {[i.name for i in inputs]}",
        )
    graph_input: onnx.ValueInfoProto = inputs[0]
    return graph_input


def build_module(model: onnx.ModelProto, opset: int, limits: OnnxLimits) -> OnnxGraphModule:
    """Decode the constants of a checked model and build its :class:`OnnxGraphModule`."""
    graph = model.graph
    constants: dict[str, Tensor] = {}
    for init in graph.initializer:
        constants[init.name] = tensor_from_proto(init)
    for sparse in graph.sparse_initializer:
        constants[sparse.values.name] = sparse_to_dense(sparse)

    graph_input = single_graph_input(graph)
    tensor_type = graph_input.type.tensor_type
    input_dtype = torch_dtype(tensor_type.elem_type) if tensor_type.elem_type else torch.float32
    if not input_dtype.is_floating_point:
        raise ModelFormatError(
            "onnx_invalid",
            f"ONNX graph input {graph_input.name!r} has element type "
            f"{dtype_name(tensor_type.elem_type)}; a classifier input must be floating point",
        )
    export_batch = None
    if tensor_type.HasField("shape") and len(tensor_type.shape.dim) > 0:
        first = tensor_type.shape.dim[0]
        if first.HasField("dim_value") and first.dim_value > 0:
            export_batch = int(first.dim_value)

    nodes: list[Node] = []
    from_input = {graph_input.name}
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            constants[node.output[0]] = constant_value(node)
            continue
        attrs = {a.name: attribute_value(a) for a in node.attribute}
        if any(name in from_input for name in node.input):
            from_input.update(node.output)
        nodes.append(
            Node(
                op_type=node.op_type,
                name=node.name or f"{node.op_type}_{index}",
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                attrs=attrs,
                first_input_from_x=len(node.input) > 0 and node.input[0] in from_input,
            )
        )
    validate_static_attrs(nodes)

    output_name = graph.output[0].name
    produced = {graph_input.name, *constants, *(o for n in nodes for o in n.outputs)}
    if output_name not in produced:
        raise ModelFormatError(
            "onnx_invalid", f"ONNX graph output {output_name!r} is produced by no node"
        )
    return OnnxGraphModule(
        nodes=nodes,
        constants=constants,
        initializer_names=[init.name for init in graph.initializer],
        input_name=graph_input.name,
        input_dtype=input_dtype,
        output_name=output_name,
        opset=opset,
        export_batch=export_batch,
        limits=limits,
    )


def validate_static_attrs(nodes: list[Node]) -> None:
    """Refuse attribute values the interpreter does not implement, at load time."""

    def refuse(node: Node, what: str) -> None:
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
        if node.op_type == "LRN" and not 1 <= int(a.get("size", 1)) <= _MAX_LRN_SIZE:
            # The channel window is summed one shift at a time.
            refuse(node, f"size={a['size']} is not supported (1..{_MAX_LRN_SIZE})")
        if node.op_type == "Cast" and a.get("to") is not None:
            torch_dtype(int(a["to"]))
