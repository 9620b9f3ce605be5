"""A sharded audit gives exactly the numbers of the whole audit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adversarial.audit import AuditConfig, audit, outcome_document
from adversarial.evaluation import AttackConfig
from adversarial.shards import audit_part, merged_audit, part_to_bytes, shard_ranges
from tests.trained import digits_arrays, trained_digits_cnn

CONFIG = AuditConfig(
    attacks=[
        AttackConfig("fgsm", "linf", 0.05),
        AttackConfig("fgsm", "linf", 0.1),
        AttackConfig("pgd", "linf", 0.1, {"steps": 5, "restarts": 2}),
        AttackConfig("pgd", "l2", 0.5, {"steps": 5}),
        AttackConfig("square", "linf", 0.1, {"queries": 40}),
        AttackConfig("autoattack", "linf", 0.05, {"steps": 4, "target_classes": 2, "queries": 30}),
        AttackConfig("autoattack", "linf", 0.1, {"steps": 4, "target_classes": 2, "queries": 30}),
    ],
    num_classes=10,
    seed=4,
    batch_size=32,
    corruptions=True,
)
TIMING = {"seconds", "verification_seconds"}


# Accuracies and rates are ratios of counts: identical. Means of confidences and norms may
# differ in float32's last bits, since a convolution's rounding can depend on the batch's
# shape (the parts run at other batch sizes).
EXACT = ("accuracy", "rate", "eps", "count")


def assert_same(ours: object, theirs: object, path: str = "") -> None:
    if isinstance(theirs, dict):
        assert isinstance(ours, dict)
        assert ours.keys() == theirs.keys(), path
        for key in theirs:
            if key not in TIMING and key not in ("batch_size", "final_batch_size"):
                assert_same(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list)
        assert len(ours) == len(theirs), path
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(theirs, float) and not any(word in path for word in EXACT):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-7), path
    else:
        assert ours == theirs, path


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_arrays()
    return x[:90], y[:90], torch.arange(90) * 3 + 7  # dataset indices, not positions


@pytest.fixture(scope="module")
def whole(data):  # type: ignore[no-untyped-def]
    x, y, ids = data
    return audit(trained_digits_cnn(), x, y, CONFIG, example_ids=ids)


@pytest.mark.parametrize("shards", [2, 7])
def test_a_sharded_audit_equals_the_whole(data, whole, shards) -> None:
    x, y, ids = data
    model = trained_digits_cnn()
    parts = []
    for start, stop in shard_ranges(x.shape[0], shards):
        # Another batch size in each part: the numbers must not care.
        config = AuditConfig(**{**CONFIG.__dict__, "batch_size": 5 + start % 11})
        part = audit_part(model, x[start:stop], y[start:stop], config, example_ids=ids[start:stop])
        parts.append(part_to_bytes(part, ids[start:stop]))
    merged = merged_audit(model, x, y, CONFIG, parts, example_ids=ids)
    ours, theirs = outcome_document(merged), outcome_document(whole)
    assert_same(ours, theirs)
    assert merged.per_sample.keys() == whole.per_sample.keys()
    for name, array in whole.per_sample.items():
        # Predictions, labels and fooled flags are exact; confidences and perturbations are
        # floats computed at another batch shape.
        if np.issubdtype(np.asarray(array).dtype, np.floating):
            assert np.allclose(merged.per_sample[name], array, atol=1e-5, equal_nan=True), name
        else:
            assert np.array_equal(merged.per_sample[name], array, equal_nan=True), name
    # Something was attacked, fooled and carried over, or the comparison means little.
    assert 0 < theirs["attacks"][-1]["robust_accuracy"] < theirs["clean_accuracy"]


def test_parts_out_of_order_are_refused(data) -> None:
    x, y, ids = data
    model = trained_digits_cnn()
    config = AuditConfig(attacks=[AttackConfig("fgsm", "linf", 0.1)], num_classes=10)
    parts = [
        part_to_bytes(audit_part(model, x[a:b], y[a:b], config, example_ids=ids[a:b]), ids[a:b])
        for a, b in shard_ranges(x.shape[0], 2)
    ]
    from adversarial.errors import EngineCheckError

    with pytest.raises(EngineCheckError):
        merged_audit(model, x, y, config, parts[::-1], example_ids=ids)


def test_shard_ranges_cover_every_example_once() -> None:
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(2, 5) == [(0, 1), (1, 2)]
