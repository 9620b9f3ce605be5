"""Checks on the parsed protobuf, before any tensor is decoded.

External data, node domains, the opset and op support: an ONNX upload is judged here on its
structure alone, so nothing in it is turned into a tensor before it passes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import onnx
from onnx import AttributeProto, TensorProto

from adversarial.errors import ModelFormatError

MIN_OPSET = 11
MAX_OPSET = 22

DEFAULT_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"


def graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every TensorProto stored in ``graph``: initializers, sparse parts, attribute tensors."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from attribute_tensors(node.attribute)


def attribute_tensors(attributes: Sequence[AttributeProto]) -> Iterator[TensorProto]:
    """Every TensorProto in ``attributes``, including those of subgraphs."""
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
            yield from graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from graph_tensors(sub)


def model_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto in ``model``: its graph and its local functions."""
    yield from graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from attribute_tensors(node.attribute)


def graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graph_nodes(attr.g)
            for sub in attr.graphs:
                yield from graph_nodes(sub)


def check_external_data(model: onnx.ModelProto) -> None:
    """Refuse any tensor stored outside the file (``onnx_external_data``)."""
    for tensor in model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ModelFormatError(
                "onnx_external_data",
                f"ONNX tensor {tensor.name!r} is stored as external data; upload a single "
                "self-contained .onnx file (onnx.save_model(..., save_as_external_data=False)); "
                "external data files are refused",
            )


def check_domains(model: onnx.ModelProto) -> None:
    """Refuse ``ai.onnx.ml`` (``onnx_ml_domain``) and custom domains (``onnx_unknown_domain``)."""
    ml_ops: set[str] = set()
    unknown: set[str] = set()
    for node in graph_nodes(model.graph):
        if node.domain in DEFAULT_DOMAINS:
            continue
        if node.domain == ML_DOMAIN:
            ml_ops.add(node.op_type)
        else:
            unknown.add(f"{node.op_type!r} (domain {node.domain!r})")
    if ml_ops:
        raise ModelFormatError(
            "onnx_ml_domain",
            f"ONNX graph uses the {ML_DOMAIN} domain (ops: {', '.join(sorted(ml_ops))}), "
            "typically a scikit-learn model converted with skl2onnx; it cannot be "
            "differentiated; white-box audits need a neural network graph",
        )
    if unknown:
        raise ModelFormatError(
            "onnx_unknown_domain",
            f"ONNX graph uses ops outside the standard ai.onnx domain: {', '.join(sorted(unknown))}"
            "; custom operators are refused",
        )


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset, refused (``onnx_invalid``) outside ``MIN_OPSET..MAX_OPSET``."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
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


def check_ops(model: onnx.ModelProto, opset: int, supported: Collection[str]) -> None:
    """Refuse a graph with any op outside ``supported``, naming every missing op."""
    missing = sorted({n.op_type for n in graph_nodes(model.graph) if n.op_type not in supported})
    if missing:
        names = ", ".join(repr(m) for m in missing)
        noun = "op" if len(missing) == 1 else "ops"
        verb = "is" if len(missing) == 1 else "are"
        raise ModelFormatError(
            "unsupported_op",
            f"ONNX {noun} {names} (domain ai.onnx, opset {opset}) {verb} not supported; "
            f"supported ops: {', '.join(sorted(supported))}",
        )
