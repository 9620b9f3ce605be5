"""The ONNX interpreter: exported classifiers match PyTorch, hand-built ops match onnx's
reference evaluator, and bad files are refused with stable error codes.

Resource budgets have their own tests (test_budgets.py)."""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from adversarial.errors import ModelFormatError
from adversarial.models.onnx import OnnxGraphModule, load_onnx, supported_ops

try:
    from onnx.reference import ReferenceEvaluator
except ImportError:  # pragma: no cover - onnx >= 1.13 ships it
    ReferenceEvaluator = None

EXPORT_BATCH = 2
EVAL_BATCH = 5
ATOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Seeded classifiers
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.LayerNorm(32),
            nn.GELU(),
            nn.Dropout(0.5),
            nn.Linear(32, 16),
            nn.ELU(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A BatchNorm that no convolution precedes survives export as BatchNormalization.
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        x = self.avg(self.pool(F.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(x, 1))


class BranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.conv_b = nn.Conv2d(4, 2, 1)
        self.prelu = nn.PReLU(4)
        self.fc = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), 0.1)
        a = self.prelu(self.conv_a(x))
        b = torch.sigmoid(self.conv_b(x)) * torch.tanh(self.conv_b(x))
        y = torch.cat([a, b], dim=1).transpose(2, 3)
        y = F.hardswish(y) + F.softplus(y) - F.hardsigmoid(y)
        return self.fc(y.reshape(y.shape[0], -1))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.relu(self.stem(x)), scale_factor=2, mode="bilinear")
        y = self.conv2(F.relu6(self.bn1(self.conv1(x))))
        x = F.relu(x + y)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (MLP, (1, 8, 8)),
    "cnn": (SmallCNN, (3, 8, 8)),
    "branch": (BranchNet, (1, 12, 12)),
    "residual": (ResidualNet, (3, 8, 8)),
    "lenet": (LeNet5, (1, 28, 28)),
}


@cache
def _model(name: str) -> nn.Module:
    factory, _ = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Non-trivial running statistics, so inference-mode BatchNorm is really tested.
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
    return model.eval()


def _inputs(name: str, batch: int, seed: int = 0) -> torch.Tensor:
    _, shape = MODELS[name]
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


@cache
def _export(name: str, opset: int, dynamo: bool, dynamic_batch: bool) -> bytes:
    model = _model(name)
    batch = EXPORT_BATCH if dynamic_batch else 1
    x = _inputs(name, batch, seed=7)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
            torch.onnx.export(
                model,
                (x,),
                f,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=shapes,
                verbose=False,
            )
        else:
            axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(
                model,
                (x,),
                f,
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes=axes,
            )
    return f.getvalue()


def _assert_matches_torch(name: str, data: bytes, batch: int) -> OnnxGraphModule:
    model = _model(name)
    module = load_onnx(data)
    assert isinstance(module, OnnxGraphModule)
    x = _inputs(name, batch, seed=3)
    labels = torch.arange(batch) % 10

    x_ref = x.clone().requires_grad_(True)
    out_ref = model(x_ref)
    F.cross_entropy(out_ref, labels).backward()

    x_onnx = x.clone().requires_grad_(True)
    out = module(x_onnx)
    F.cross_entropy(out, labels).backward()

    assert out.shape == (batch, 10)
    torch.testing.assert_close(out, out_ref, atol=ATOL, rtol=1e-4)
    assert x_onnx.grad is not None
    assert x_ref.grad is not None
    torch.testing.assert_close(x_onnx.grad, x_ref.grad, atol=ATOL, rtol=1e-4)
    assert x_onnx.grad.abs().sum() > 0
    return module


# ----------------------------------------------------------------------------------------------
# 1. Exported classifiers
# ----------------------------------------------------------------------------------------------

TORCHSCRIPT_CASES = [(name, opset) for name in MODELS for opset in (13, 17, 20)] + [
    ("lenet", opset) for opset in (14, 15, 16, 18, 19)
]


@pytest.mark.parametrize(("name", "opset"), TORCHSCRIPT_CASES)
def test_torchscript_export_dynamic_batch_matches_torch(name: str, opset: int) -> None:
    _assert_matches_torch(name, _export(name, opset, dynamo=False, dynamic_batch=True), EVAL_BATCH)


@pytest.mark.parametrize("name", list(MODELS))
def test_dynamo_export_dynamic_batch_matches_torch(name: str) -> None:
    data = _export(name, 18, dynamo=True, dynamic_batch=True)
    batch_dim = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param
    assert not batch_dim.dim_value
    _assert_matches_torch(name, data, EVAL_BATCH)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["lenet", "branch"])
def test_fixed_batch_export_runs_at_other_batch_sizes(name: str, dynamo: bool) -> None:
    data = _export(name, 18 if dynamo else 17, dynamo=dynamo, dynamic_batch=False)
    graph_input = onnx.load_from_string(data).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_value == 1  # really a fixed batch
    for batch in (1, 3):
        _assert_matches_torch(name, data, batch)


def test_train_and_eval_modes_give_the_same_outputs() -> None:
    module = load_onnx(_export("cnn", 17, dynamo=False, dynamic_batch=True))
    x = _inputs("cnn", 4, seed=5)
    module.eval()
    expected = module(x)
    module.train()
    torch.testing.assert_close(module(x), expected, atol=0, rtol=0)


def test_initializers_are_buffers_and_follow_to() -> None:
    data = _export("lenet", 17, dynamo=False, dynamic_batch=True)
    module = load_onnx(data)
    n_initializers = len(onnx.load_from_string(data).graph.initializer)
    assert len(list(module.buffers())) >= n_initializers > 0
    module.to(torch.float64)  # stands in for .to("cuda"): every buffer must follow
    assert all(b.dtype == torch.float64 for b in module.buffers() if b.is_floating_point())


def test_ops_exported_by_torch_are_all_supported() -> None:
    ops = set(supported_ops())
    for name, opset in TORCHSCRIPT_CASES:
        model = onnx.load_from_string(_export(name, opset, dynamo=False, dynamic_batch=True))
        assert {n.op_type for n in model.graph.node} <= ops


# ----------------------------------------------------------------------------------------------
# 2. Hand-built graphs against onnx's reference evaluator
# ----------------------------------------------------------------------------------------------


def _make_model(
    nodes: Sequence[onnx.NodeProto],
    x_shape: Sequence[int],
    *,
    opset: int = 17,
    inits: dict[str, np.ndarray] | None = None,
    out_type: int = TensorProto.FLOAT,
    out_shape: Sequence[int | str] | None = None,
    x_type: int = TensorProto.FLOAT,
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    # The checker wants a shape on graph outputs; tests that do not care give it symbolically.
    if out_shape is None:
        out_shape = [f"d{i}" for i in range(len(x_shape))]
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("X", x_type, list(x_shape))],
        [helper.make_tensor_value_info("Y", out_type, list(out_shape))],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=8)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


N = helper.make_node
RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
W_CONVT = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
BIAS4 = RNG.standard_normal(4).astype(np.float32)
BIAS3 = RNG.standard_normal(3).astype(np.float32)

# (id, nodes, input shape, opset, initializers)
# fmt: off
HAND_CASES: list[tuple[str, list[onnx.NodeProto], tuple[int, ...], int, dict[str, np.ndarray]]] = [
    ("clip_inputs", [N("Clip", ["X", "lo", "hi"], ["Y"])], (3, 5), 13,
     {"lo": _f32(-0.5)[0:1].reshape(()), "hi": _f32(0.7).reshape(())}),
    ("clip_max_only", [N("Clip", ["X", "", "hi"], ["Y"])], (3, 5), 13,
     {"hi": _f32(0.2).reshape(())}),
    ("round_div_sub", [N("Mul", ["X", "k"], ["a"]), N("Round", ["a"], ["r"]),
                       N("Div", ["r", "d"], ["q"]), N("Sub", ["q", "X"], ["Y"])], (4, 6), 13,
     {"k": _f32(2.0), "d": _f32(3.0, -2.0, 0.5, 4.0, 1.0, 8.0)}),
    ("unary_chain", [N("Abs", ["X"], ["a"]), N("Sqrt", ["a"], ["b"]), N("Log", ["a"], ["c"]),
                     N("Exp", ["X"], ["d"]), N("Reciprocal", ["d"], ["e"]), N("Neg", ["e"], ["f"]),
                     N("Floor", ["X"], ["g"]), N("Ceil", ["X"], ["h"]), N("Sign", ["X"], ["i"]),
                     N("Pow", ["a", "p"], ["j"]),
                     N("Sum", ["b", "c", "f", "g", "h", "i", "j"], ["Y"])], (3, 4), 13,
     {"p": _f32(1.5)}),
    ("activations", [N("HardSigmoid", ["X"], ["a"], alpha=0.3, beta=0.4),
                     N("HardSwish", ["X"], ["b"]), N("Elu", ["X"], ["c"], alpha=0.7),
                     N("Selu", ["X"], ["d"]), N("Softplus", ["X"], ["e"]),
                     N("LeakyRelu", ["X"], ["f"], alpha=0.2), N("PRelu", ["X", "s"], ["g"]),
                     N("Erf", ["X"], ["h"]), N("Softsign", ["X"], ["i"]),
                     N("Mean", ["a", "b", "c", "d", "e", "f", "g", "h", "i"], ["Y"])],
     (2, 3, 4), 17, {"s": _f32(0.1, 0.2, 0.3, 0.4)}),
    ("gelu_opset20", [N("Gelu", ["X"], ["a"]), N("Gelu", ["X"], ["b"], approximate="tanh"),
                      N("Add", ["a", "b"], ["Y"])], (3, 7), 20, {}),
    ("min_max", [N("Max", ["X", "m"], ["a"]), N("Min", ["a", "n", "X"], ["Y"])], (3, 4), 13,
     {"m": _f32(-0.2, 0.0, 0.1, 0.3), "n": _f32(0.5)}),
    ("pad_reflect", [N("Pad", ["X", "pads"], ["Y"], mode="reflect")], (2, 3, 5), 13,
     {"pads": _i64(0, 2, 3, 0, 1, 4)}),
    ("pad_edge", [N("Pad", ["X", "pads"], ["Y"], mode="edge")], (2, 3, 4), 13,
     {"pads": _i64(0, 0, 2, 0, 3, 1)}),
    ("pad_wrap_axes_opset19", [N("Pad", ["X", "pads", "", "axes"], ["Y"], mode="wrap")],
     (2, 3, 4), 19, {"pads": _i64(1, 2, 2, 1), "axes": _i64(-2, 2)}),
    ("split_input_opset13", [N("Split", ["X", "sp"], ["a", "b", "c"], axis=1),
                             N("Concat", ["c", "a", "b"], ["Y"], axis=1)], (2, 6), 13,
     {"sp": _i64(1, 2, 3)}),
    ("split_num_outputs_opset18", [N("Split", ["X"], ["a", "b", "c"], axis=1, num_outputs=3),
                                   N("Concat", ["c", "b", "a"], ["Y"], axis=1)], (2, 7), 18, {}),
    ("split_attr_opset11", [N("Split", ["X"], ["a", "b"], axis=0, split=[1, 3]),
                            N("Concat", ["b", "a"], ["Y"], axis=0)], (4, 3), 11, {}),
    ("slice_steps", [N("Slice", ["X", "st", "en", "ax", "sp"], ["Y"])], (4, 6, 5), 13,
     {"st": _i64(-1, 1, 0), "en": _i64(-100, 2**62, 5), "ax": _i64(1, 0, 2),
      "sp": _i64(-2, 2, 2)}),
    ("gather_negative", [N("Gather", ["X", "idx"], ["Y"], axis=1)], (3, 5), 13,
     {"idx": np.array([[0, -1], [2, -4]], dtype=np.int64)}),
    ("gather_scalar", [N("Gather", ["X", "idx"], ["Y"], axis=0)], (3, 5), 13,
     {"idx": np.array(-2, dtype=np.int64)}),
    ("where_compare", [N("Greater", ["X", "z"], ["g"]), N("Less", ["X", "o"], ["l"]),
                       N("And", ["g", "l"], ["a"]), N("Not", ["a"], ["na"]),
                       N("Equal", ["na", "na"], ["e"]), N("And", ["e", "na"], ["c"]),
                       N("Mul", ["X", "X"], ["sq"]), N("Where", ["c", "sq", "X"], ["Y"])],
     (4, 5), 13, {"z": _f32(0.0), "o": _f32(0.5)}),
    ("reduce_mean_opset13", [N("ReduceMean", ["X"], ["Y"], axes=[1, -1], keepdims=0)],
     (2, 3, 4), 13, {}),
    ("reduce_mean_opset18", [N("ReduceMean", ["X", "ax"], ["Y"], keepdims=1)], (2, 3, 4), 18,
     {"ax": _i64(0, 2)}),
    ("reduce_mean_opset18_all", [N("ReduceMean", ["X"], ["Y"], keepdims=0)], (2, 3, 4), 18, {}),
    ("reduce_noop_opset18", [N("ReduceSum", ["X"], ["Y"], noop_with_empty_axes=1)], (2, 3), 18,
     {}),
    ("reduce_sum_attr_opset11", [N("ReduceSum", ["X"], ["Y"], axes=[1])], (2, 3, 4), 11, {}),
    ("reduce_sum_input_opset13", [N("ReduceSum", ["X", "ax"], ["Y"], keepdims=0)], (2, 3, 4),
     13, {"ax": _i64(-1)}),
    ("reduce_max_min_l2", [N("ReduceMax", ["X"], ["a"], axes=[1]),
                           N("ReduceMin", ["X"], ["b"], axes=[1]),
                           N("ReduceL2", ["X"], ["c"], axes=[1]),
                           N("ReduceLogSumExp", ["X"], ["d"], axes=[1]),
                           N("Sum", ["a", "b", "c", "d"], ["Y"])], (2, 3, 4), 13, {}),
    ("softmax_opset13", [N("Softmax", ["X"], ["Y"], axis=1)], (2, 3, 4), 13, {}),
    ("log_softmax", [N("LogSoftmax", ["X"], ["Y"])], (3, 6), 13, {}),
    ("conv_same_upper_groups", [N("Conv", ["X", "w", "b"], ["Y"], auto_pad="SAME_UPPER",
                                  strides=[2, 2], group=2)], (2, 4, 7, 6), 13,
     {"w": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32), "b": BIAS4}),
    ("conv_asym_pads_dilation", [N("Conv", ["X", "w"], ["Y"], pads=[1, 0, 2, 1],
                                   dilations=[2, 1])], (1, 2, 9, 8), 13, {"w": W_CONV}),
    ("conv1d_valid", [N("Conv", ["X", "w"], ["Y"], auto_pad="VALID", strides=[2])], (2, 3, 9),
     13, {"w": RNG.standard_normal((4, 3, 3)).astype(np.float32)}),
    ("conv_transpose_same_upper", [N("ConvTranspose", ["X", "w"], ["Y"], strides=[2, 2],
                                     auto_pad="SAME_UPPER")], (1, 2, 4, 5), 13, {"w": W_CONVT}),
    ("conv_transpose", [N("ConvTranspose", ["X", "w", "b"], ["Y"], strides=[2, 2],
                          pads=[1, 0, 0, 1], output_padding=[1, 1])], (1, 2, 4, 5), 13,
     {"w": W_CONVT, "b": BIAS3}),
    ("maxpool_ceil_pads_dilation", [N("MaxPool", ["X"], ["Y"], kernel_shape=[3, 2],
                                      strides=[2, 2], pads=[1, 0, 1, 1], dilations=[1, 2],
                                      ceil_mode=1)], (2, 3, 9, 8), 13, {}),
    ("maxpool_same_upper", [N("MaxPool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                              auto_pad="SAME_UPPER")], (1, 2, 7, 8), 13, {}),
    ("avgpool_exclude_pad", [N("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3],
                               strides=[2, 2], pads=[1, 1, 1, 1])], (1, 2, 7, 8), 13, {}),
    ("avgpool_include_pad_asym", [N("AveragePool", ["X"], ["Y"], kernel_shape=[2, 3],
                                    pads=[1, 0, 0, 2], count_include_pad=1)], (1, 2, 5, 6), 13,
     {}),
    ("avgpool_exclude_pad_asym", [N("AveragePool", ["X"], ["Y"], kernel_shape=[2, 3],
                                    pads=[1, 0, 0, 2])], (1, 2, 5, 6), 13, {}),
    ("global_pools", [N("GlobalMaxPool", ["X"], ["a"]), N("GlobalAveragePool", ["X"], ["b"]),
                      N("Sub", ["a", "b"], ["Y"])], (2, 3, 4, 5), 13, {}),
    ("batchnorm", [N("BatchNormalization", ["X", "s", "b", "m", "v"], ["Y"], epsilon=1e-3)],
     (2, 3, 4, 4), 15, {"s": _f32(0.5, 1.0, 2.0), "b": _f32(0.1, -0.2, 0.0),
                        "m": _f32(0.3, -0.1, 0.2), "v": _f32(0.9, 1.5, 0.4)}),
    ("instance_norm", [N("InstanceNormalization", ["X", "s", "b"], ["Y"])], (2, 3, 4, 4), 13,
     {"s": _f32(0.5, 1.0, 2.0), "b": _f32(0.1, -0.2, 0.0)}),
    ("layer_norm_axis1", [N("LayerNormalization", ["X", "s", "b"], ["Y"], axis=1,
                            epsilon=1e-3)], (2, 3, 4), 17,
     {"s": RNG.standard_normal((3, 4)).astype(np.float32),
      "b": RNG.standard_normal((3, 4)).astype(np.float32)}),
    ("group_norm_opset21", [N("GroupNormalization", ["X", "s", "b"], ["Y"], num_groups=2)],
     (2, 4, 3, 3), 21, {"s": _f32(0.5, 2.0, 1.0, 1.5), "b": _f32(0.1, -0.3, 0.2, 0.0)}),
    ("squeeze_unsqueeze_opset11", [N("Unsqueeze", ["X"], ["a"], axes=[0, -1]),
                                   N("Squeeze", ["a"], ["Y"], axes=[0])], (3, 4), 11, {}),
    ("squeeze_unsqueeze_opset13", [N("Unsqueeze", ["X", "ax"], ["a"]),
                                   N("Squeeze", ["a", "sq"], ["Y"])], (3, 4), 13,
     {"ax": _i64(1, 3), "sq": _i64(1)}),
    ("reshape_zero_minus_one", [N("Reshape", ["X", "s"], ["Y"])], (2, 3, 4), 13,
     {"s": _i64(0, -1, 2)}),
    ("reshape_allowzero", [N("Reshape", ["X", "s"], ["Y"], allowzero=1)], (2, 3, 4), 14,
     {"s": _i64(4, 6)}),
    ("flatten_axis2", [N("Flatten", ["X"], ["Y"], axis=2)], (2, 3, 4, 5), 13, {}),
    ("transpose_expand_tile", [N("Transpose", ["X"], ["t"], perm=[1, 0]),
                               N("Expand", ["t", "es"], ["e"]),
                               N("Tile", ["e", "rep"], ["Y"])], (3, 1), 13,
     {"es": _i64(2, 3, 1), "rep": _i64(1, 2, 1)}),
    ("shape_constant_of_shape_range", [
        N("Shape", ["X"], ["sh"], start=1),
        N("ConstantOfShape", ["sh"], ["ones"],
          value=numpy_helper.from_array(_f32(0.5), "v")),
        N("Shape", ["X"], ["last"], start=-1),
        N("Squeeze", ["last"], ["n"]),
        N("Range", ["zero", "n", "one"], ["r"]),
        N("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        N("CastLike", ["n", "X"], ["nf"]),
        N("Div", ["rf", "nf"], ["scaled"]),
        N("Mul", ["X", "ones"], ["a"]),
        N("Add", ["a", "scaled"], ["Y"])], (2, 3, 4), 15,
     {"zero": np.array(0, dtype=np.int64), "one": np.array(1, dtype=np.int64)}),
    ("dynamic_flatten_pattern", [
        N("Shape", ["X"], ["sh"]),
        N("Gather", ["sh", "zero"], ["b"], axis=0),
        N("Unsqueeze", ["b", "ax0"], ["b1"]),
        N("Concat", ["b1", "minus1"], ["target"], axis=0),
        N("Reshape", ["X", "target"], ["Y"])], (3, 2, 4), 13,
     {"zero": np.array(0, dtype=np.int64), "ax0": _i64(0), "minus1": _i64(-1)}),
    ("gemm_alpha_beta_trans", [N("Gemm", ["X", "w", "c"], ["Y"], alpha=0.5, beta=2.0,
                                 transA=1, transB=1)], (4, 3), 13,
     {"w": RNG.standard_normal((5, 4)).astype(np.float32),
      "c": RNG.standard_normal((1, 5)).astype(np.float32)}),
    ("matmul_einsum", [N("MatMul", ["X", "w"], ["a"]),
                       N("Einsum", ["a", "X"], ["Y"], equation="bij,bik->bjk")], (2, 3, 4), 13,
     {"w": RNG.standard_normal((4, 4)).astype(np.float32)}),
    ("argmax_last_index", [N("Round", ["X"], ["r"]),
                           N("ArgMax", ["r"], ["Y"], axis=1, keepdims=0,
                             select_last_index=1)], (4, 6), 13, {}),
    ("argmin", [N("ArgMin", ["X"], ["Y"], axis=-1)], (3, 5), 13, {}),
    ("mod_cumsum_trilu", [N("Mod", ["X", "m"], ["a"], fmod=1),
                          N("CumSum", ["a", "ax"], ["c"], exclusive=1, reverse=1),
                          N("Trilu", ["c"], ["Y"], upper=0)], (4, 4), 14,
     {"m": _f32(0.7), "ax": np.array(1, dtype=np.int64)}),
    ("topk_depth_to_space", [N("TopK", ["X", "k"], ["v", "i"], axis=1),
                             N("DepthToSpace", ["v"], ["Y"], blocksize=2)], (1, 6, 2, 3), 13,
     {"k": _i64(4)}),
    ("resize_nearest_asymmetric_floor", [
        N("Resize", ["X", "", "sc"], ["Y"], mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
     (1, 2, 3, 4), 13, {"sc": _f32(1, 1, 2, 1.5)}),
    ("resize_nearest_half_pixel_sizes", [N("Resize", ["X", "", "", "sz"], ["Y"])],
     (1, 2, 5, 4), 13, {"sz": _i64(1, 2, 7, 3)}),
    ("resize_linear_half_pixel", [N("Resize", ["X", "", "sc"], ["Y"], mode="linear")],
     (2, 2, 3, 4), 13, {"sc": _f32(1, 1, 2, 0.5)}),
    ("resize_linear_align_corners", [
        N("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
          coordinate_transformation_mode="align_corners")],
     (1, 2, 3, 4), 13, {"sz": _i64(1, 2, 7, 5)}),
    ("resize_linear_pytorch_half_pixel", [
        N("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
          coordinate_transformation_mode="pytorch_half_pixel")],
     (1, 2, 3, 4), 13, {"sz": _i64(1, 2, 1, 9)}),
    ("resize_cubic_exclude_outside", [
        N("Resize", ["X", "", "sc"], ["Y"], mode="cubic", exclude_outside=1,
          cubic_coeff_a=-0.5)], (1, 1, 4, 5), 13, {"sc": _f32(1, 1, 1.5, 2)}),
    ("resize_cubic_axes_opset18", [
        N("Resize", ["X", "", "sc"], ["Y"], mode="cubic", axes=[2, 3])], (1, 2, 4, 3), 18,
     {"sc": _f32(2, 1.5)}),
    ("resize_keep_aspect_opset18", [
        N("Resize", ["X", "", "", "sz"], ["Y"], mode="linear", axes=[2, 3],
          keep_aspect_ratio_policy="not_larger")], (1, 2, 4, 6), 18, {"sz": _i64(8, 8)}),
    ("maxpool_indices", [N("MaxPool", ["X"], ["v", "Y"], kernel_shape=[2, 2], strides=[2, 2])],
     (2, 3, 4, 6), 13, {}),
    ("constant_node_forms", [
        N("Constant", [], ["scale"], value_floats=[0.5, -1.0, 2.0]),
        N("Constant", [], ["shift"], value_float=0.25),
        N("Constant", [], ["target"], value_ints=[0, -1]),
        N("Mul", ["X", "scale"], ["a"]), N("Add", ["a", "shift"], ["b"]),
        N("Reshape", ["b", "target"], ["Y"])], (2, 4, 3), 13, {}),
    ("more_unary_opset18", [
        N("Celu", ["X"], ["a"], alpha=0.8), N("ThresholdedRelu", ["X"], ["b"], alpha=0.3),
        N("Mish", ["X"], ["c"]), N("Hardmax", ["X"], ["d"], axis=1), N("Atan", ["X"], ["e"]),
        N("Sinh", ["X"], ["f"]), N("Asinh", ["X"], ["g"]), N("Cosh", ["X"], ["h"]),
        N("Tan", ["X"], ["i"]), N("Sum", ["a", "b", "c", "d", "e", "f", "g", "h", "i"], ["Y"])],
     (3, 5), 18, {}),
    ("more_reductions", [
        N("ReduceL1", ["X"], ["a"], axes=[1]), N("ReduceSumSquare", ["X"], ["b"], axes=[1]),
        N("ReduceProd", ["X"], ["c"], axes=[1]), N("Abs", ["X"], ["ab"]),
        N("ReduceLogSum", ["ab"], ["d"], axes=[1]), N("Sum", ["a", "b", "c", "d"], ["Y"])],
     (2, 3, 4), 13, {}),
    ("bool_logic", [
        N("Div", ["X", "zero"], ["inf"]), N("IsInf", ["inf"], ["pos"], detect_negative=0),
        N("Sub", ["inf", "inf"], ["nan"]), N("IsNaN", ["nan"], ["isnan"]),
        N("Or", ["pos", "isnan"], ["o"]), N("Xor", ["o", "pos"], ["xo"]),
        N("LessOrEqual", ["X", "zero"], ["le"]), N("GreaterOrEqual", ["X", "zero"], ["ge"]),
        N("And", ["le", "ge"], ["eq0"]), N("Or", ["xo", "eq0"], ["c"]),
        N("Where", ["c", "X", "zero"], ["Y"])], (3, 4), 13, {"zero": _f32(0.0)}),
    ("gather_elements_nd", [
        N("GatherElements", ["X", "ie"], ["a"], axis=1), N("GatherND", ["X", "ind"], ["b"]),
        N("Concat", ["a", "b"], ["Y"], axis=1)], (3, 4), 13,
     {"ie": np.array([[0, -1], [2, 1], [3, 3]], dtype=np.int64),
      "ind": np.array([[0, 1], [2, -1], [1, 0]], dtype=np.int64)[:, None, :].repeat(1, 1)}),
    ("onehot_from_argmax", [
        N("ArgMax", ["X"], ["am"], axis=1, keepdims=0),
        N("OneHot", ["am", "depth", "vals"], ["Y"], axis=-1)], (4, 5), 13,
     {"depth": np.array(6, dtype=np.int64), "vals": _f32(-1.0, 3.0)}),
    ("nonzero", [N("Relu", ["X"], ["r"]), N("NonZero", ["r"], ["Y"])], (3, 4), 13, {}),
    ("space_to_depth", [N("SpaceToDepth", ["X"], ["Y"], blocksize=2)], (1, 2, 4, 6), 13, {}),
    ("dropout_identity", [N("Dropout", ["X"], ["d", "mask"]), N("Identity", ["d"], ["Y"])],
     (2, 3), 13, {}),
    ("trig_opset22", [N("Sin", ["X"], ["a"]), N("Cos", ["X"], ["b"]), N("Tanh", ["X"], ["c"]),
                      N("Sigmoid", ["X"], ["d"]), N("Relu", ["X"], ["e"]),
                      N("Sum", ["a", "b", "c", "d", "e"], ["Y"])], (3, 4), 22, {}),
]
# fmt: on

INT_OUTPUT = {"argmax_last_index", "argmin", "maxpool_indices", "nonzero"}


def _ids(cases: Sequence[tuple[object, ...]]) -> list[str]:
    return [str(c[0]) for c in cases]


@pytest.mark.skipif(ReferenceEvaluator is None, reason="onnx.reference is not available")
@pytest.mark.parametrize(
    ("case_id", "nodes", "shape", "opset", "inits"), HAND_CASES, ids=_ids(HAND_CASES)
)
def test_hand_built_graph_matches_reference(
    case_id: str,
    nodes: list[onnx.NodeProto],
    shape: tuple[int, ...],
    opset: int,
    inits: dict[str, np.ndarray],
) -> None:
    out_type = TensorProto.INT64 if case_id in INT_OUTPUT else TensorProto.FLOAT
    model = _make_model(nodes, shape, opset=opset, inits=inits, out_type=out_type)
    x = np.random.default_rng(zlib.crc32(case_id.encode())).standard_normal(shape)
    x = (x * 1.5).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # bool_logic divides by zero
        (expected,) = ReferenceEvaluator(model).run(None, {"X": x})[:1]
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("Y", out_type, list(expected.shape))
    )
    module = load_onnx(model.SerializeToString())
    got = module(torch.from_numpy(x)).detach().numpy()
    assert got.shape == expected.shape
    if case_id in INT_OUTPUT:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def _softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _lrn_np(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    # Straight from the ONNX spec; onnx's reference LRN loops over the batch axis instead.
    channels = x.shape[1]
    square_sum = np.zeros_like(x)
    for c in range(channels):
        lo = max(0, c - (size - 1) // 2)
        hi = min(channels - 1, c + -(-(size - 1) // 2))
        square_sum[:, c] = (x[:, lo : hi + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


def _reference_of(nodes: list[onnx.NodeProto]) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        model = _make_model(nodes, x.shape, opset=13, inits={"w": W_CONVT})
        return np.asarray(ReferenceEvaluator(model).run(None, {"X": x})[0])

    return run


# Cases where onnx's reference evaluator cannot serve (negative pads, pre-13 Softmax semantics,
# a known LRN bug, ConvTranspose output_shape): an independent numpy or equivalent-graph result.
# fmt: off
NUMPY_CASES: list[
    tuple[str, list[onnx.NodeProto], tuple[int, ...], int, dict[str, np.ndarray],
          Callable[[np.ndarray], np.ndarray]]
] = [
    ("pad_constant_negative", [N("Pad", ["X", "pads", "v"], ["Y"])], (2, 3, 4), 13,
     {"pads": _i64(0, 1, -1, 0, 2, 1), "v": _f32(1.5).reshape(())},
     lambda x: np.pad(x[:, :, 1:], ((0, 0), (1, 2), (0, 1)), constant_values=1.5)),
    ("softmax_opset11_coerced", [N("Softmax", ["X"], ["Y"], axis=1)], (2, 3, 4), 11, {},
     lambda x: _softmax_np(x.reshape(2, 12), 1).reshape(2, 3, 4)),
    ("log_softmax_opset11_default_axis", [N("LogSoftmax", ["X"], ["Y"])], (2, 3, 4), 11, {},
     lambda x: np.log(_softmax_np(x.reshape(2, 12), 1)).reshape(2, 3, 4)),
    ("lrn_even_and_odd", [N("LRN", ["X"], ["a"], size=2, alpha=0.01, beta=0.6),
                          N("LRN", ["X"], ["b"], size=3), N("Add", ["a", "b"], ["Y"])],
     (2, 5, 3, 3), 13, {},
     lambda x: _lrn_np(x, 2, 0.01, 0.6, 1.0) + _lrn_np(x, 3, 1e-4, 0.75, 1.0)),
    # output_shape [9, 10] from a 4x5 input, stride 2, kernel 3: the full 9x11 result loses one
    # column at the start (ONNX puts the odd padding first unless auto_pad is SAME_UPPER).
    ("conv_transpose_output_shape", [N("ConvTranspose", ["X", "w"], ["Y"], strides=[2, 2],
                                       output_shape=[9, 10])], (1, 2, 4, 5), 13, {"w": W_CONVT},
     _reference_of([N("ConvTranspose", ["X", "w"], ["Y"], strides=[2, 2], pads=[0, 1, 0, 0])])),
]
# fmt: on


@pytest.mark.skipif(ReferenceEvaluator is None, reason="onnx.reference is not available")
@pytest.mark.parametrize(
    ("case_id", "nodes", "shape", "opset", "inits", "reference"), NUMPY_CASES, ids=_ids(NUMPY_CASES)
)
def test_hand_built_graph_matches_numpy(
    case_id: str,
    nodes: list[onnx.NodeProto],
    shape: tuple[int, ...],
    opset: int,
    inits: dict[str, np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
) -> None:
    x = np.random.default_rng(zlib.crc32(case_id.encode())).standard_normal(shape)
    x = x.astype(np.float32)
    expected = reference(x)
    model = _make_model(nodes, shape, opset=opset, inits=inits, out_shape=expected.shape)
    got = load_onnx(model.SerializeToString())(torch.from_numpy(x)).detach().numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_round_is_half_to_even() -> None:
    model = _make_model([N("Round", ["X"], ["Y"])], (6,))
    module = load_onnx(model.SerializeToString())
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4])
    assert module(x).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 2.0]


def test_integer_div_truncates_like_onnx() -> None:
    nodes = [N("Cast", ["X"], ["i"], to=TensorProto.INT64), N("Div", ["i", "d"], ["Y"])]
    model = _make_model(nodes, (4,), inits={"d": _i64(2)}, out_type=TensorProto.INT64)
    out = load_onnx(model.SerializeToString())(torch.tensor([7.0, -7.0, 5.9, -5.9]))
    assert out.tolist() == [3, -3, 2, -2]


def test_hand_built_graph_gradients_match_finite_differences() -> None:
    nodes = [
        N("Pad", ["X", "pads"], ["p"], mode="reflect"),
        N("Slice", ["p", "st", "en", "ax", "sp"], ["s"]),
        N("Clip", ["s", "lo", "hi"], ["c"]),
        N("HardSigmoid", ["c"], ["h"]),
        N("Gather", ["h", "idx"], ["g"], axis=1),
        N("Greater", ["g", "half"], ["m"]),
        N("Mul", ["g", "g"], ["sq"]),
        N("Where", ["m", "sq", "g"], ["w"]),
        N("ReduceMean", ["w", "ax1"], ["r"], keepdims=0),
        N("Softmax", ["r"], ["Y"], axis=-1),
    ]
    inits = {
        "pads": _i64(0, 1, 0, 2),
        "st": _i64(-1),
        "en": _i64(-100),
        "ax": _i64(1),
        "sp": _i64(-1),
        "lo": np.array(-1.5),
        "hi": np.array(1.5),
        "idx": np.array([0, 2, -1], dtype=np.int64),
        "half": np.array(0.6),
        "ax1": _i64(1),
    }
    model = _make_model(
        nodes, (2, 6), opset=18, inits=inits, x_type=TensorProto.DOUBLE, out_type=TensorProto.DOUBLE
    )
    module = load_onnx(model.SerializeToString())
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: module(t).sum(dim=0) * torch.arange(1.0, 3.0, dtype=torch.float64), (x,)
    )


def test_local_functions_in_custom_domains_are_inlined() -> None:
    function = helper.make_function(
        "pkg.example.torch",
        "ScaledRelu",
        ["A"],
        ["B"],
        [N("Relu", ["A"], ["r"]), N("Mul", ["r", "r"], ["B"])],
        [helper.make_opsetid("", 17)],
    )
    node = N("ScaledRelu", ["X"], ["Y"], domain="pkg.example.torch")
    model = _make_model(
        [node], (2, 3), functions=[function], extra_opsets=[("pkg.example.torch", 1)]
    )
    module = load_onnx(model.SerializeToString())
    x = torch.tensor([[-1.0, 2.0, 3.0], [0.5, -0.5, 0.0]])
    torch.testing.assert_close(module(x), torch.relu(x) ** 2)


def test_fixed_batch_reshape_constant_uses_the_input_batch() -> None:
    nodes = [N("Reshape", ["X", "s"], ["r"]), N("MatMul", ["r", "w"], ["Y"])]
    w = RNG.standard_normal((12, 2)).astype(np.float32)
    model = _make_model(nodes, (1, 3, 4), inits={"s": _i64(1, -1), "w": w})
    module = load_onnx(model.SerializeToString())
    x = torch.randn(4, 3, 4)
    torch.testing.assert_close(module(x), x.reshape(4, -1) @ torch.from_numpy(w))


def test_fixed_batch_rewrite_leaves_constant_reshapes_alone() -> None:
    # The constant has 3 rows, like the batch below: only data computed from X is rewritten.
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [N("Reshape", ["w", "s"], ["r"]), N("Add", ["X", "r"], ["Y"])]
    model = _make_model(nodes, (1, 12), inits={"s": _i64(1, 12), "w": w})
    x = torch.randn(3, 12)
    out = load_onnx(model.SerializeToString())(x)
    torch.testing.assert_close(out, x + torch.from_numpy(w).reshape(1, 12))


# ----------------------------------------------------------------------------------------------
# 3. Refusals
# ----------------------------------------------------------------------------------------------


def _code(data: bytes, **kwargs: int) -> ModelFormatError:
    with pytest.raises(ModelFormatError) as info:
        load_onnx(data, **kwargs)
    return info.value


def test_unsupported_standard_op_is_named() -> None:
    node = N("NonMaxSuppression", ["X", "X"], ["Y"])
    model = _make_model([node], (1, 4, 4), out_type=TensorProto.INT64)
    err = _code(model.SerializeToString())
    assert err.code == "unsupported_op"
    assert "'NonMaxSuppression'" in err.message
    assert "ai.onnx" in err.message
    assert "opset 17" in err.message
    assert "supported ops:" in err.message
    assert "Conv" in err.message


def test_made_up_op_is_unsupported() -> None:
    model = _make_model([N("Relu", ["X"], ["a"]), N("FrobnicateTensor", ["a"], ["Y"])], (2, 3))
    err = _code(model.SerializeToString())
    assert err.code == "unsupported_op"
    assert "FrobnicateTensor" in err.message


def test_ml_domain_is_refused() -> None:
    node = N(
        "LinearClassifier",
        ["X"],
        ["label", "Y"],
        domain="ai.onnx.ml",
        coefficients=[0.1, 0.2, 0.3, -0.1, -0.2, -0.3],
        intercepts=[0.0, 0.1],
        classlabels_ints=[0, 1],
    )
    model = _make_model([node], (1, 3), extra_opsets=[("ai.onnx.ml", 3)])
    err = _code(model.SerializeToString())
    assert err.code == "onnx_ml_domain"
    assert "cannot be differentiated" in err.message
    assert "LinearClassifier" in err.message


def test_custom_domain_is_refused() -> None:
    node = N("FancyActivation", ["X"], ["Y"], domain="com.example.custom")
    model = _make_model([node], (1, 3), extra_opsets=[("com.example.custom", 1)])
    err = _code(model.SerializeToString())
    assert err.code == "onnx_unknown_domain"
    assert "com.example.custom" in err.message
    assert "FancyActivation" in err.message


def test_external_data_is_refused() -> None:
    model = _make_model(
        [N("Add", ["X", "w"], ["Y"])], (2, 3), inits={"w": np.ones((2, 3), dtype=np.float32)}
    )
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    err = _code(model.SerializeToString())
    assert err.code == "onnx_external_data"


def test_external_data_in_constant_node_is_refused() -> None:
    value = numpy_helper.from_array(np.ones(3, dtype=np.float32), "c")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    model = _make_model(
        [N("Constant", [], ["c"], value=value), N("Add", ["X", "c"], ["Y"])], (2, 3)
    )
    assert _code(model.SerializeToString()).code == "onnx_external_data"


@pytest.mark.parametrize(
    "data", [b"", b"\x00\xff garbage, not protobuf \xff" * 20, b"PK\x03\x04" + bytes(100)]
)
def test_garbage_bytes_are_invalid(data: bytes) -> None:
    assert _code(data).code == "onnx_invalid"


def test_two_graph_inputs_are_invalid() -> None:
    graph = helper.make_graph(
        [N("Add", ["X", "Z"], ["Y"])],
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, 3]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    err = _code(model.SerializeToString())
    assert err.code == "onnx_invalid"
    assert "exactly one input" in err.message


@pytest.mark.parametrize("opset", [9, 30])
def test_opset_out_of_range_is_invalid(opset: int) -> None:
    model = _make_model([N("Relu", ["X"], ["Y"])], (2, 3), opset=opset)
    err = _code(model.SerializeToString())
    assert err.code == "onnx_invalid"
    assert f"opset {opset}" in err.message


def test_too_large_is_checked_before_parsing() -> None:
    err = _code(b"\x00" * 2000, max_bytes=1000)
    assert err.code == "too_large"
    data = _make_model([N("Relu", ["X"], ["Y"])], (2, 3)).SerializeToString()
    assert isinstance(load_onnx(data, max_bytes=len(data)), OnnxGraphModule)


def test_optional_output_it_does_not_compute_is_refused() -> None:
    bn = N(
        "BatchNormalization",
        ["X", "s", "b", "m", "v"],
        ["y", "running_mean", "running_var"],
        training_mode=0,
    )
    nodes = [bn, N("Add", ["y", "running_mean"], ["Y"])]
    stats = {k: _f32(1.0, 1.0) for k in ("s", "b", "m", "v")}
    model = _make_model(nodes, (2, 2), opset=15, inits=stats)
    module = load_onnx(model.SerializeToString())
    with pytest.raises(ModelFormatError) as info:
        module(torch.zeros(2, 2))
    assert info.value.code == "unsupported_op"
    assert "running_mean" in info.value.message


def test_huge_constant_of_shape_is_refused_at_load_time() -> None:
    nodes = [N("ConstantOfShape", ["s"], ["z"]), N("Add", ["X", "z"], ["Y"])]
    model = _make_model(nodes, (2, 3), inits={"s": _i64(1 << 20, 1 << 20, 3)})
    err = _code(model.SerializeToString())
    assert err.code == "model_too_large"
    assert "ConstantOfShape" in err.message


def test_shape_mismatch_at_run_time_names_the_node() -> None:
    model = _make_model(
        [N("MatMul", ["X", "w"], ["Y"], name="fc")],
        (2, 3),
        inits={"w": np.ones((3, 4), dtype=np.float32)},
    )
    module = load_onnx(model.SerializeToString())
    with pytest.raises(ModelFormatError) as info:
        module(torch.zeros(2, 5))
    assert info.value.code == "onnx_invalid"
    assert "'fc'" in info.value.message
    assert "MatMul" in info.value.message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda() -> None:
    module = load_onnx(_export("lenet", 17, dynamo=False, dynamic_batch=False)).to("cuda")
    x = _inputs("lenet", 3).cuda().requires_grad_(True)
    out = module(x)
    F.cross_entropy(out, torch.arange(3, device="cuda")).backward()
    expected = _model("lenet")(_inputs("lenet", 3))
    torch.testing.assert_close(out.cpu(), expected, atol=1e-4, rtol=1e-4)
    assert x.grad is not None
    assert x.grad.device.type == "cuda"
