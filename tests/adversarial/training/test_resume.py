"""Resume from a checkpoint ends bit-identical to the run that was never interrupted."""

from __future__ import annotations

from typing import Any

import pytest

from adversarial.errors import TrainingError
from adversarial.training import (
    AdamConfig,
    AugmentationConfig,
    Checkpoint,
    CosineSchedule,
    EpochRecord,
    FastConfig,
    FreeConfig,
    MethodConfig,
    MultiStepSchedule,
    OneCycleSchedule,
    PGDConfig,
    SGDConfig,
    VATConfig,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from tests.adversarial.training.common import EPS, run, same_weights, tiny_model, without_times

CASES: dict[str, dict[str, Any]] = {
    # The carried perturbation, SGD with Nesterov momentum and weight decay, a milestone.
    "free": {
        "method": FreeConfig(eps=EPS, replays=2),
        "optimizer": SGDConfig(lr=0.05, nesterov=True, weight_decay=5e-4),
        "schedule": MultiStepSchedule(milestones=(4,)),
        "epochs": 6,
    },
    # Adam's state, the per-iteration one-cycle schedule, the best weights it keeps.
    "fast": {
        "method": FastConfig(eps=EPS),
        "optimizer": AdamConfig(lr=5e-3, weight_decay=1e-4),
        "schedule": OneCycleSchedule(),
        "epochs": 3,
    },
    # The attack's random starts and the augmentation stream.
    "pgd+augmentation": {
        "method": PGDConfig(eps=EPS, steps=2),
        "optimizer": SGDConfig(lr=0.05),
        "schedule": CosineSchedule(),
        "epochs": 3,
        "augmentation": AugmentationConfig(crop_padding=1, rotation_degrees=10),
    },
    "vat": {
        "method": VATConfig(eps=EPS),
        "optimizer": AdamConfig(lr=3e-3),
        "schedule": CosineSchedule(),
        "epochs": 3,
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_resume_is_bit_identical_to_an_uninterrupted_run(name: str) -> None:
    settings = dict(CASES[name])
    method: MethodConfig = settings.pop("method")
    saved: list[bytes] = []
    hooked: list[EpochRecord] = []

    def keep(record: EpochRecord, checkpoint: Checkpoint) -> None:
        hooked.append(record)
        saved.append(checkpoint_to_bytes(checkpoint))

    uninterrupted, full = run(method, epoch_hook=keep, **settings)
    assert hooked == full.records
    assert len(saved) >= 2

    # Resume after the first epoch, from the bytes, into a freshly built model.
    resumed_model, resumed = run(
        method, model=tiny_model(), resume=checkpoint_from_bytes(saved[0]), **settings
    )
    assert same_weights(uninterrupted, resumed_model)
    assert without_times(resumed.records) == without_times(full.records)
    assert resumed.gradient_computations == full.gradient_computations
    assert resumed.best == full.best
    assert full.checkpoint.method_state.keys() == resumed.checkpoint.method_state.keys()

    # A resume from the last checkpoint has nothing left to do and changes nothing.
    finished_model, finished = run(
        method, model=tiny_model(), resume=checkpoint_from_bytes(saved[-1]), **settings
    )
    assert same_weights(uninterrupted, finished_model)
    assert without_times(finished.records) == without_times(full.records)


def test_resume_refuses_a_checkpoint_of_another_run() -> None:
    settings = dict(CASES["fast"])
    method: MethodConfig = settings.pop("method")
    saved: list[Checkpoint] = []
    run(method, epoch_hook=lambda _record, checkpoint: saved.append(checkpoint), **settings)
    for changed in ({"seed": 1}, {"batch_size": 16}, {"epochs": 4}):
        with pytest.raises(TrainingError) as error:
            run(method, model=tiny_model(), resume=saved[0], **{**settings, **changed})
        assert error.value.code == "checkpoint_mismatch"
        assert next(iter(changed)) in error.value.message
    with pytest.raises(TrainingError) as other_method:
        run(FastConfig(eps=0.2), model=tiny_model(), resume=saved[0], **settings)
    assert other_method.value.code == "checkpoint_mismatch"


def test_checkpoints_are_snapshots() -> None:
    saved: list[Checkpoint] = []
    model, _ = run(
        PGDConfig(eps=EPS, steps=1),
        epochs=2,
        epoch_hook=lambda _record, checkpoint: saved.append(checkpoint),
    )
    first, second = saved
    assert first.epochs_done == 1
    assert second.epochs_done == 2
    # Training on after the first snapshot did not change it.
    assert any(
        not first.model_state[key].equal(second.model_state[key]) for key in first.model_state
    )
    assert all(value.equal(model.state_dict()[key]) for key, value in second.model_state.items())
