"""The loop: reproducibility, independent streams, callbacks, cancellation, clear errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adversarial.errors import TrainingError
from adversarial.training import (
    EpochRecord,
    FGSMConfig,
    NaturalConfig,
    PGDConfig,
    SGDConfig,
    TrainingData,
    ValidationConfig,
    derive_seed,
)
from tests.adversarial.training.common import (
    EPS,
    TRAIN_EXAMPLES,
    run,
    same_weights,
    tiny_data,
    tiny_model,
    without_times,
)


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    first, first_result = run(PGDConfig(eps=EPS, steps=2))
    second, second_result = run(PGDConfig(eps=EPS, steps=2))
    assert same_weights(first, second)
    assert without_times(first_result.records) == without_times(second_result.records)
    third, _ = run(PGDConfig(eps=EPS, steps=2), seed=1)
    assert not same_weights(first, third)


def test_validation_never_changes_the_training() -> None:
    with_validation, _ = run(PGDConfig(eps=EPS, steps=2))
    without, result = run(PGDConfig(eps=EPS, steps=2), validation=None)
    assert same_weights(with_validation, without)
    assert result.records[0].clean_accuracy is None
    assert result.records[0].validation_seconds == 0


def test_the_global_rng_is_neither_used_nor_changed() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = run(FGSMConfig(eps=EPS), epochs=1)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(999)
    second, _ = run(FGSMConfig(eps=EPS), epochs=1)
    assert same_weights(first, second)


def test_records_and_hooks() -> None:
    hooked: list[EpochRecord] = []
    progress: list[tuple[float, str, str]] = []
    _, result = run(
        NaturalConfig(),
        epochs=3,
        validation=ValidationConfig(eps=EPS, pgd_steps=2, limit=32),
        epoch_hook=lambda record, _checkpoint: hooked.append(record),
        progress=lambda fraction, stage, message: progress.append((fraction, stage, message)),
    )
    assert hooked == result.records
    assert [record.epoch for record in result.records] == [0, 1, 2]
    for record in result.records:
        assert record.seconds > 0
        assert record.validation_seconds > 0
        assert record.lr == pytest.approx(1e-2)
        assert record.robust_accuracy is not None
        assert record.fgsm_accuracy is not None
    fractions = [fraction for fraction, _, _ in progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert {stage for _, stage, _ in progress} == {"train", "validate"}
    assert result.seconds == pytest.approx(sum(r.seconds for r in result.records))


def test_a_raising_progress_callback_cancels_and_cleans_up() -> None:
    model = tiny_model()

    class Cancelled(Exception):
        pass

    def cancel(fraction: float, _stage: str, _message: str) -> None:
        if fraction > 0.3:
            raise Cancelled

    with pytest.raises(Cancelled):
        run(FGSMConfig(eps=EPS), model=model, trainable="last", progress=cancel)
    assert not model.training
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert not model._forward_hooks
    assert not model._forward_pre_hooks
    assert all(parameter.is_contiguous() for parameter in model.parameters())


N = TRAIN_EXAMPLES


def _data(**changes: Any) -> TrainingData:
    data = tiny_data()
    values = {
        "inputs": data.inputs,
        "labels": data.labels,
        "validation_inputs": data.validation_inputs,
        "validation_labels": data.validation_labels,
        "input_range": data.input_range,
    }
    values.update(changes)
    return TrainingData(**values)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"inputs": torch.rand(N, 64)}, "bad_training_data"),
        ({"labels": torch.zeros(N - 1, dtype=torch.long)}, "bad_training_data"),
        ({"labels": torch.zeros(N)}, "bad_training_data"),
        ({"inputs": torch.rand(N, 1, 8, 8) * 2}, "bad_training_data"),
        ({"inputs": torch.full((N, 1, 8, 8), float("nan"))}, "bad_training_data"),
        ({"labels": torch.full((N,), 12)}, "labels_out_of_range"),
        ({"validation_labels": None}, "bad_training_data"),
        (
            {"inputs": torch.rand(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.long)},
            "bad_training_data",
        ),
    ],
)
def test_bad_data_is_a_clear_error(changes: dict[str, Any], code: str) -> None:
    with pytest.raises(TrainingError) as error:
        run(NaturalConfig(), data=_data(**changes), epochs=1)
    assert error.value.code == code


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"epochs": 0}, "bad_training_config"),
        ({"batch_size": 0}, "bad_training_config"),
        ({"seed": "zero"}, "bad_training_config"),
        ({"validation": ValidationConfig(eps=EPS, norm="l7")}, "bad_training_config"),
    ],
)
def test_bad_settings_are_a_clear_error(overrides: dict[str, Any], code: str) -> None:
    with pytest.raises(TrainingError) as error:
        run(NaturalConfig(), **overrides)
    assert error.value.code == code


def test_divergence_is_reported() -> None:
    with pytest.raises(TrainingError) as error:
        run(NaturalConfig(), optimizer=SGDConfig(lr=1e12, momentum=0.0), epochs=3, validation=None)
    assert error.value.code == "training_diverged"


def test_not_a_method_config() -> None:
    with pytest.raises(TrainingError) as error:
        run("pgd", epochs=1)  # type: ignore[arg-type]
    assert error.value.code == "unknown_method"


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, "shuffle") == derive_seed(0, "shuffle")
    assert len({derive_seed(0, "shuffle"), derive_seed(1, "shuffle"), derive_seed(0, "x")}) == 3
    assert 0 <= derive_seed(7, "validation", 3) < 2**63


def test_convolutions_train_channels_last_on_a_cpu_and_come_back_standard() -> None:
    # Channels-last is what makes max-pooling on perturbed inputs as fast as on clean ones
    # (see loop._training_memory_format); with one input channel only the strides show it.
    model = tiny_model()
    seen: list[tuple[int, ...]] = []
    first_conv = model.features[0].weight  # type: ignore[index]
    run(
        NaturalConfig(),
        model=model,
        epochs=1,
        validation=None,
        progress=lambda *_: seen.append(first_conv.stride()),
    )
    assert seen
    assert all(stride[1] == 1 for stride in seen)
    assert first_conv.stride() == (9, 9, 3, 1)
