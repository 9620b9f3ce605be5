"""Resource budgets of the ONNX loader: hostile graphs are refused before they allocate.

The red team's full-size cases (issue #10) are loaded in a child process under an
address-space limit, so that if a guard were missing the child would fail with MemoryError
instead of taking the machine's memory. Everything else runs in this process at sizes that
are harmless even when a guard is missing: there the limits are made small instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from adversarial.errors import ModelFormatError, ModelTooLargeError
from adversarial.models.loading import ModelSpec, load_model
from adversarial.models.onnx import OnnxGraphModule, OnnxLimits, load_onnx
from adversarial.models.onnx.budgets import check_inferred_sizes
from tests.model_files import digits_onnx
from tests.trained import trained_digits_cnn

N = helper.make_node
REPO = Path(__file__).resolve().parents[3]

# --- the red team's cases, at full size -------------------------------------------------------

RED_TEAM_CASES = {
    # case: (the limit that refuses it, largest file size in bytes)
    "sparse_initializers": ("max_initializer_bytes", 8_000),
    "broadcast_add": ("max_tensor_elements", 400_000),
    "matmul_outer_product": ("max_tensor_elements", 8_000),
    "concat_blowup": ("max_tensor_elements", 8_000),
    "one_hot_depth": ("max_tensor_elements", 8_000),
    "chained_matmuls": ("max_flops_per_example", 8_000),
}


@cache
def _red_team_results() -> dict[str, dict[str, object]]:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.onnx.hostile", *RED_TEAM_CASES],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results: dict[str, dict[str, object]] = json.loads(completed.stdout)
    return results


@pytest.mark.parametrize("case", list(RED_TEAM_CASES))
def test_red_team_graph_is_refused_at_load_before_allocating(case: str) -> None:
    limit, largest_file = RED_TEAM_CASES[case]
    result = _red_team_results()[case]
    assert isinstance(result["file_bytes"], int)
    assert result["file_bytes"] < largest_file
    assert result["code"] == "model_too_large", result
    assert result["limit"] == limit
    assert f"OnnxLimits.{limit}" in str(result["message"])
    # Refused from metadata and inferred shapes: no gigabytes, no minutes.
    assert isinstance(result["peak_rss_growth_bytes"], int)
    assert result["peak_rss_growth_bytes"] < 64 * 2**20
    assert isinstance(result["seconds"], float)
    assert result["seconds"] < 5.0


# --- graph building ----------------------------------------------------------------------------


def _model(
    nodes: Sequence[onnx.NodeProto],
    *,
    x_shape: Sequence[int | str] = ("N", 4),
    inits: dict[str, np.ndarray] | None = None,
    functions: Sequence[onnx.FunctionProto] = (),
    opset: int = 18,
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> bytes:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        # The checker wants an output shape; a symbolic one of the input's rank is a claim
        # nothing relies on (inference starts from the input).
        [
            helper.make_tensor_value_info(
                "Y", TensorProto.FLOAT, [f"d{i}" for i, _ in enumerate(x_shape)]
            )
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions), ir_version=9)
    return model.SerializeToString()


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _refusal(data: bytes, **limits: int) -> ModelTooLargeError:
    with pytest.raises(ModelTooLargeError) as info:
        load_onnx(data, limits=OnnxLimits(**limits))
    assert info.value.code == "model_too_large"
    return info.value


# --- limits and the error ----------------------------------------------------------------------


def test_limits_have_documented_defaults_and_refuse_nonsense() -> None:
    limits = OnnxLimits()
    assert limits.max_initializer_bytes == 2**30
    assert limits.max_tensor_elements == 2**28
    assert limits.max_activation_elements == 2**29
    assert limits.max_flops_per_example == 2 * 10**10
    assert limits.validation_batch == 4
    with pytest.raises(ValueError, match="max_nodes"):
        OnnxLimits(max_nodes=0)
    with pytest.raises(ValueError, match="validation_batch"):
        OnnxLimits(validation_batch=True)


def test_refusal_names_the_limit_and_both_numbers() -> None:
    data = _model(
        [N("Add", ["column", "row"], ["grid"]), N("Add", ["X", "grid"], ["Y"])],
        x_shape=(100, 100),
        inits={"column": np.ones((100, 1), np.float32), "row": np.ones((1, 100), np.float32)},
    )
    error = _refusal(data, max_tensor_elements=9_999)
    assert isinstance(error, ModelFormatError)
    assert (error.limit, error.value, error.maximum) == ("max_tensor_elements", 10_000, 9_999)
    assert "[100, 100]" in error.message
    assert "OnnxLimits.max_tensor_elements" in error.message
    # One element more allowed and it loads and runs.
    module = load_onnx(data, limits=OnnxLimits(max_tensor_elements=10_000))
    torch.testing.assert_close(module(torch.zeros(100, 100)), torch.full((100, 100), 2.0))


# --- stored sizes --------------------------------------------------------------------------------


def test_sparse_initializer_counts_at_its_dense_size() -> None:
    values = numpy_helper.from_array(np.array([3.0], dtype=np.float32), "s")
    indices = numpy_helper.from_array(_i64(5), "s_indices")
    graph = helper.make_graph(
        [N("ReduceSum", ["s"], ["total"], keepdims=0), N("Add", ["X", "total"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
        sparse_initializer=[helper.make_sparse_tensor(values, indices, [100, 100])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    # 40,000 dense bytes + 4 of values + 8 of indices, although the file stores 12.
    error = _refusal(data, max_initializer_bytes=40_000)
    assert (error.limit, error.value) == ("max_initializer_bytes", 40_012)
    module = load_onnx(data, limits=OnnxLimits(max_initializer_bytes=40_012))
    torch.testing.assert_close(module(torch.zeros(2, 4)), torch.full((2, 4), 3.0))


def test_constant_values_and_attribute_tensors_count() -> None:
    value = numpy_helper.from_array(np.ones(1000, dtype=np.float32), "c")
    nodes = [
        N("Constant", [], ["c"], value=value),
        N("ReduceSum", ["c"], ["total"], keepdims=0),
        N("Add", ["X", "total"], ["Y"]),
    ]
    assert _refusal(_model(nodes), max_initializer_bytes=3_999).limit == "max_initializer_bytes"


def test_local_function_constants_count_once_per_inlined_call() -> None:
    body = [
        N("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(100, np.float32), "c")),
        N("ReduceSum", ["c"], ["s"], keepdims=0),
        N("Add", ["A", "s"], ["B"]),
    ]
    function = helper.make_function(
        "local", "AddHundred", ["A"], ["B"], body, [helper.make_opsetid("", 18)]
    )
    nodes = [N("AddHundred", ["X"], ["h0"], domain="local")]
    for i in range(1, 50):
        nodes.append(N("AddHundred", [f"h{i - 1}"], [f"h{i}"], domain="local"))
    nodes.append(N("Identity", ["h49"], ["Y"]))
    data = _model(nodes, functions=[function], extra_opsets=[("local", 1)])
    # The file holds the constant once (400 bytes); inlining makes 50 copies.
    error = _refusal(data, max_initializer_bytes=19_999)
    assert error.value == 20_000
    out = load_onnx(data, limits=OnnxLimits(max_initializer_bytes=20_000))(torch.zeros(1, 4))
    torch.testing.assert_close(out, torch.full((1, 4), 5000.0))


def test_nested_function_bomb_is_refused_before_inlining() -> None:
    # f0 is one Relu; f(i) calls f(i-1) twice: inlining f40 would make 2**40 nodes.
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("bomb", 1)]
    functions = [
        helper.make_function("bomb", "f0", ["A"], ["B"], [N("Relu", ["A"], ["B"])], opsets)
    ]
    for level in range(1, 41):
        calls = [
            N(f"f{level - 1}", ["A"], ["m"], domain="bomb"),
            N(f"f{level - 1}", ["m"], ["B"], domain="bomb"),
        ]
        functions.append(helper.make_function("bomb", f"f{level}", ["A"], ["B"], calls, opsets))
    data = _model(
        [N("f40", ["X"], ["Y"], domain="bomb")], functions=functions, extra_opsets=[("bomb", 1)]
    )
    assert len(data) < 10_000
    error = _refusal(data)
    assert error.limit == "max_nodes"
    assert error.value > 2**40


def test_recursive_local_function_is_invalid() -> None:
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("loop", 1)]
    function = helper.make_function(
        "loop", "again", ["A"], ["B"], [N("again", ["A"], ["B"], domain="loop")], opsets
    )
    data = _model(
        [N("again", ["X"], ["Y"], domain="loop")], functions=[function], extra_opsets=[("loop", 1)]
    )
    with pytest.raises(ModelFormatError) as info:
        load_onnx(data)
    assert info.value.code == "onnx_invalid"
    assert "calls itself" in info.value.message


def test_a_node_with_many_inputs_counts_its_edges() -> None:
    data = _model([N("Sum", ["X"] * 5000, ["Y"])])
    assert _refusal(data, max_edges=5000).limit == "max_edges"
    out = load_onnx(data, limits=OnnxLimits(max_edges=5001))(torch.ones(1, 4))
    torch.testing.assert_close(out, torch.full((1, 4), 5000.0))


# --- inferred activations and FLOPs -----------------------------------------------------------


def test_inferred_total_activation_is_capped() -> None:
    nodes = [N("Relu", ["X"], ["r0"])]
    for i in range(1, 10):
        nodes.append(N("Relu", [f"r{i - 1}"], [f"r{i}"]))
    nodes.append(N("Identity", ["r9"], ["Y"]))
    data = _model(nodes, x_shape=("N", 1000))
    # At the validation batch of 4, eleven [4, 1000] outputs: 44,000 elements.
    error = _refusal(data, max_activation_elements=43_999)
    assert (error.limit, error.value) == ("max_activation_elements", 44_000)
    assert isinstance(
        load_onnx(data, limits=OnnxLimits(max_activation_elements=44_000)), OnnxGraphModule
    )


def test_validation_batch_and_declared_input_shape_drive_inference() -> None:
    data = _model([N("Relu", ["X"], ["Y"])], x_shape=("N", "C", "H", "W"))
    # Without a declared shape the symbolic dims are unknown and count as 1.
    assert isinstance(load_onnx(data, limits=OnnxLimits(max_tensor_elements=8)), OnnxGraphModule)
    # With [C, H, W] = [3, 32, 32] at batch 8: 24,576 elements.
    with pytest.raises(ModelTooLargeError) as info:
        load_onnx(
            data,
            input_shape=(3, 32, 32),
            limits=OnnxLimits(max_tensor_elements=24_575, validation_batch=8),
        )
    assert info.value.value == 24_576


def test_flops_of_an_exported_cnn_are_counted_exactly() -> None:
    model = onnx.load_from_string(digits_onnx())
    cost = check_inferred_sizes(model, OnnxLimits(), input_name="x", input_shape=(1, 8, 8))
    assert cost.inferred
    # tests/trained.py's DigitsCNN, per example: conv 1->16 and 16->32 (3x3, same padding),
    # two 2x2 max-pools, Linear 128->64 and 64->10.
    conv1 = 2 * (16 * 8 * 8) * (1 * 3 * 3)
    pool1 = (16 * 4 * 4) * 4
    conv2 = 2 * (32 * 4 * 4) * (16 * 3 * 3)
    pool2 = (32 * 2 * 2) * 4
    linear = 2 * 128 * 64 + 2 * 64 * 10
    assert cost.flops_per_example == conv1 + pool1 + conv2 + pool2 + linear
    assert cost.largest_tensor_elements == 4 * 16 * 8 * 8
    limit = cost.flops_per_example
    with pytest.raises(ModelTooLargeError) as info:
        load_onnx(
            digits_onnx(), input_shape=(1, 8, 8), limits=OnnxLimits(max_flops_per_example=limit - 1)
        )
    assert info.value.limit == "max_flops_per_example"
    assert isinstance(
        load_onnx(
            digits_onnx(), input_shape=(1, 8, 8), limits=OnnxLimits(max_flops_per_example=limit)
        ),
        OnnxGraphModule,
    )


def _hundred_reductions(width: int | str) -> bytes:
    nodes = [N("ReduceSum", ["X"], [f"r{i}"], keepdims=1) for i in range(100)]
    nodes += [N("Sum", [f"r{i}" for i in range(100)], ["s"]), N("Add", ["X", "s"], ["Y"])]
    return _model(nodes, x_shape=("N", width))


def test_reductions_count_the_input_they_read() -> None:
    # A hundred reductions of one input: small outputs, but each reads all 1000 values.
    data = _hundred_reductions(1000)
    error = _refusal(data, max_flops_per_example=99_999)
    assert (error.limit, error.value) == ("max_flops_per_example", 100_000)
    module = load_onnx(data, limits=OnnxLimits(max_flops_per_example=100_000))
    assert module(torch.zeros(4, 1000)).shape == (4, 1000)


def test_unknown_dims_count_as_one_statically_and_exactly_at_run_time() -> None:
    # The width is symbolic: inference sees 100 reductions of [4, ?] and counts ? as 1.
    module = load_onnx(_hundred_reductions("K"), limits=OnnxLimits(max_flops_per_example=99_999))
    module(torch.zeros(4, 999))
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.zeros(4, 1000))
    assert info.value.limit == "max_flops_per_example"
    assert "ReduceSum" in info.value.message


def test_exported_cnn_still_loads_and_matches_under_default_limits() -> None:
    spec = ModelSpec("onnx", (1, 8, 8), 10)
    with pytest.raises(ModelTooLargeError):  # the limits given are the ones used
        load_model(digits_onnx(), spec, onnx_limits=OnnxLimits(max_flops_per_example=1000))
    model = load_model(digits_onnx(), spec)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained_digits_cnn()(x), atol=1e-5, rtol=1e-4)


# --- run-time guards: shapes that inference cannot know ------------------------------------------


def _data_length() -> list[onnx.NodeProto]:
    """Nodes computing ``L`` (int64 scalar) and ``L1`` ([L]) from the input's values."""
    return [
        N("ReduceMax", ["X"], ["peak"], keepdims=0),
        N("Mul", ["peak", "scale"], ["scaled"]),
        N("Cast", ["scaled"], ["L"], to=TensorProto.INT64),
        N("Unsqueeze", ["L", "zero"], ["L1"]),
    ]


def _range_vector(name: str) -> list[onnx.NodeProto]:
    """``name`` = float Range(0, L): a vector of data-dependent length."""
    return [
        N("Range", ["zero_scalar", "L", "one_scalar"], [f"{name}_int"]),
        N("Cast", [f"{name}_int"], [name], to=TensorProto.FLOAT),
    ]


def _with_payload(payload: list[onnx.NodeProto], result: str, **inits: np.ndarray) -> bytes:
    nodes = [
        *_data_length(),
        *payload,
        N("ReduceSum", [result], ["total"], keepdims=0),
        N("Add", ["X", "total"], ["Y"]),
    ]
    constants = {
        "scale": np.array(1.0, np.float32),
        "zero": _i64(0),
        "zero_scalar": np.array(0, np.int64),
        "one_scalar": np.array(1, np.int64),
        **inits,
    }
    return _model(nodes, x_shape=("N", 4), inits=constants)


RUNTIME_CASES: dict[str, tuple[bytes, int]] = {
    # case: (graph, elements it creates per unit of L)
    "ConstantOfShape": (_with_payload([N("ConstantOfShape", ["L1"], ["big"])], "big"), 1),
    "Range": (_with_payload(_range_vector("big"), "big"), 1),
    "Expand": (
        _with_payload(
            [N("Expand", ["one_float", "L1"], ["big"])], "big", one_float=np.ones(1, np.float32)
        ),
        1,
    ),
    "Tile": (
        _with_payload(
            [N("Tile", ["one_float", "L1"], ["big"])], "big", one_float=np.ones(1, np.float32)
        ),
        1,
    ),
    "Concat": (
        _with_payload([*_range_vector("r"), N("Concat", ["r"] * 8, ["big"], axis=0)], "big"),
        8,
    ),
    "OneHot": (
        _with_payload(
            [N("OneHot", ["classes", "L", "off_on"], ["big"])],
            "big",
            classes=_i64(*range(64)),
            off_on=np.array([0, 1], np.float32),
        ),
        64,
    ),
    "Gather": (
        _with_payload(
            [
                *_range_vector("r"),
                N("Cast", ["r"], ["ri"], to=TensorProto.INT64),
                N("Mod", ["ri", "sixteen"], ["rows"]),
                N("Gather", ["table", "rows"], ["big"], axis=0),
            ],
            "big",
            sixteen=np.array(16, np.int64),
            table=np.ones((16, 32), np.float32),
        ),
        32,
    ),
    "Pad": (
        _with_payload(
            [
                N("Concat", ["zeros3", "L1"], ["pads"], axis=0),
                N("Pad", ["empty_row", "pads"], ["big"]),
            ],
            "big",
            zeros3=_i64(0, 0, 0),
            empty_row=np.ones((1, 0), np.float32),
        ),
        1,
    ),
}
SQUARE_CASES: dict[str, bytes] = {
    # L x L from two vectors of length L.
    "MatMul": _with_payload(
        [
            *_range_vector("r"),
            N("Unsqueeze", ["r", "one_axis"], ["column"]),
            N("Unsqueeze", ["r", "zero"], ["row"]),
            N("MatMul", ["column", "row"], ["big"]),
        ],
        "big",
        one_axis=_i64(1),
    ),
    "Add": _with_payload(
        [
            *_range_vector("r"),
            N("Unsqueeze", ["r", "one_axis"], ["column"]),
            N("Unsqueeze", ["r", "zero"], ["row"]),
            N("Add", ["column", "row"], ["big"]),
        ],
        "big",
        one_axis=_i64(1),
    ),
    "Resize": _with_payload(
        [
            N("Concat", ["L1", "L1"], ["sizes"], axis=0),
            N("Resize", ["one_square", "", "", "sizes"], ["big"]),
        ],
        "big",
        one_square=np.ones((1, 1), np.float32),
    ),
}
CAP = 50_000


@pytest.mark.parametrize("case", list(RUNTIME_CASES))
def test_runtime_guard_refuses_a_data_dependent_blowup(case: str) -> None:
    data, per_unit = RUNTIME_CASES[case]
    limits = OnnxLimits(max_tensor_elements=CAP)
    module = load_onnx(data, limits=limits)  # inference cannot see the size
    fits = CAP // per_unit
    module(torch.full((2, 4), float(fits)))  # at the cap it runs
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.full((2, 4), float(fits + 1)))
    assert info.value.limit == "max_tensor_elements"
    assert f"({case})" in info.value.message


@pytest.mark.parametrize("case", list(SQUARE_CASES))
def test_runtime_guard_refuses_a_data_dependent_square(case: str) -> None:
    module = load_onnx(SQUARE_CASES[case], limits=OnnxLimits(max_tensor_elements=CAP))
    module(torch.full((2, 4), 223.0))  # 223**2 = 49,729 elements
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.full((2, 4), 224.0))  # 50,176
    assert info.value.limit == "max_tensor_elements"
    assert f"({case})" in info.value.message


def test_runtime_guard_counts_flops_of_data_dependent_matmuls() -> None:
    nodes = [
        N("Concat", ["L1", "L1"], ["square"], axis=0),
        N("ConstantOfShape", ["square"], ["m0"]),
        N("MatMul", ["m0", "m0"], ["m1"]),
        N("MatMul", ["m1", "m0"], ["m2"]),
    ]
    module = load_onnx(_with_payload(nodes, "m2"), limits=OnnxLimits(max_flops_per_example=10**6))
    # Two 50 x 50 products: 2 * 2 * 50**3 = 500,000 FLOPs per pass, 125,000 per example of 4.
    module(torch.full((2, 4), 50.0))
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.full((2, 4), 127.0))  # 2 * 127**3 = 4.1M for the first product alone
    assert info.value.limit == "max_flops_per_example"
    assert "MatMul" in info.value.message


def test_runtime_activation_total_is_capped() -> None:
    nodes = [*_range_vector("r0")]
    for i in range(1, 6):
        nodes.append(N("Relu", [f"r{i - 1}"], [f"r{i}"]))
    module = load_onnx(_with_payload(nodes, "r5"), limits=OnnxLimits(max_activation_elements=CAP))
    module(torch.full((2, 4), 1000.0))
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.full((2, 4), 10_000.0))  # seven vectors of 10,000
    assert info.value.limit == "max_activation_elements"


def test_large_batches_scale_batch_tensors_but_not_the_others() -> None:
    # Y = X + 1 is [N, 256]; T = Transpose(X) + 1 is [256, N]: its first axis is not the batch.
    batch_major = _model(
        [N("Add", ["X", "one"], ["Y"])], x_shape=("N", 256), inits={"one": np.ones(1, np.float32)}
    )
    other = _model(
        [N("Transpose", ["X"], ["t"]), N("Add", ["t", "one"], ["Y"])],
        x_shape=("N", 256),
        inits={"one": np.ones(1, np.float32)},
    )
    limits = OnnxLimits(max_tensor_elements=4 * 256, validation_batch=4)
    assert load_onnx(batch_major, limits=limits)(torch.zeros(64, 256)).shape == (64, 256)
    module = load_onnx(other, limits=limits)
    assert module(torch.zeros(4, 256)).shape == (256, 4)
    with pytest.raises(ModelTooLargeError) as info:
        module(torch.zeros(64, 256))
    assert info.value.value == 64 * 256


def test_shape_like_inputs_are_read_only_when_short() -> None:
    data = _model([N("Reshape", ["X", "target"], ["Y"])], inits={"target": np.ones(5000, np.int64)})
    module = load_onnx(data)
    with pytest.raises(ModelFormatError) as info:
        module(torch.zeros(1, 4))
    assert info.value.code == "onnx_invalid"
    assert "at most 4096" in info.value.message


def test_lrn_window_is_bounded() -> None:
    data = _model([N("LRN", ["X"], ["Y"], size=100_001)], x_shape=("N", 3, 4, 4))
    with pytest.raises(ModelFormatError) as info:
        load_onnx(data)
    assert info.value.code == "unsupported_op"
    assert "size=100001" in info.value.message
