"""Black-box models: skl2onnx exports and ordinary ONNX graphs run in onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from adversarial.errors import ModelFormatError
from adversarial.models.blackbox import (
    BlackBoxModel,
    NotDifferentiableError,
    is_differentiable,
    is_ml_domain_graph,
    load_black_box,
)
from adversarial.models.wrapper import InputSpaceModel
from tests.model_files import digits_onnx
from tests.sklearn_models import SKLEARN_MODELS, fitted, sklearn_onnx
from tests.trained import digits_arrays, trained_digits_cnn

SHAPE = (1, 8, 8)


def _load(data: bytes, **options: object) -> BlackBoxModel:
    options = {"input_shape": SHAPE, "num_classes": 10, **options}
    return load_black_box(data, **options)  # type: ignore[arg-type]


def _code(data: bytes, **options: object) -> str:
    with pytest.raises(ModelFormatError) as caught:
        _load(data, **options)
    return caught.value.code


@pytest.fixture(scope="module")
def test_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The clean test digits and the same with seeded uniform noise of 0.1 (clipped)."""
    _, _, x_test, _ = digits_arrays()
    generator = torch.Generator().manual_seed(0)
    noisy = (x_test + 0.2 * torch.rand(x_test.shape, generator=generator) - 0.1).clamp(0, 1)
    return x_test, noisy


@pytest.mark.parametrize("name", SKLEARN_MODELS)
@pytest.mark.parametrize("zipmap", [True, False])
def test_predictions_equal_scikit_learns(name: str, zipmap: bool, test_inputs) -> None:
    model = _load(sklearn_onnx(name, zipmap=zipmap))
    estimator = fitted(name)
    for x in test_inputs:
        with torch.no_grad():
            scores = model(x)
        assert scores.dtype == torch.float32
        assert scores.shape == (x.shape[0], 10)
        expected = estimator.predict(x.flatten(1).numpy())
        np.testing.assert_array_equal(scores.argmax(dim=1).numpy(), expected)
    assert model.score_kind == ("scores" if name == "svc" else "probabilities")
    assert not is_differentiable(model)


def test_probabilities_are_the_estimators_where_they_agree_with_its_label(test_inputs) -> None:
    x, _ = test_inputs
    model = _load(sklearn_onnx("logistic_regression"))
    with torch.no_grad():
        scores = model(x).numpy()
    expected = fitted("logistic_regression").predict_proba(x.flatten(1).numpy())
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert model.label_overrides == 0


def test_an_svc_whose_scores_disagree_with_its_votes_predicts_its_label(test_inputs) -> None:
    # SVC predicts by one-vs-one votes; its decision values are aggregated separately and, on
    # a few rows, have their argmax elsewhere. Those rows become the label's one-hot.
    x, noisy = test_inputs
    model = _load(sklearn_onnx("svc"))
    estimator = fitted("svc")
    inputs = torch.cat([x, noisy])
    decision = estimator.decision_function(inputs.flatten(1).numpy())
    disagreeing = decision.argmax(axis=1) != estimator.predict(inputs.flatten(1).numpy())
    assert disagreeing.any(), "the data no longer shows the case this test is about"
    with torch.no_grad():
        scores = model(inputs).numpy()
    assert model.label_overrides == int(disagreeing.sum())
    labels = estimator.predict(inputs.flatten(1).numpy())
    np.testing.assert_array_equal(scores[disagreeing], np.eye(10)[labels[disagreeing]])
    np.testing.assert_allclose(scores[~disagreeing], decision[~disagreeing], atol=1e-4)


@pytest.mark.parametrize("call", ["backward", "autograd.grad"])
def test_a_gradient_through_a_black_box_raises_a_clear_error(call: str) -> None:
    model = _load(sklearn_onnx("decision_tree"))
    x = torch.rand(3, *SHAPE, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    differentiate = loss.backward if call == "backward" else lambda: torch.autograd.grad(loss, x)
    with pytest.raises(NotDifferentiableError) as caught:
        differentiate()
    assert caught.value.code == "black_box_gradient"
    assert "black box" in caught.value.message


def test_wrapped_black_boxes_are_still_not_differentiable() -> None:
    wrapped = InputSpaceModel(
        _load(sklearn_onnx("knn")), input_shape=SHAPE, num_classes=10, normalization=((0.5,), (1,))
    )
    assert not is_differentiable(wrapped)
    assert is_differentiable(trained_digits_cnn())


def test_ml_domain_graphs_are_recognised() -> None:
    assert is_ml_domain_graph(sklearn_onnx("logistic_regression", zipmap=False))
    assert not is_ml_domain_graph(digits_onnx())
    assert not is_ml_domain_graph(b"not an onnx file")


def test_an_ordinary_onnx_network_runs_as_a_black_box(test_inputs) -> None:
    x, _ = test_inputs
    model = _load(digits_onnx())
    with torch.no_grad():
        expected = trained_digits_cnn()(x)
        scores = model(x)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert model.score_kind == "scores"
    assert model.label_output is None


def test_a_fixed_batch_export_runs_at_any_batch_size(test_inputs) -> None:
    x, _ = test_inputs
    fixed = onnx_bytes_fixed_batch()
    model = _load(fixed)
    assert model.fixed_batch == 1
    with torch.no_grad():
        torch.testing.assert_close(model(x[:7]), trained_digits_cnn()(x[:7]), atol=1e-4, rtol=1e-4)


def onnx_bytes_fixed_batch() -> bytes:
    """The trained digits CNN exported without a dynamic batch axis (batch 1)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(trained_digits_cnn(), (torch.rand(1, *SHAPE),), buffer, dynamo=False)
    return buffer.getvalue()


# --- refusals ------------------------------------------------------------------------------


def _graph(
    nodes: list[onnx.NodeProto],
    *,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[TensorProto] | None = None,
    opsets: dict[str, int] | None = None,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializers or [],
    )
    imports = [
        helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 17}).items()
    ]
    return helper.make_model(graph, opset_imports=imports, ir_version=8).SerializeToString()


def _weights(value: float = 0.01) -> TensorProto:
    return numpy_helper.from_array(np.full((64, 10), value, dtype=np.float32), "w")


def test_a_plain_graph_built_by_hand_loads() -> None:
    model = _load(
        _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[_weights()])
    )
    with torch.no_grad():
        assert model(torch.ones(2, *SHAPE)).shape == (2, 10)


def test_a_custom_domain_is_refused() -> None:
    data = _graph(
        [
            helper.make_node("Gelu", ["x"], ["h"], domain="com.microsoft"),
            helper.make_node("MatMul", ["h", "w"], ["y"]),
        ],
        initializers=[_weights()],
        opsets={"": 17, "com.microsoft": 1},
    )
    assert _code(data) == "onnx_unknown_domain"


def test_external_data_is_refused() -> None:
    weights = _weights()
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    data = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[weights])
    assert _code(data) == "onnx_external_data"


def test_the_size_cap_comes_first() -> None:
    assert _code(b"x" * 100, max_bytes=99) == "too_large"


def test_a_graph_that_does_not_take_the_declared_input_is_refused() -> None:
    data = sklearn_onnx("logistic_regression")
    with pytest.raises(ModelFormatError) as caught:
        load_black_box(data, input_shape=(1, 4, 4), num_classes=10)
    assert caught.value.code == "onnx_bad_input"
    assert "[N, 16]" in caught.value.message


def test_an_integer_input_is_refused() -> None:
    data = _graph(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["xf", "w"], ["y"]),
        ],
        inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 64])],
        initializers=[_weights()],
    )
    assert _code(data) == "onnx_bad_input"


def test_wrong_number_of_classes_is_refused() -> None:
    assert _code(sklearn_onnx("logistic_regression", zipmap=False), num_classes=12) == (
        "bad_output_shape"
    )
    assert _code(sklearn_onnx("logistic_regression"), num_classes=5) == "bad_output_labels"


def test_non_finite_scores_are_refused() -> None:
    data = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Log", ["h"], ["y"])],
        initializers=[_weights(-0.01)],
    )
    assert _code(data) == "non_finite_output"


def test_string_labels_are_refused() -> None:
    x_train, y_train, _, _ = digits_arrays()
    names = np.array([f"digit{label}" for label in y_train.numpy()])
    estimator = LogisticRegression(max_iter=200).fit(x_train.flatten(1).numpy(), names)
    graph = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, 64]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    assert _code(graph.SerializeToString()) == "onnx_string_labels"


def test_garbage_is_refused() -> None:
    assert _code(b"\x00\x01 not onnx") == "onnx_invalid"
