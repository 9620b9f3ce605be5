"""A pure-PyTorch interpreter for ONNX classifier graphs.

White-box attacks need input gradients, and an uploaded ONNX file is only data: this package
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
* Fine-tuning: :meth:`OnnxGraphModule.make_trainable` turns weight initializers into
  parameters, :meth:`OnnxGraphModule.last_layer_initializers` names the final layer's, and
  :func:`export_onnx_with_weights` writes their values back into the user's file.
* The graph is always run in inference mode: BatchNormalization uses its running statistics and
  Dropout is the identity whatever ``module.training`` says, also while fine-tuning.
* Fixed-batch exports: when the graph input's first dimension is a fixed number B (an export
  without a dynamic batch axis) and the module is called with another batch size N, a Reshape
  whose data is computed from the input, has N leading rows and whose target's first entry is
  the literal B gets N instead.
  That is the ``x.view(x.size(0), -1)`` pattern the TorchScript exporter constant-folds to
  ``Reshape(x, [1, -1])``. Other ops that bake the export batch into constants (Expand/Tile to a
  fixed shape, ...) are not rewritten: such graphs only run at their export batch size.
* Resource budgets (:class:`OnnxLimits`) are checked before any tensor exists (stored sizes,
  then ONNX shape inference at the validation batch) and again by the executor before every
  op that can grow a tensor; a graph beyond them is refused with ``model_too_large``.

Layout (the trust boundary first; the first four modules do not use torch):

* :mod:`.checks`: structural checks on the protobuf (external data, domains, opsets, op
  support).
* :mod:`.budgets`: size budgets before any tensor exists (stored tensors and node count, then
  inferred activations and FLOPs).
* :mod:`.limits`: :class:`OnnxLimits`, the budgets and their defaults.
* :mod:`.costs`: output shapes and FLOPs of ops from input shapes, shared by the static
  budget and the run-time guards.
* :mod:`.loader`: :func:`load_onnx`, which runs the checks and then builds the module.
* :mod:`.tensors`: ONNX tensors and attributes decoded into torch values.
* :mod:`.executor`: :class:`OnnxGraphModule`, the ``nn.Module`` that replays the graph.
* :mod:`.guards`: the executor's run-time guards (what an op will create and compute).
* :mod:`.ops`: the op library, one registry of torch implementations by op name.
* :mod:`.weights` and :mod:`.export`: fine-tuning support (which initializers are weights,
  which form the last layer; :func:`export_onnx_with_weights` writes trained values back).
"""

from __future__ import annotations

from adversarial.errors import ModelTooLargeError
from adversarial.models.onnx.checks import MAX_OPSET, MIN_OPSET
from adversarial.models.onnx.executor import OnnxGraphModule
from adversarial.models.onnx.export import export_onnx_with_weights
from adversarial.models.onnx.limits import OnnxLimits
from adversarial.models.onnx.loader import load_onnx
from adversarial.models.onnx.ops import supported_ops

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "ModelTooLargeError",
    "OnnxGraphModule",
    "OnnxLimits",
    "export_onnx_with_weights",
    "load_onnx",
    "supported_ops",
]
