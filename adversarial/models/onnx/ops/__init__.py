"""The op library: torch implementations of the supported ai.onnx ops, by op name.

Importing this package registers every op in :data:`OPS` (each submodule registers its own).
"""

from __future__ import annotations

from adversarial.models.onnx.ops import elementwise, layers, reductions, resize, shapes
from adversarial.models.onnx.ops.base import OPS, OpSpec, supported_ops

__all__ = ["OPS", "OpSpec", "supported_ops"]

# The submodules are imported for their registrations.
del elementwise, layers, reductions, resize, shapes
