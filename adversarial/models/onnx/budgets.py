"""Size budgets checked before any tensor exists: stored sizes, then inferred activations.

Two checks, both refusing with :class:`~adversarial.errors.ModelTooLargeError`:

* :func:`check_stored_sizes`, on the raw protobuf before local functions are inlined: the node
  count and the bytes of every stored tensor at its dense size, from ``dims`` and
  ``data_type`` alone, with each local function counted once per call it will be inlined at.
* :func:`check_inferred_sizes`, on ONNX shape inference at the validation batch: the largest
  intermediate tensor, the sum of all of them, and the FLOPs per example.

Unknown dimensions. Shape inference leaves a dimension unknown when it depends on data (NonZero,
a Range of computed bounds, ...). The static check counts an unknown dimension as 1, so what it
computes is a lower bound and a refusal is always justified; it never trusts an unknown
dimension to be small. What it cannot bound is checked again, exactly, by the executor's
run-time guards (:mod:`.guards`) before the op that creates the tensor runs, so an unknown
dimension is never unchecked, only checked later, when its value exists. A graph whose shape
inference fails outright is likewise left to the run-time guards.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import onnx
import onnx.shape_inference
from onnx import AttributeProto, TensorProto, helper

from adversarial.errors import ModelFormatError
from adversarial.models.onnx.costs import (
    READING_OPS,
    einsum_cost,
    gemm_cost,
    matmul_cost,
    numel,
)
from adversarial.models.onnx.limits import OnnxLimits, refuse

# Bytes per element by ONNX data type; unknown types count as 8 (the widest common one).
_ITEM_BYTES: dict[int, int] = {
    TensorProto.FLOAT: 4,
    TensorProto.UINT8: 1,
    TensorProto.INT8: 1,
    TensorProto.UINT16: 2,
    TensorProto.INT16: 2,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
    TensorProto.BOOL: 1,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.UINT32: 4,
    TensorProto.UINT64: 8,
    TensorProto.COMPLEX64: 8,
    TensorProto.COMPLEX128: 16,
    TensorProto.BFLOAT16: 2,
}
_DEFAULT_ITEM_BYTES = 8
# Initializers and constants above this many elements are left out of the copy given to shape
# inference (declared as typed inputs instead): it needs their shapes, not their values.
_INFERENCE_VALUE_MAX_ELEMENTS = 4096

_FunctionKey = tuple[str, str, str]


# --- stored sizes ------------------------------------------------------------------------------


def check_stored_sizes(model: onnx.ModelProto, limits: OnnxLimits) -> None:
    """Refuse a model whose node count or stored tensors exceed ``limits``, before inlining.

    Counts the nodes (and their inputs and outputs) the graph will have once its local
    functions are inlined (each function's nodes once per call, nested calls multiplied out)
    and the bytes every stored tensor takes
    when decoded: initializers, sparse initializers at their dense size (plus their values and
    indices), Constant values and every other attribute tensor, in subgraphs and functions.

    Raises:
        ModelTooLargeError: ``max_nodes``, ``max_edges`` or ``max_initializer_bytes``.
        ModelFormatError: ``onnx_invalid`` for recursive local functions or negative dims.
    """
    instances = _function_instances(model)
    functions = {_function_key(f): f for f in model.functions}
    nodes, edges = _node_and_edge_count(model.graph.node)
    stored = _graph_bytes(model.graph)
    for key, count in instances.items():
        function = functions[key]
        function_nodes, function_edges = _node_and_edge_count(function.node)
        nodes += count * function_nodes
        edges += count * function_edges
        stored += count * sum(_attribute_bytes(node.attribute) for node in function.node)
    if nodes > limits.max_nodes:
        raise refuse(
            "max_nodes", nodes, limits.max_nodes, "nodes", "The ONNX graph, functions inlined,"
        )
    if edges > limits.max_edges:
        raise refuse(
            "max_edges",
            edges,
            limits.max_edges,
            "node inputs and outputs",
            "The ONNX graph, functions inlined,",
        )
    if stored > limits.max_initializer_bytes:
        raise refuse(
            "max_initializer_bytes",
            stored,
            limits.max_initializer_bytes,
            "bytes",
            "The ONNX model's stored tensors (initializers, sparse tensors at their dense size, "
            "constants and attribute tensors)",
        )


def _node_and_edge_count(nodes: Iterable[onnx.NodeProto]) -> tuple[int, int]:
    count = edges = 0
    for node in _nodes_in(nodes):
        count += 1
        edges += len(node.input) + len(node.output)
    return count, edges


def _function_key(function: onnx.FunctionProto) -> _FunctionKey:
    return (function.domain, function.name, getattr(function, "overload", ""))


def _node_key(node: onnx.NodeProto) -> _FunctionKey:
    return (node.domain, node.op_type, getattr(node, "overload", ""))


def _nodes_in(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """``nodes`` and the nodes of their subgraphs, depth first."""
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        for attr in node.attribute:
            subgraphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for subgraph in reversed(subgraphs):
                stack.extend(reversed(list(subgraph.node)))


def _function_instances(model: onnx.ModelProto) -> Counter[_FunctionKey]:
    """How many copies of each local function full inlining makes (nested calls multiplied)."""
    functions = {_function_key(f): f for f in model.functions}
    if not functions:
        return Counter()

    def calls(nodes: Iterable[onnx.NodeProto]) -> Counter[_FunctionKey]:
        return Counter(key for node in _nodes_in(nodes) if (key := _node_key(node)) in functions)

    callees = {key: calls(function.node) for key, function in functions.items()}
    # Depth-first post-order over the call graph (callees first), refusing cycles: inlining a
    # recursive function never ends.
    order: list[_FunctionKey] = []
    state: dict[_FunctionKey, int] = {}
    for root in functions:
        if root in state:
            continue
        stack: list[tuple[_FunctionKey, Iterator[_FunctionKey]]] = [(root, iter(callees[root]))]
        state[root] = 1
        while stack:
            key, pending = stack[-1]
            callee = next(pending, None)
            if callee is None:
                stack.pop()
                state[key] = 2
                order.append(key)
            elif state.get(callee) == 1:
                raise ModelFormatError(
                    "onnx_invalid",
                    f"ONNX local function {callee[1]!r} (domain {callee[0]!r}) calls itself",
                )
            elif callee not in state:
                state[callee] = 1
                stack.append((callee, iter(callees[callee])))
    instances = calls(model.graph.node)
    for key in reversed(order):  # callers before their callees
        for callee, count in callees[key].items():
            instances[callee] += instances[key] * count
    return instances


def _dense_elements(dims: Sequence[int], name: str) -> int:
    if any(d < 0 for d in dims):
        raise ModelFormatError("onnx_invalid", f"ONNX tensor {name!r} has negative dims {dims}")
    return math.prod(int(d) for d in dims)


def _tensor_bytes(tensor: TensorProto) -> int:
    item = _ITEM_BYTES.get(int(tensor.data_type), _DEFAULT_ITEM_BYTES)
    return item * _dense_elements(list(tensor.dims), tensor.name)


def _sparse_bytes(sparse: onnx.SparseTensorProto) -> int:
    item = _ITEM_BYTES.get(int(sparse.values.data_type), _DEFAULT_ITEM_BYTES)
    dense = item * _dense_elements(list(sparse.dims), sparse.values.name)
    return dense + _tensor_bytes(sparse.values) + _tensor_bytes(sparse.indices)


def _graph_bytes(graph: onnx.GraphProto) -> int:
    stored = sum(_tensor_bytes(t) for t in graph.initializer)
    stored += sum(_sparse_bytes(s) for s in graph.sparse_initializer)
    return stored + sum(_attribute_bytes(node.attribute) for node in graph.node)


def _attribute_bytes(attributes: Iterable[AttributeProto]) -> int:
    stored = 0
    for attr in attributes:
        if attr.HasField("t"):
            stored += _tensor_bytes(attr.t)
        stored += sum(_tensor_bytes(t) for t in attr.tensors)
        if attr.HasField("sparse_tensor"):
            stored += _sparse_bytes(attr.sparse_tensor)
        stored += sum(_sparse_bytes(s) for s in attr.sparse_tensors)
        # Constant's value_floats / value_ints become tensors too.
        stored += 4 * len(attr.floats) + 8 * len(attr.ints)
        if attr.HasField("g"):
            stored += _graph_bytes(attr.g)
        stored += sum(_graph_bytes(g) for g in attr.graphs)
    return stored


# --- inferred activations and FLOPs ------------------------------------------------------------


@dataclass(frozen=True)
class InferredCost:
    """What shape inference predicts one forward pass costs at the validation batch.

    Unknown dimensions count as 1, so every figure is a lower bound (see the module docstring).
    ``inferred`` is False when shape inference failed and nothing was predicted.
    """

    inferred: bool
    largest_tensor_elements: int = 0
    activation_elements: int = 0
    flops_per_example: int = 0


def check_inferred_sizes(
    model: onnx.ModelProto,
    limits: OnnxLimits,
    *,
    input_name: str,
    input_shape: Sequence[int] | None = None,
) -> InferredCost:
    """Refuse a model whose inferred intermediates or FLOPs exceed ``limits``.

    Runs ONNX shape inference on a copy of the graph (large tensors replaced by typed inputs,
    so no weight is copied) with the input ``input_name`` of shape
    ``[limits.validation_batch, *input_shape]``. Where the graph fixes its batch dimension to
    B, inference runs at B and, if B is smaller, every figure is scaled by
    ``validation_batch / B``. Without ``input_shape`` the graph's declared dims are used.

    Raises:
        ModelTooLargeError: ``max_tensor_elements``, ``max_activation_elements`` or
            ``max_flops_per_example``.
    """
    shapes, factor = _inferred_shapes(model, limits, input_name, input_shape)
    if shapes is None:
        return InferredCost(inferred=False)
    largest = 0
    activations = 0
    flops = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Constant":
            continue  # a stored tensor, counted by check_stored_sizes
        where = f"ONNX node {node.name or f'{node.op_type}_{index}'!r} ({node.op_type})"
        for name in node.output:
            shape = shapes.get(name)
            if not name or shape is None:
                continue
            elements = math.ceil(numel([d or 1 for d in shape]) * factor)
            if elements > limits.max_tensor_elements:
                raise refuse(
                    "max_tensor_elements",
                    elements,
                    limits.max_tensor_elements,
                    "elements",
                    f"{where}: its output {name!r} of inferred shape "
                    f"{[d if d else '?' for d in shape]}"
                    + (f" (counted at batch {limits.validation_batch})" if factor != 1.0 else ""),
                )
            largest = max(largest, elements)
            activations += elements
        if activations > limits.max_activation_elements:
            raise refuse(
                "max_activation_elements",
                activations,
                limits.max_activation_elements,
                "elements",
                f"{where}: the inferred activations up to this node at batch "
                f"{limits.validation_batch}",
            )
        flops += math.ceil(_node_flops(node, shapes) * factor)
        per_example = math.ceil(flops / limits.validation_batch)
        if per_example > limits.max_flops_per_example:
            raise refuse(
                "max_flops_per_example",
                per_example,
                limits.max_flops_per_example,
                "FLOPs per example",
                f"{where}: the inferred compute up to this node",
            )
    return InferredCost(
        inferred=True,
        largest_tensor_elements=largest,
        activation_elements=activations,
        flops_per_example=math.ceil(flops / limits.validation_batch),
    )


# An inferred shape: one entry per axis, None where inference left the size unknown.
_InferredShape = list[int | None]


def _inferred_shapes(
    model: onnx.ModelProto,
    limits: OnnxLimits,
    input_name: str,
    input_shape: Sequence[int] | None,
) -> tuple[dict[str, _InferredShape] | None, float]:
    """Shapes of every value by name, and the factor that scales them to the validation batch."""
    copy, batch = _shape_only_copy(model, limits, input_name, input_shape)
    # No data propagation: onnx materialises the values it propagates as shape protos, and a
    # 3.5 KB graph (Concat of 100 ConstantOfShape([2**22]) vectors) made it allocate more than
    # 20 GB here. Shapes computed from Shape values stay unknown and are guarded at run time.
    try:
        inferred = onnx.shape_inference.infer_shapes(
            copy, check_type=False, strict_mode=False, data_prop=False
        )
    except Exception:  # inference bugs and malformed graphs: the run-time guards still apply
        return None, 1.0
    shapes: dict[str, _InferredShape] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[info.name] = [
                int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tensor_type.shape.dim
            ]
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = [int(d) for d in tensor.dims]
    factor = limits.validation_batch / batch if batch < limits.validation_batch else 1.0
    return shapes, factor


def _shape_only_copy(
    model: onnx.ModelProto,
    limits: OnnxLimits,
    input_name: str,
    input_shape: Sequence[int] | None,
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` for shape inference, and the batch size it declares.

    Large initializers and Constant values become typed graph inputs (their shapes is all
    inference needs), sparse initializers too (at their dense shape). Declared value_info and
    output shapes are dropped: they are the uploader's claims, and inference must not start
    from them.
    """
    graph = model.graph
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    target = copy.graph
    target.name = graph.name
    typed: list[onnx.ValueInfoProto] = []
    for tensor in graph.initializer:
        if numel(tensor.dims) <= _INFERENCE_VALUE_MAX_ELEMENTS:
            target.initializer.append(tensor)
        else:
            typed.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    for sparse in graph.sparse_initializer:
        typed.append(
            helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, sparse.dims)
        )
    for node in graph.node:
        value = node.attribute[0] if node.op_type == "Constant" and node.attribute else None
        if value is not None and value.type == AttributeProto.TENSOR:
            if numel(value.t.dims) > _INFERENCE_VALUE_MAX_ELEMENTS:
                typed.append(
                    helper.make_tensor_value_info(node.output[0], value.t.data_type, value.t.dims)
                )
                continue
        if value is not None and value.type == AttributeProto.SPARSE_TENSOR:
            sparse = value.sparse_tensor
            typed.append(
                helper.make_tensor_value_info(node.output[0], sparse.values.data_type, sparse.dims)
            )
            continue
        target.node.append(node)
    typed_names = {info.name for info in typed}
    batch = limits.validation_batch
    for graph_input in graph.input:
        if graph_input.name in typed_names:
            continue
        if graph_input.name != input_name:
            target.input.append(graph_input)
            continue
        declared = graph_input.type.tensor_type
        dims = list(declared.shape.dim) if declared.HasField("shape") else []
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            batch = int(dims[0].dim_value)  # a fixed-batch export
        shape: list[int | str | None] = [batch]
        if input_shape is not None:
            shape += [int(size) for size in input_shape]
        else:
            shape += [
                int(d.dim_value) if d.HasField("dim_value") else (str(d.dim_param) or None)
                for d in dims[1:]
            ]
        elem_type = declared.elem_type or TensorProto.FLOAT
        target.input.append(helper.make_tensor_value_info(input_name, elem_type, shape))
    target.input.extend(typed)
    for output in graph.output:
        elem_type = output.type.tensor_type.elem_type or TensorProto.FLOAT
        target.output.append(helper.make_tensor_value_info(output.name, elem_type, None))
    return copy, batch


_FLOP_OPS = frozenset(
    {"MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LRN"}
    | READING_OPS
)


def _int_attrs(node: onnx.NodeProto) -> dict[str, object]:
    wanted = (AttributeProto.INT, AttributeProto.INTS, AttributeProto.STRING)
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.type in wanted}


def _node_flops(node: onnx.NodeProto, shapes: dict[str, _InferredShape]) -> int:
    """FLOPs of one node from inferred shapes (unknown dims as 1; 0 when a rank is unknown)."""
    op = node.op_type
    if op not in _FLOP_OPS:
        return 0
    known = [shapes.get(name) if name else None for name in node.input]
    inputs = [None if s is None else [d or 1 for d in s] for s in known]
    outputs = [shapes.get(name) for name in node.output]
    out = None if not outputs or outputs[0] is None else [d or 1 for d in outputs[0]]
    attrs = _int_attrs(node)
    try:
        if op == "MatMul" and inputs[0] is not None and inputs[1] is not None:
            return matmul_cost(inputs[0], inputs[1])[1]
        if op == "Gemm" and inputs[0] is not None and inputs[1] is not None:
            trans_a, trans_b = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))
            return gemm_cost(inputs[0], inputs[1], None, trans_a, trans_b)[1]
        if op == "Conv" and out is not None and inputs[1] is not None:
            return 2 * numel(out) * numel(inputs[1][1:])
        if op == "ConvTranspose" and inputs[0] is not None and inputs[1] is not None:
            return 2 * numel(inputs[0]) * numel(inputs[1][1:])
        if op in ("MaxPool", "AveragePool") and out is not None:
            kernel = attrs.get("kernel_shape", [])
            return numel(out) * numel(kernel if isinstance(kernel, list) else [])
        if op in READING_OPS and inputs[0] is not None:
            return numel(inputs[0])
        if op == "LRN" and inputs[0] is not None:
            size = attrs.get("size", 1)
            return 2 * numel(inputs[0]) * (size if isinstance(size, int) else 1)
        if op == "Einsum" and all(s is not None for s in inputs):
            equation = attrs.get("equation", b"")
            text = equation.decode() if isinstance(equation, bytes) else str(equation)
            return einsum_cost(text, [s for s in inputs if s is not None])[1]
    except (ValueError, IndexError):
        return 0  # shapes inference got wrong or left inconsistent: the run-time guard decides
    return 0
