"""Resource budgets for an uploaded ONNX graph, and the error raised when one is exceeded."""

from __future__ import annotations

from dataclasses import dataclass, fields

from adversarial.errors import ModelTooLargeError

GiB = 2**30


@dataclass(frozen=True)
class OnnxLimits:
    """What an uploaded ONNX graph may cost; every field is a positive integer.

    The checks run in three places, and a graph is refused (``model_too_large``, a
    :class:`~adversarial.errors.ModelTooLargeError` naming the field) at the first that fails:

    1. On the protobuf, before any tensor is decoded: ``max_nodes``, ``max_edges`` and
       ``max_initializer_bytes``.
    2. On ONNX shape inference at batch ``validation_batch``, before the module is built:
       ``max_tensor_elements``, ``max_activation_elements`` and ``max_flops_per_example``.
    3. In the executor, before each op runs, from the shapes of its actual inputs: the same
       three, for what inference could not predict (data-dependent shapes).

    Attributes:
        max_nodes: nodes in the graph once local functions are inlined (counted before they
            are), subgraphs included. 50,000 is ten times a large vision transformer export.
        max_edges: node inputs plus node outputs over all those nodes; the executor looks each
            up on every pass, so a node with millions of inputs (a 10 MB ``Sum``) costs as
            much as millions of nodes. 400,000: eight per node at ``max_nodes``.
        max_initializer_bytes: all stored tensors together, at their dense size: initializers,
            sparse initializers (the dense tensor they expand to, plus their values and
            indices), ``Constant`` values and any other attribute tensor, in subgraphs and in
            local functions once per inlined call. 1 GiB: twice the default upload cap, so a
            file that fits the cap fits, and sparse "zip bombs" do not.
        validation_batch: the batch size budgets are stated at (the worker's validation forward
            uses 4). At run time a larger batch scales the allowance of every tensor whose first
            dimension is that batch, linearly, so legitimate large-batch attacks are not refused
            while batch-independent blow-ups are.
        max_tensor_elements: the largest single intermediate tensor, in elements, at the
            validation batch. 2**28 is 1 GiB of float32.
        max_activation_elements: all intermediate tensors of one forward pass together (the
            executor keeps every one alive until the pass ends), in elements, at the validation
            batch. 2**29 is 2 GiB of float32.
        max_flops_per_example: floating-point operations of one forward pass per example,
            counting MatMul, Gemm, Einsum, Conv, ConvTranspose, pooling windows and LRN (a
            multiply-add is 2), and one per input element for ops that read a large input
            into a small output (reductions, ArgMax/ArgMin, TopK, global pools). Other ops do
            work in proportion to their outputs, which ``max_activation_elements`` bounds.
            2 * 10**10: twice a ResNet-50 at 224x224.
    """

    max_nodes: int = 50_000
    max_edges: int = 400_000
    max_initializer_bytes: int = 1 * GiB
    validation_batch: int = 4
    max_tensor_elements: int = 2**28
    max_activation_elements: int = 2**29
    max_flops_per_example: int = 2 * 10**10

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"OnnxLimits.{item.name} must be a positive integer, not {value!r}"
                )


def refuse(limit: str, value: int, maximum: int, unit: str, what: str) -> ModelTooLargeError:
    """The error for ``what`` needing ``value`` ``unit`` where ``limit`` allows ``maximum``."""
    return ModelTooLargeError(
        f"{what} needs {value:,} {unit}; the limit is {maximum:,} (OnnxLimits.{limit})",
        limit=limit,
        value=value,
        maximum=maximum,
    )
