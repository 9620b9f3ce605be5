"""The API describes the zoo and built-in datasets without torch; they must match the engine."""

from __future__ import annotations

from adversarial.datasets import BUILTIN_DATASETS as ENGINE_DATASETS
from adversarial.datasets import load_builtin
from adversarial.models.zoo import ARCHITECTURES as ENGINE_ARCHITECTURES
from service.architectures import ARCHITECTURES
from service.datasets.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX


def test_architecture_catalog_matches_the_zoo() -> None:
    assert {name: a.model_dump() for name, a in ARCHITECTURES.items()} == {
        name: a.describe() for name, a in ENGINE_ARCHITECTURES.items()
    }


def test_builtin_dataset_catalog_matches_the_engine() -> None:
    assert {d.removeprefix(BUILTIN_PREFIX) for d in BUILTIN_DATASETS} == set(ENGINE_DATASETS)
    for dataset_id, described in BUILTIN_DATASETS.items():
        engine = ENGINE_DATASETS[dataset_id.removeprefix(BUILTIN_PREFIX)]
        assert described.example_shape == list(engine.input_shape)
        assert described.num_classes == engine.num_classes
        assert described.splits == dict(engine.split_sizes)
        for split, size in described.splits.items():
            x, y = load_builtin(engine.name, split)
            assert x.shape[0] == size
            assert list(x.shape[1:]) == described.example_shape
            assert [float(x.min()), float(x.max())] == described.value_range
            assert int(y.max()) + 1 == described.num_classes


def test_the_gate_knows_every_warning_the_engine_raises() -> None:
    import inspect
    import re

    from adversarial import checks
    from service.jobs.specs import GATING_WARNINGS, INFORMATIONAL_WARNINGS, WarningCode

    raised = set(re.findall(r'Finding\(\s*"([a-z_]+)"', inspect.getsource(checks)))
    raised |= set(re.findall(r'"([a-z_]+)",\n\s+f?"', inspect.getsource(checks))) & (
        set(GATING_WARNINGS) | set(INFORMATIONAL_WARNINGS)
    )
    assert raised <= set(GATING_WARNINGS) | set(INFORMATIONAL_WARNINGS)
    assert set(GATING_WARNINGS) - {"non_finite_values"} <= raised
    assert set(WarningCode.__args__) == set(GATING_WARNINGS)  # type: ignore[attr-defined]


def test_the_service_splits_shards_as_the_engine_does() -> None:
    from adversarial.shards import shard_ranges as engine_ranges
    from service.jobs.admission import shard_ranges

    for count in (1, 2, 9, 100, 361):
        for shards in (1, 2, 3, 7, 64):
            assert shard_ranges(count, shards) == engine_ranges(count, shards)
