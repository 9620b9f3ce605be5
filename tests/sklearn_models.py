"""scikit-learn classifiers fitted on the flattened digits and exported with skl2onnx (cached).

Shared by the black-box and transfer tests and the transfer benchmark. Each is fitted on the
same train split as :func:`tests.trained.digits_arrays` (``x / 16`` flattened to 64
features), in about a second at most.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from tests.trained import digits_arrays

SKLEARN_MODELS = ("logistic_regression", "svc_probability", "svc", "decision_tree", "knn")
# skl2onnx's opsets for the graphs (onnxruntime 1.2x runs both).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _estimator(name: str) -> Any:
    if name == "logistic_regression":
        return LogisticRegression(max_iter=1000)
    if name == "svc_probability":
        return SVC(probability=True, random_state=0)
    if name == "svc":
        return SVC()  # decision_function scores, no probabilities
    if name == "decision_tree":
        return DecisionTreeClassifier(random_state=0)
    if name == "knn":
        return KNeighborsClassifier(n_neighbors=5)
    raise KeyError(name)


@lru_cache
def fitted(name: str) -> Any:
    """The estimator ``name`` (one of :data:`SKLEARN_MODELS`) fitted on the digits train split."""
    x_train, y_train, _, _ = digits_arrays()
    with warnings.catch_warnings():
        # scikit-learn 1.9 deprecates SVC(probability=True); it still works until 1.11.
        warnings.simplefilter("ignore", FutureWarning)
        return _estimator(name).fit(x_train.flatten(1).numpy(), y_train.numpy())


@lru_cache
def sklearn_onnx(name: str, *, zipmap: bool = True) -> bytes:
    """``fitted(name)`` exported with skl2onnx: input ``[None, 64]`` float; outputs the label
    and the probabilities (a sequence of maps with ``zipmap``, else a ``[N, 10]`` tensor)."""
    estimator = fitted(name)
    options = None if zipmap else {id(estimator): {"zipmap": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skl2onnx reads SVC.probA_
        graph = to_onnx(
            estimator,
            initial_types=[("input", FloatTensorType([None, 64]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    return graph.SerializeToString()
