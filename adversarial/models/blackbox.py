"""Black-box classifiers: ONNX graphs run in onnxruntime, queried but never differentiated.

Graphs in the ``ai.onnx.ml`` domain (scikit-learn models exported with skl2onnx: logistic
regression, SVMs, trees, nearest neighbours) have no input gradient, and any ONNX model a
user marks as a black box is treated the same way. :func:`load_black_box` checks such a
graph and wraps an onnxruntime session (CPU provider) in a :class:`BlackBoxModel`, a torch
module that maps inputs ``[N, C, H, W]`` to scores ``[N, num_classes]`` (float32) so that
evaluation and transfer code can call it like any classifier. They serve as transfer
targets and as targets of score-based attacks; white-box attacks and transfer sources
refuse them (:func:`is_differentiable`).

Scores. The module's output is what the graph gives, in this order of preference:

* a graph output of probabilities or scores: a ``[N, K]`` float tensor, or a sequence of
  ``{class index: value}`` maps (skl2onnx's ``output_probability`` with ZipMap), whose keys
  place each value in its column (a class the map lacks scores 0);
* otherwise, with only a label output, the one-hot of the predicted label.

When the graph also outputs a label (skl2onnx's ``output_label``), the label is the model's
prediction: it is what scikit-learn's ``predict`` returns. A row whose scores have their
argmax elsewhere is replaced by the one-hot of the label, so ``argmax`` of the output is
always the model's prediction. This happens: an ``SVC`` predicts by one-vs-one votes while
its ``predict_proba`` (Platt scaling) and ``decision_function`` are computed separately, and
on the digits a few rows in a few hundred disagree. :attr:`BlackBoxModel.label_overrides`
counts the rows replaced. The scores are probabilities for probabilistic classifiers and
decision values for an ``SVC`` without ``probability=True`` (:attr:`BlackBoxModel.score_kind`
says which, judged on the probe batch at load time); they are not logits, so a softmax of
them is no calibrated confidence.

Safety, as for the differentiable ONNX loader: a size cap before parsing, no external data
(an upload is one self-contained file; onnxruntime would resolve external paths against the
worker's working directory), only the ``''``/``ai.onnx`` and ``ai.onnx.ml`` domains (no
custom operators, no contrib ops), the ONNX checker, a declared input that can take
``[N, C*H*W]`` or ``[N, C, H, W]`` float values, and one real forward pass on a small probe
batch whose scores must be ``[N, num_classes]`` and finite, with labels in range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.checker
import torch
from onnx import TensorProto
from torch import nn

from adversarial.errors import EngineInputError, ModelFormatError

__all__ = [
    "ALLOWED_DOMAINS",
    "DEFAULT_MAX_BYTES",
    "BlackBoxModel",
    "NotDifferentiableError",
    "is_differentiable",
    "is_ml_domain_graph",
    "load_black_box",
]

DEFAULT_MAX_BYTES = 512 * 2**20
ML_DOMAIN = "ai.onnx.ml"
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", ML_DOMAIN})
PROBE_BATCH_SIZE = 4
# Row sums of probabilities are 1 up to float32 rounding of a few terms.
_PROBABILITY_TOLERANCE = 1e-3
_FLOAT_INPUT_TYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
}
_SCORE_TENSOR_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)")
_LABEL_TENSOR_TYPES = ("tensor(int64)", "tensor(int32)")


class NotDifferentiableError(EngineInputError):
    """A gradient was asked of a black-box model (code ``black_box_gradient``)."""

    def __init__(self, message: str) -> None:
        super().__init__("black_box_gradient", message)


def is_differentiable(model: nn.Module) -> bool:
    """Whether input gradients can flow through ``model``: false when it or any submodule
    (an ensemble member, the network inside an input-space wrapper) has ``differentiable``
    set to ``False``, as :class:`BlackBoxModel` has."""
    return all(getattr(module, "differentiable", True) is not False for module in model.modules())


def is_ml_domain_graph(data: bytes) -> bool:
    """Whether ``data`` is an ONNX model with any node in the ``ai.onnx.ml`` domain (a
    scikit-learn export), in its graph, a subgraph or a local function.

    For routing only: a file that does not parse as ONNX gives ``False``, so that the
    ordinary loader reports what is wrong with it. The caller applies the size cap first.
    """
    try:
        model = onnx.ModelProto.FromString(bytes(data))
    except Exception:  # protobuf raises DecodeError and, on some inputs, others
        return False
    return any(node.domain == ML_DOMAIN for node in _all_nodes(model))


class _RefuseGradient(torch.autograd.Function):
    """Identity on the scores, whose backward pass raises: a clear error instead of torch's
    "does not require grad" (or a silent zero gradient) when an attack tries to
    differentiate a black box."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.clone()

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> Any:
        raise NotDifferentiableError(
            "This model is a black box (an ONNX graph run in onnxruntime): it has no input "
            "gradient. Use it as a transfer target or with a score-based attack (square); "
            "white-box attacks and transfer sources need a differentiable model."
        )


class BlackBoxModel(nn.Module):
    """A classifier run in onnxruntime: inputs ``[N, C, H, W]`` (on any device) to float32
    scores ``[N, num_classes]`` on the inputs' device; see the module docstring for what
    the scores are. Build it with :func:`load_black_box`.

    It has no parameters and no gradient: ``differentiable`` is ``False``, and a backward
    pass through its output raises :class:`NotDifferentiableError`.

    Attributes:
        input_shape: ``(C, H, W)`` of one example.
        num_classes: width of the scores.
        input_range: ``(low, high)`` bounds of valid inputs (the probe batch is drawn there).
        score_kind: ``"probabilities"``, ``"scores"`` (decision values, logits) or
            ``"one_hot"`` (the graph gives labels only).
        label_overrides: rows so far whose scores' argmax disagreed with the graph's label
            and were replaced by the label's one-hot.
    """

    differentiable = False

    def __init__(
        self,
        session: Any,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        input_range: tuple[float, float],
        input_name: str,
        input_dtype: type[np.floating[Any]],
        flatten: bool,
        fixed_batch: int | None,
        score_output: str | None,
        score_is_map: bool,
        label_output: str | None,
    ) -> None:
        super().__init__()
        self.session = session
        self.input_shape: tuple[int, int, int] = (
            int(input_shape[0]),
            int(input_shape[1]),
            int(input_shape[2]),
        )
        self.num_classes = int(num_classes)
        self.input_range: tuple[float, float] = (float(input_range[0]), float(input_range[1]))
        self.input_name = input_name
        self.input_dtype = input_dtype
        self.flatten = flatten
        self.fixed_batch = fixed_batch
        self.score_output = score_output
        self.score_is_map = score_is_map
        self.label_output = label_output
        self.score_kind = "one_hot" if score_output is None else "scores"
        self.label_overrides = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, num_classes]`` (float32, on ``inputs.device``) for ``[N, C, H, W]``."""
        if tuple(inputs.shape[1:]) != self.input_shape:
            raise ModelFormatError(
                "bad_input_shape",
                f"The black-box model takes inputs [N, {', '.join(map(str, self.input_shape))}],"
                f" got {list(inputs.shape)}.",
            )
        torch_dtype = torch.float64 if self.input_dtype is np.float64 else torch.float32
        array = inputs.detach().to("cpu", torch_dtype).numpy()
        if self.flatten:
            array = array.reshape(array.shape[0], -1)
        scores = torch.from_numpy(self._scores(array)).to(inputs.device)
        if torch.is_grad_enabled() and inputs.requires_grad:
            return _RefuseGradient.apply(inputs, scores)  # type: ignore[no-untyped-call,no-any-return]
        return scores

    def _scores(self, array: np.ndarray) -> np.ndarray:
        """Scores ``[N, num_classes]`` float32 for the graph's input array."""
        count = array.shape[0]
        if count == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        if self.fixed_batch is None:
            return self._run(array)
        # A graph exported with a fixed batch: run it in chunks of that size, padding the
        # last chunk with copies of its first row (rows do not interact in a classifier).
        size = self.fixed_batch
        parts = []
        for start in range(0, count, size):
            chunk = array[start : start + size]
            rows = chunk.shape[0]
            if rows < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - rows, axis=0)])
            parts.append(self._run(chunk)[:rows])
        return np.concatenate(parts)

    def _run(self, array: np.ndarray) -> np.ndarray:
        wanted = [name for name in (self.score_output, self.label_output) if name is not None]
        outputs = dict(zip(wanted, self.session.run(wanted, {self.input_name: array}), strict=True))
        count = array.shape[0]
        labels = None
        if self.label_output is not None:
            labels = _labels(outputs[self.label_output], count, self.num_classes)
        if self.score_output is None:
            assert labels is not None  # the loader requires a label or a score output
            return _one_hot(labels, self.num_classes)
        raw = outputs[self.score_output]
        scores = (
            _map_scores(raw, count, self.num_classes)
            if self.score_is_map
            else _tensor_scores(raw, count, self.num_classes)
        )
        if labels is not None:
            disagree = scores.argmax(axis=1) != labels
            if disagree.any():
                scores[disagree] = _one_hot(labels[disagree], self.num_classes)
                self.label_overrides += int(disagree.sum())
        return scores

    def extra_repr(self) -> str:
        """Shown by ``repr``: the declared input space and the outputs used."""
        return (
            f"input_shape={list(self.input_shape)}, num_classes={self.num_classes}, "
            f"score_output={self.score_output!r}, label_output={self.label_output!r}, "
            f"score_kind={self.score_kind!r}"
        )


def load_black_box(
    data: bytes,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    input_range: tuple[float, float] = (0.0, 1.0),
    max_bytes: int = DEFAULT_MAX_BYTES,
    threads: int = 1,
    seed: int = 0,
) -> BlackBoxModel:
    """Check an ONNX classifier and wrap it, run in onnxruntime on the CPU, as a
    :class:`BlackBoxModel` taking ``[N, *input_shape]`` inputs in ``input_range``.

    ``threads`` bounds onnxruntime's intra-op threads (1 by default: predictable results
    and no contention with the torch work of the same process). The probe forward pass
    draws ``PROBE_BATCH_SIZE`` uniform inputs in ``input_range`` from ``seed``.

    Raises:
        ModelFormatError: ``too_large``, ``onnx_invalid``, ``onnx_external_data``,
            ``onnx_unknown_domain``, ``onnx_bad_input`` (not one float input that takes
            ``[N, C*H*W]`` or ``[N, C, H, W]``), ``onnx_no_scores`` (no usable score or
            label output), ``onnx_string_labels``, ``forward_failed``, ``bad_output_shape``,
            ``bad_output_labels`` or ``non_finite_output``.
    """
    if len(data) > max_bytes:
        raise ModelFormatError(
            "too_large", f"The model file is {len(data)} bytes; the limit is {max_bytes}."
        )
    shape = tuple(int(size) for size in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ModelFormatError(
            "bad_input_shape", f"input_shape must be [C, H, W] of positive sizes, got {shape}."
        )
    try:
        model = onnx.ModelProto.FromString(bytes(data))
    except Exception as error:  # protobuf raises DecodeError and, on some inputs, others
        raise ModelFormatError("onnx_invalid", f"Not a valid ONNX model: {error}") from error
    if not model.HasField("graph") or len(model.graph.output) == 0:
        raise ModelFormatError("onnx_invalid", "Not a valid ONNX model: it has no graph outputs.")
    _check_external_data(model)
    _check_domains(model)
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise ModelFormatError(
            "onnx_invalid", f"The ONNX model fails the checker: {error}"
        ) from error

    session = _session(data, threads)
    input_name, input_dtype, flatten, fixed_batch = _graph_input(session, shape)
    score_output, score_is_map, label_output = _graph_outputs(session)
    black_box = BlackBoxModel(
        session,
        input_shape=shape,
        num_classes=num_classes,
        input_range=input_range,
        input_name=input_name,
        input_dtype=input_dtype,
        flatten=flatten,
        fixed_batch=fixed_batch,
        score_output=score_output,
        score_is_map=score_is_map,
        label_output=label_output,
    )
    _probe(black_box, seed)
    return black_box.eval()


def _session(data: bytes, threads: int) -> Any:
    # Imported here: only workers that load black boxes need onnxruntime.
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    try:
        return onnxruntime.InferenceSession(
            bytes(data), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelFormatError(
            "onnx_invalid", f"onnxruntime cannot load the graph: {_shortened(str(error))}"
        ) from error


def _graph_input(
    session: Any, input_shape: tuple[int, int, int]
) -> tuple[str, type[np.floating[Any]], bool, int | None]:
    """The graph's one input: its name, dtype, whether inputs are flattened, fixed batch."""
    inputs = session.get_inputs()
    expected = f"[N, {math.prod(input_shape)}] or [N, {', '.join(map(str, input_shape))}]"
    if len(inputs) != 1:
        raise ModelFormatError(
            "onnx_bad_input",
            f"The graph has {len(inputs)} inputs; a classifier takes one, {expected}.",
        )
    graph_input = inputs[0]
    dtype = _FLOAT_INPUT_TYPES.get(graph_input.type)
    if dtype is None:
        raise ModelFormatError(
            "onnx_bad_input",
            f"The graph's input {graph_input.name!r} is {graph_input.type}; it must take float "
            f"values {expected} (skl2onnx: initial_types=[('input', FloatTensorType([None, "
            f"{math.prod(input_shape)}]))]).",
        )
    declared = list(graph_input.shape)
    if len(declared) == 2:
        wanted: list[int] = [math.prod(input_shape)]
    elif len(declared) == 4:
        wanted = list(input_shape)
    else:
        raise ModelFormatError(
            "onnx_bad_input",
            f"The graph's input {graph_input.name!r} has shape {declared}; expected {expected}.",
        )
    for position, (size, want) in enumerate(zip(declared[1:], wanted, strict=True), start=1):
        if isinstance(size, int) and size > 0 and size != want:
            raise ModelFormatError(
                "onnx_bad_input",
                f"The graph's input {graph_input.name!r} has shape {declared} (dimension "
                f"{position} is {size}, not {want}); expected {expected}.",
            )
    batch = declared[0]
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    return graph_input.name, dtype, len(declared) == 2, fixed_batch


def _graph_outputs(session: Any) -> tuple[str | None, bool, str | None]:
    """The score output (and whether it is a sequence of maps) and the label output.

    The first output in graph order that is a float tensor or a sequence of maps gives the
    scores; the first integer tensor gives the labels.
    """
    score_output: str | None = None
    score_is_map = False
    label_output: str | None = None
    for output in session.get_outputs():
        kind = str(output.type)
        if score_output is None and kind in _SCORE_TENSOR_TYPES:
            score_output = output.name
        elif score_output is None and kind.startswith("seq(map("):
            if not kind.startswith("seq(map(int64,"):
                raise ModelFormatError(
                    "onnx_string_labels",
                    f"The graph's output {output.name!r} maps class names ({kind}) to scores; "
                    "train on integer class indices 0..num_classes-1.",
                )
            score_output, score_is_map = output.name, True
        elif label_output is None and kind in _LABEL_TENSOR_TYPES:
            label_output = output.name
        elif label_output is None and kind == "tensor(string)":
            raise ModelFormatError(
                "onnx_string_labels",
                f"The graph's output {output.name!r} holds class names (strings); train on "
                "integer class indices 0..num_classes-1.",
            )
    if score_output is None and label_output is None:
        kinds = ", ".join(f"{o.name}: {o.type}" for o in session.get_outputs())
        raise ModelFormatError(
            "onnx_no_scores",
            f"The graph has no score output (float [N, num_classes] or a sequence of maps) "
            f"and no label output (int64 [N]); its outputs are {kinds}.",
        )
    return score_output, score_is_map, label_output


def _probe(model: BlackBoxModel, seed: int) -> None:
    """One real forward pass on uniform inputs; sets ``model.score_kind``."""
    generator = torch.Generator().manual_seed(seed)
    low, high = model.input_range
    inputs = low + (high - low) * torch.rand(
        (PROBE_BATCH_SIZE, *model.input_shape), generator=generator
    )
    try:
        with torch.no_grad():
            scores = model(inputs)
    except ModelFormatError:
        raise
    except Exception as error:  # any failure of the graph is a verdict on it
        raise ModelFormatError(
            "forward_failed",
            f"A forward pass on a batch of shape {[PROBE_BATCH_SIZE, *model.input_shape]} "
            f"failed: {type(error).__name__}: {_shortened(str(error))}",
        ) from error
    if not bool(torch.isfinite(scores).all()):
        raise ModelFormatError(
            "non_finite_output", "The model returned NaN or infinite scores for valid inputs."
        )
    model.label_overrides = 0
    if model.score_output is not None:
        sums = scores.sum(dim=1)
        probabilities = bool(
            (scores >= 0).all()
            and (scores <= 1).all()
            and ((sums - 1).abs() <= _PROBABILITY_TOLERANCE).all()
        )
        model.score_kind = "probabilities" if probabilities else "scores"


def _labels(raw: Any, count: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (count,):
        raise ModelFormatError(
            "bad_output_shape",
            f"The graph's label output has shape {list(labels.shape)} for {count} inputs; "
            f"expected [{count}].",
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ModelFormatError(
            "bad_output_labels",
            f"The graph predicted labels in [{labels.min()}, {labels.max()}]; with "
            f"num_classes={num_classes} they must lie in [0, {num_classes - 1}].",
        )
    return labels.astype(np.int64)


def _tensor_scores(raw: Any, count: int, num_classes: int) -> np.ndarray:
    scores = np.asarray(raw)
    if scores.shape != (count, num_classes):
        raise ModelFormatError(
            "bad_output_shape",
            f"The graph returned scores of shape {list(scores.shape)} for {count} inputs, "
            f"expected [{count}, {num_classes}] ([batch, num_classes] with "
            f"num_classes={num_classes}).",
        )
    return scores.astype(np.float32)


def _map_scores(raw: Any, count: int, num_classes: int) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != count:
        raise ModelFormatError(
            "bad_output_shape",
            f"The graph's score output is not one map per input ({count} inputs).",
        )
    scores = np.zeros((count, num_classes), dtype=np.float32)
    for row, mapping in enumerate(raw):
        for key, value in mapping.items():
            if not 0 <= int(key) < num_classes:
                raise ModelFormatError(
                    "bad_output_labels",
                    f"The graph scores class {key}; with num_classes={num_classes} classes "
                    f"are 0..{num_classes - 1}.",
                )
            scores[row, int(key)] = value
    return scores


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    encoded = np.zeros((labels.shape[0], num_classes), dtype=np.float32)
    encoded[np.arange(labels.shape[0]), labels] = 1.0
    return encoded


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph, of its subgraphs and of its local functions."""
    yield from _graph_nodes(model.graph)
    for function in model.functions:
        for node in function.node:
            yield node
            yield from _subgraph_nodes(node)


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        yield from _subgraph_nodes(node)


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield from _graph_nodes(attribute.g)
        for subgraph in attribute.graphs:
            yield from _graph_nodes(subgraph)


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every stored tensor: initializers (dense and sparse) and tensor attributes, in the
    graph, its subgraphs and its local functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("sparse_tensor"):
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        for sparse in attribute.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for subgraph in attribute.graphs:
            yield from _graph_tensors(subgraph)


def _check_external_data(model: onnx.ModelProto) -> None:
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ModelFormatError(
                "onnx_external_data",
                f"ONNX tensor {tensor.name!r} is stored as external data; upload a single "
                "self-contained .onnx file (onnx.save_model(..., save_as_external_data=False)); "
                "external data files are refused.",
            )


def _check_domains(model: onnx.ModelProto) -> None:
    unknown = sorted(
        {
            f"{node.op_type!r} (domain {node.domain!r})"
            for node in _all_nodes(model)
            if node.domain not in ALLOWED_DOMAINS
        }
    )
    if unknown:
        raise ModelFormatError(
            "onnx_unknown_domain",
            f"The ONNX graph uses ops outside the ai.onnx and ai.onnx.ml domains: "
            f"{', '.join(unknown)}; custom operators are refused.",
        )


def _shortened(message: str, limit: int = 500) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."
