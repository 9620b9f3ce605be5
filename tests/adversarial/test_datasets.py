"""Built-in datasets: the digits and their fixed split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from adversarial.datasets import (
    BUILTIN_DATASETS,
    DIGITS_TEST_SIZE,
    DIGITS_TRAIN_SIZE,
    digits_split_indices,
    load_builtin,
)
from adversarial.errors import DatasetError


def test_digits_splits_have_the_documented_shapes_and_types() -> None:
    for split, size in (("train", DIGITS_TRAIN_SIZE), ("test", DIGITS_TEST_SIZE)):
        inputs, labels = load_builtin("digits", split)
        assert inputs.shape == (size, 1, 8, 8)
        assert inputs.dtype == torch.float32
        assert labels.shape == (size,)
        assert labels.dtype == torch.int64
        assert float(inputs.min()) == 0.0
        assert float(inputs.max()) == 1.0
        assert set(labels.tolist()) == set(range(10))
    assert (DIGITS_TRAIN_SIZE, DIGITS_TEST_SIZE) == (1437, 360)
    info = BUILTIN_DATASETS["digits"]
    assert info.input_shape == (1, 8, 8)
    assert info.num_classes == 10
    assert info.split_sizes == {"train": 1437, "test": 360}


def test_digits_splits_are_disjoint_and_cover_every_sample() -> None:
    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1797))


def test_digits_split_is_pinned() -> None:
    # The split is a contract (results are compared across runs and versions): a numpy or
    # scikit-learn change that moved samples between splits must fail here.
    order = np.random.default_rng(0).permutation(1797)
    assert np.array_equal(digits_split_indices("test"), order[1437:])
    assert digits_split_indices("train")[:5].tolist() == [360, 1773, 1482, 600, 850]
    assert digits_split_indices("test")[:5].tolist() == [256, 1340, 1067, 1276, 1409]
    assert int(digits_split_indices("test").sum()) == 319705
    _, test_labels = load_builtin("digits", "test")
    assert test_labels[:5].tolist() == load_digits().target[[256, 1340, 1067, 1276, 1409]].tolist()


def test_digits_are_deterministic_and_fresh_per_call() -> None:
    first_inputs, first_labels = load_builtin("digits", "test")
    first_inputs[0] = 5.0
    second_inputs, second_labels = load_builtin("digits", "test")
    assert float(second_inputs.max()) == 1.0
    assert torch.equal(first_labels, second_labels)
    assert torch.equal(second_inputs, load_builtin("digits", "test")[0])


@pytest.mark.parametrize(
    ("name", "split", "code"),
    [("cifar10", "test", "unknown_dataset"), ("digits", "validation", "unknown_split")],
)
def test_unknown_dataset_or_split_is_refused(name: str, split: str, code: str) -> None:
    with pytest.raises(DatasetError) as caught:
        load_builtin(name, split)
    assert caught.value.code == code
