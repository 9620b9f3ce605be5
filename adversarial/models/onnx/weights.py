"""Which initializers of a graph are weights, and which belong to its last layer.

Fine-tuning an uploaded ONNX model trains some of its initializers. This module reads the graph
to find them: an initializer is a weight when a layer consumes it in a weight position (a Conv
kernel, a Gemm operand, a normalisation scale, an Add bias, ...), directly or through ops an
exporter puts in between (a Transpose or Cast of the stored tensor).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from adversarial.models.onnx.ops.base import Node

# Input positions that hold learnable weights, per op (None: every input).
WEIGHT_SLOTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "Einsum": None,
    "BatchNormalization": (1, 2),  # scale and bias; the running statistics are not weights
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    # Biases and scales. Not Sub or Div: exports use them for input normalisation
    # ((x - mean) / std), whose constants are not weights to train.
    "Add": (0, 1),
    "Mul": (0, 1),
    "PRelu": (1,),
    "Gather": (0,),  # embedding tables
}
# Ops an exporter may put between a stored weight and the layer that uses it.
PASSTHROUGH_OPS = frozenset(
    {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
)
# Layers "the last layer" can be, and the op that adds a separate bias after one.
LAYER_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum"})
BIAS_OPS = frozenset({"Add"})


class GraphWeights:
    """The weight structure of a graph's nodes, given the names of its initializers."""

    def __init__(self, nodes: Sequence[Node], initializers: Collection[str]) -> None:
        self._nodes = list(nodes)
        self._initializers = set(initializers)
        self._producer = {output: node for node in nodes for output in node.outputs if output}

    def sources(self, node: Node) -> list[str]:
        """Initializers that reach ``node``'s weight positions (through pass-through ops)."""
        slots = WEIGHT_SLOTS.get(node.op_type, ())
        sources: list[str] = []
        for position, name in enumerate(node.inputs):
            if slots is not None and position not in slots:
                continue
            while name and name not in self._initializers and name in self._producer:
                upstream = self._producer[name]
                if upstream.op_type not in PASSTHROUGH_OPS or not upstream.inputs:
                    break
                name = upstream.inputs[0]
            if name in self._initializers:
                sources.append(name)
        return sources

    def weights(self, host_inputs: Mapping[str, Collection[int]]) -> set[str]:
        """Initializers consumed as weights and never read as Python values.

        ``host_inputs`` gives, per op type, the input positions the op reads as Python values
        (shapes, scales, pads): a tensor read there is a setting, not a weight.
        """
        weights = {name for node in self._nodes for name in self.sources(node)}
        read_as_values = {
            name
            for node in self._nodes
            for position, name in enumerate(node.inputs)
            if position in host_inputs.get(node.op_type, ())
        }
        return weights - read_as_values

    def last_layer(self, output: str, trainable: Collection[str]) -> list[str]:
        """The ``trainable`` initializers of the last layer ``output`` depends on (or [])."""
        needed = {output}
        for node in reversed(self._nodes):
            if set(node.outputs) & needed:
                needed.update(name for name in node.inputs if name)
        for index in range(len(self._nodes) - 1, -1, -1):
            node = self._nodes[index]
            if node.op_type not in LAYER_OPS or not set(node.outputs) & needed:
                continue
            names = [name for name in self.sources(node) if name in trainable]
            if not names:
                continue
            for later in self._nodes[index + 1 :]:
                if later.op_type in BIAS_OPS and set(later.inputs) & set(node.outputs):
                    names += [name for name in self.sources(later) if name in trainable]
            return list(dict.fromkeys(names))
        return []
