"""Built-in datasets: real data that ships with our dependencies, so nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch

from adversarial.errors import DatasetError

DIGITS_SIZE = 1797
DIGITS_TRAIN_SIZE = 1437
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class BuiltinDataset:
    """What a built-in dataset holds, for listings and for checking jobs against it."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    split_sizes: dict[str, int]
    description: str


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        name="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
        split_sizes={"train": DIGITS_TRAIN_SIZE, "test": DIGITS_TEST_SIZE},
        description=(
            "scikit-learn's 1,797 real 8x8 handwritten digits (UCI optdigits test set), "
            "pixels scaled to [0, 1]; fixed split: numpy.random.default_rng(0).permutation(1797),"
            " first 1,437 train, last 360 test."
        ),
    ),
}


def load_builtin(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load split ``split`` of the built-in dataset ``name`` as ``(inputs, labels)``.

    ``"digits"``: scikit-learn's ``load_digits()`` (1,797 real 8x8 handwritten digits,
    shipped in its wheel). Inputs are float32 ``[N, 1, 8, 8]``, the 0..16 gray levels divided
    by 16 into [0, 1]; labels are int64 in 0..9. The split is fixed: the permutation
    ``numpy.random.default_rng(DIGITS_SPLIT_SEED).permutation(1797)`` (seed 0) orders the
    samples, the first ``DIGITS_TRAIN_SIZE`` (1,437) are ``"train"`` and the last
    ``DIGITS_TEST_SIZE`` (360) are ``"test"``, in permutation order.

    Returns fresh tensors on each call: callers may modify them.

    Raises:
        DatasetError: ``unknown_dataset`` or ``unknown_split``.
    """
    info = BUILTIN_DATASETS.get(name)
    if info is None:
        raise DatasetError(
            "unknown_dataset",
            f"Unknown built-in dataset {name!r}; built-ins: {', '.join(BUILTIN_DATASETS)}.",
        )
    if split not in info.split_sizes:
        raise DatasetError(
            "unknown_split",
            f"Dataset {name!r} has no split {split!r}; splits: {', '.join(info.split_sizes)}.",
        )
    inputs, labels = _digits_split(split)
    return torch.tensor(inputs), torch.tensor(labels)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the digits ``split``, in order."""
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(DIGITS_SIZE)
    if split == "train":
        return order[:DIGITS_TRAIN_SIZE]
    if split == "test":
        return order[DIGITS_TRAIN_SIZE:]
    raise DatasetError("unknown_split", f"Dataset 'digits' has no split {split!r}.")


@cache
def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    # Cached because parsing sklearn's bundled CSV takes a noticeable fraction of a second;
    # read-only so a cached array cannot be changed by accident.
    inputs, labels = _digits_arrays()
    indices = digits_split_indices(split)
    split_inputs, split_labels = inputs[indices], labels[indices]
    split_inputs.flags.writeable = False
    split_labels.flags.writeable = False
    return split_inputs, split_labels


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = (digits.images.astype(np.float32) / np.float32(16.0))[:, np.newaxis, :, :]
    labels = digits.target.astype(np.int64)
    if inputs.shape != (DIGITS_SIZE, 1, 8, 8):
        raise DatasetError(
            "dataset_changed", f"scikit-learn's digits have shape {inputs.shape}, not 1797x8x8."
        )
    return inputs, labels
