"""Fine-tuning an uploaded ONNX model: trainable initializers and exporting them back."""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from adversarial.errors import ModelFormatError
from adversarial.models.onnx import OnnxGraphModule, export_onnx_with_weights, load_onnx

N = helper.make_node


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A BatchNorm no convolution precedes stays a BatchNormalization node in the export.
        self.bn_in = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(self.bn_in(x))), 2)
        return self.fc(torch.flatten(x, 1))


@cache
def _tiny_cnn_onnx() -> bytes:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():
        model.bn_in.running_mean.fill_(0.2)
        model.bn_in.running_var.fill_(0.5)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 1, 8, 8),),
            buffer,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return buffer.getvalue()


def _inputs(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _stored(data: bytes) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load_from_string(data).graph.initializer}


def _names_by_op(data: bytes) -> dict[str, list[str]]:
    nodes = onnx.load_from_string(data).graph.node
    return {node.op_type: list(node.input) for node in nodes}


def _fine_tune(module: OnnxGraphModule, parameters: list[nn.Parameter]) -> None:
    optimizer = torch.optim.SGD(parameters, lr=0.5)
    labels = torch.arange(16) % 10
    for step in range(5):
        optimizer.zero_grad()
        F.cross_entropy(module(_inputs(16, seed=step)), labels).backward()
        optimizer.step()


def test_last_layer_is_the_final_gemm() -> None:
    data = _tiny_cnn_onnx()
    module = load_onnx(data)
    gemm = _names_by_op(data)["Gemm"]
    assert module.last_layer_initializers() == [gemm[1], gemm[2]]  # weight, bias
    assert set(module.last_layer_initializers()) == {"fc.weight", "fc.bias"}


def test_trainable_initializers_are_weights_not_statistics() -> None:
    data = _tiny_cnn_onnx()
    module = load_onnx(data)
    bn = _names_by_op(data)["BatchNormalization"]
    conv = _names_by_op(data)["Conv"]
    trainable = module.trainable_initializers()
    assert set(trainable) == {bn[1], bn[2], conv[1], conv[2], "fc.weight", "fc.bias"}
    assert bn[3] not in trainable  # running mean
    assert bn[4] not in trainable  # running variance
    with pytest.raises(ModelFormatError) as caught:
        module.make_trainable([bn[3], "no-such-tensor"])
    assert caught.value.code == "onnx_not_trainable"
    assert "not a weight" in caught.value.message
    assert "no such initializer" in caught.value.message


def test_make_trainable_keeps_the_forward_and_lets_gradients_through() -> None:
    module = load_onnx(_tiny_cnn_onnx())
    x = _inputs(4, seed=9)
    before = module(x)
    parameters = module.make_trainable()
    assert len(parameters) == 6
    assert list(module.parameters()) == parameters
    assert module.make_trainable() == parameters  # idempotent: the same objects
    after = module(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    after.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in parameters)


def test_fine_tuned_last_layer_exports_with_the_other_weights_bit_identical() -> None:
    data = _tiny_cnn_onnx()
    module = load_onnx(data)
    names = module.last_layer_initializers()
    parameters = module.make_trainable(names)
    untouched = {name: t.clone() for name, t in module.initializers().items() if name not in names}
    _fine_tune(module, parameters)
    # Only the trainable tensors moved.
    for name, value in module.initializers().items():
        if name in untouched:
            assert torch.equal(value, untouched[name]), name

    exported = export_onnx_with_weights(data, module)

    original, written = _stored(data), _stored(exported)
    assert list(written) == list(original)
    for name, proto in written.items():
        assert list(proto.dims) == list(original[name].dims)
        assert proto.data_type == original[name].data_type
        if name in names:
            assert proto.raw_data != original[name].raw_data, name
            expected = module.initializers()[name].detach().numpy()
            np.testing.assert_array_equal(numpy_helper.to_array(proto), expected)
        else:
            assert proto.SerializeToString() == original[name].SerializeToString(), name
    # The graph itself is untouched.
    assert onnx.load_from_string(exported).graph.node == onnx.load_from_string(data).graph.node

    reloaded = load_onnx(exported)
    x = _inputs(8, seed=42)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), module(x), rtol=0, atol=0)
        assert not torch.equal(load_onnx(data)(x), module(x))


def test_exported_model_runs_in_onnxruntime_with_the_same_outputs() -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    data = _tiny_cnn_onnx()
    module = load_onnx(data)
    _fine_tune(module, module.make_trainable())
    exported = export_onnx_with_weights(data, module)
    session = onnxruntime.InferenceSession(exported, providers=["CPUExecutionProvider"])
    x = _inputs(8, seed=7)
    (ort_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(ort_out, module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_export_casts_back_to_the_stored_dtype_and_skips_unchanged_values() -> None:
    data = _tiny_cnn_onnx()
    module = load_onnx(data)
    assert export_onnx_with_weights(data, module) == onnx.load_from_string(data).SerializeToString()
    module.double()  # float64 copies of the same values: nothing changed
    assert export_onnx_with_weights(data, module) == onnx.load_from_string(data).SerializeToString()
    with torch.no_grad():
        module.initializers()["fc.bias"].add_(1.0)
    written = _stored(export_onnx_with_weights(data, module))["fc.bias"]
    assert written.data_type == TensorProto.FLOAT
    expected = numpy_helper.to_array(_stored(data)["fc.bias"]) + np.float32(1.0)
    np.testing.assert_allclose(numpy_helper.to_array(written), expected, rtol=1e-6)


def test_export_refuses_a_file_the_module_was_not_loaded_from() -> None:
    other = helper.make_model(
        helper.make_graph(
            [N("Add", ["X", "w"], ["Y"])],
            "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
            initializer=[numpy_helper.from_array(np.ones(3, np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    ).SerializeToString()
    with pytest.raises(ModelFormatError) as caught:
        export_onnx_with_weights(other, load_onnx(_tiny_cnn_onnx()))
    assert caught.value.code == "onnx_export_mismatch"


def test_last_layer_of_matmul_plus_add_includes_the_bias() -> None:
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((4, 8)).astype(np.float32),
        "w2": rng.standard_normal((10, 8)).astype(np.float32),  # stored transposed
        "b2": rng.standard_normal(10).astype(np.float32),
        "shift": np.full(10, 0.5, np.float32),
    }
    nodes = [
        N("MatMul", ["X", "w1"], ["h"]),
        N("Relu", ["h"], ["a"]),
        N("Transpose", ["w2"], ["w2t"]),
        N("MatMul", ["a", "w2t"], ["z"]),
        N("Add", ["z", "b2"], ["logits"]),
        N("Sub", ["logits", "shift"], ["Y"]),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])],
            initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    module = load_onnx(model.SerializeToString())
    assert module.last_layer_initializers() == ["w2", "b2"]
    # The Sub constant is input normalisation's kind of constant, not a weight.
    assert module.trainable_initializers() == ["w1", "w2", "b2"]


def test_graph_without_a_weight_layer_has_no_last_layer() -> None:
    model = helper.make_model(
        helper.make_graph(
            [N("Relu", ["X"], ["Y"])],
            "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(ModelFormatError) as caught:
        load_onnx(model.SerializeToString()).last_layer_initializers()
    assert caught.value.code == "onnx_not_trainable"


def test_untouched_initializers_keep_their_stored_encoding() -> None:
    # w is stored as float_data (not raw_data): an exporter that rewrote every initializer
    # would change its bytes even though its values did not change.
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12.0).tolist(), raw=False)
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    model = helper.make_model(
        helper.make_graph(
            [N("MatMul", ["X", "w"], ["z"]), N("Add", ["z", "b"], ["Y"])],
            "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
            initializer=[w, b],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    data = model.SerializeToString()
    module = load_onnx(data)
    (bias,) = module.make_trainable(["b"])
    with torch.no_grad():
        bias.add_(0.25)
    written = _stored(export_onnx_with_weights(data, module))
    assert written["w"].SerializeToString() == w.SerializeToString()
    assert list(written["w"].float_data) == np.arange(12.0).tolist()
    np.testing.assert_array_equal(numpy_helper.to_array(written["b"]), np.full(3, 0.25, np.float32))
