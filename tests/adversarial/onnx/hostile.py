"""Hostile ONNX classifiers from the red team's report (issue #10), built in memory.

Each is a few KB and a plausible [N, 1, 8, 8] -> [N, 10] classifier whose logits also depend on
a "payload" tensor that, if it were ever materialised, would take gigabytes or minutes.

Run as ``python -m tests.adversarial.onnx.hostile CASE...`` it loads each case under an
address-space limit (so a missing guard fails with MemoryError instead of exhausting the
machine) and prints one JSON object: per case the file size, the error code and limit name,
the seconds the refusal took and the growth of the peak resident memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N = helper.make_node
INPUT_SHAPE = (1, 8, 8)
# Room the loader may use beyond what the process has mapped after its imports.
ADDRESS_SPACE_HEADROOM = 3 * 2**30


def classifier(
    payload_nodes: Sequence[onnx.NodeProto],
    payload: str,
    *,
    inits: dict[str, np.ndarray] | None = None,
    sparse: Sequence[onnx.SparseTensorProto] = (),
) -> bytes:
    """``logits = Flatten(X) @ W + ReduceSum(payload)``, with ``payload_nodes`` computing it."""
    weights = np.full((64, 10), 0.01, dtype=np.float32)
    nodes = [
        *payload_nodes,
        N("Flatten", ["X"], ["flat"]),
        N("MatMul", ["flat", "W"], ["scores"]),
        N("ReduceSum", [payload], ["total"], keepdims=0),
        N("Add", ["scores", "total"], ["Y"]),
    ]
    initializers = {"W": weights, **(inits or {})}
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
        sparse_initializer=list(sparse),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def sparse_initializers(count: int = 12, side: int = 16384) -> bytes:
    """``count`` sparse ``side x side`` initializers with one non-zero each (12 GiB dense)."""
    sparse = []
    nodes = []
    for i in range(count):
        values = numpy_helper.from_array(np.array([1.0], dtype=np.float32), f"s{i}")
        indices = numpy_helper.from_array(_i64(i), f"s{i}_indices")
        sparse.append(helper.make_sparse_tensor(values, indices, [side, side]))
        nodes.append(N("ReduceSum", [f"s{i}"], [f"r{i}"], keepdims=0))
    total = "r0"
    for i in range(1, count):
        nodes.append(N("Add", [total, f"r{i}"], [f"acc{i}"]))
        total = f"acc{i}"
    return classifier(nodes, total, sparse=sparse)


def broadcast_add(side: int = 38000) -> bytes:
    """``[side, 1] + [1, side]``: 300 KB of initializers, a 5.8 GB float32 sum."""
    column = np.full((side, 1), 1e-9, dtype=np.float32)
    return classifier(
        [N("Add", ["column", "row"], ["grid"])],
        "grid",
        inits={"column": column, "row": column.reshape(1, side)},
    )


def matmul_outer_product(side: int = 30000) -> bytes:
    """``[side, 1] @ [1, side]`` of ConstantOfShape columns: a 3.6 GB float32 product."""
    return classifier(
        [
            N("ConstantOfShape", ["column_shape"], ["column"]),
            N("Transpose", ["column"], ["row"]),
            N("MatMul", ["column", "row"], ["outer"]),
        ],
        "outer",
        inits={"column_shape": _i64(side, 1)},
    )


def concat_blowup(copies: int = 100, length: int = 2**22) -> bytes:
    """One 16 MB ConstantOfShape vector concatenated ``copies`` times (1.7 GB)."""
    return classifier(
        [
            N("ConstantOfShape", ["length"], ["piece"]),
            N("Concat", ["piece"] * copies, ["long"], axis=0),
        ],
        "long",
        inits={"length": _i64(length)},
    )


def one_hot_depth(depth: int = 10**7) -> bytes:
    """OneHot of the 64 pixels of each example with a depth of ten million (10 GB)."""
    return classifier(
        [
            N("Cast", ["X"], ["indices"], to=TensorProto.INT64),
            N("OneHot", ["indices", "depth", "off_on"], ["hot"]),
        ],
        "hot",
        inits={"depth": _i64(depth), "off_on": np.array([0.0, 1.0], dtype=np.float32)},
    )


def chained_matmuls(count: int = 30, side: int = 4096) -> bytes:
    """``count`` chained ``side x side`` MatMuls of a ConstantOfShape matrix (4 TFLOP)."""
    nodes = [N("ConstantOfShape", ["square"], ["m0"])]
    for i in range(count):
        nodes.append(N("MatMul", [f"m{i}", "m0"], [f"m{i + 1}"]))
    return classifier(nodes, f"m{count}", inits={"square": _i64(side, side)})


CASES: dict[str, Callable[[], bytes]] = {
    "sparse_initializers": sparse_initializers,
    "broadcast_add": broadcast_add,
    "matmul_outer_product": matmul_outer_product,
    "concat_blowup": concat_blowup,
    "one_hot_depth": one_hot_depth,
    "chained_matmuls": chained_matmuls,
}


def _mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _run(names: Sequence[str]) -> dict[str, dict[str, object]]:
    from adversarial.errors import EngineInputError
    from adversarial.models.onnx import load_onnx

    files = {name: CASES[name]() for name in names}
    limit = _mapped_bytes() + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results: dict[str, dict[str, object]] = {}
    for name, data in files.items():
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        outcome: dict[str, object] = {"file_bytes": len(data)}
        try:
            load_onnx(data, input_shape=INPUT_SHAPE)
            outcome["code"] = None
        except EngineInputError as error:
            outcome["code"] = error.code
            outcome["limit"] = getattr(error, "limit", None)
            outcome["message"] = error.message
        except MemoryError:
            outcome["code"] = "MemoryError"
        outcome["seconds"] = time.perf_counter() - started
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcome["peak_rss_growth_bytes"] = (peak_after - peak_before) * 1024
        results[name] = outcome
    return results


if __name__ == "__main__":
    json.dump(_run(sys.argv[1:] or list(CASES)), sys.stdout)
