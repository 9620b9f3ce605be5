"""Learning-rate schedules: their values, per update, in epoch equivalents."""

from __future__ import annotations

import math

import pytest

from adversarial.errors import TrainingError
from adversarial.training import (
    ConstantSchedule,
    CosineSchedule,
    FreeConfig,
    MultiStepSchedule,
    NaturalConfig,
    OneCycleSchedule,
    SGDConfig,
    learning_rate,
)
from tests.adversarial.training.common import EPS, run

BASE = 0.2
U = 10  # updates per epoch equivalent


def test_constant() -> None:
    schedule = ConstantSchedule()
    assert [learning_rate(schedule, BASE, u, U, 50) for u in (0, 17, 49)] == [BASE] * 3


def test_multistep_decays_from_the_first_update_of_the_milestone_epoch() -> None:
    schedule = MultiStepSchedule(milestones=(2, 3), gamma=0.1)
    values = [learning_rate(schedule, BASE, u, U, 40) for u in (0, 19, 20, 29, 30, 39)]
    assert values == pytest.approx([BASE, BASE, BASE * 0.1, BASE * 0.1, BASE * 0.01, BASE * 0.01])


def test_cosine() -> None:
    schedule = CosineSchedule(final_fraction=0.1)
    assert learning_rate(schedule, BASE, 0, U, 40) == pytest.approx(BASE)
    assert learning_rate(schedule, BASE, 20, U, 40) == pytest.approx(BASE * (0.1 + 0.9 * 0.5))
    quarter = 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2
    assert learning_rate(schedule, BASE, 10, U, 40) == pytest.approx(BASE * quarter)
    values = [learning_rate(schedule, BASE, u, U, 40) for u in range(40)]
    assert values == sorted(values, reverse=True)
    assert values[-1] > BASE * 0.1


def test_one_cycle_is_wong_et_al_s_piecewise_linear_schedule() -> None:
    schedule = OneCycleSchedule(peak_fraction=0.4)
    total = 10 * U  # 10 epochs: the peak after epoch 4
    value = {u: learning_rate(schedule, BASE, u, U, total) for u in range(total)}
    # np.interp(t, [0, 4, 10], [0, lr, 0]) at t = (u + 1) / U.
    assert value[0] == pytest.approx(BASE * 0.1 / 4)
    assert value[39] == pytest.approx(BASE)
    assert value[69] == pytest.approx(BASE * 0.5)
    assert value[total - 1] == pytest.approx(0.0)
    assert all(v > 0 for u, v in value.items() if u < total - 1)
    rising = [value[u] for u in range(40)]
    assert rising == sorted(rising)


@pytest.mark.parametrize(
    "build",
    [
        lambda: MultiStepSchedule(milestones=(3, 2)),
        lambda: MultiStepSchedule(milestones=(2,), gamma=0.0),
        lambda: CosineSchedule(final_fraction=1.5),
        lambda: OneCycleSchedule(peak_fraction=1.0),
    ],
)
def test_invalid_schedules_are_refused(build: object) -> None:
    with pytest.raises(TrainingError) as error:
        build()  # type: ignore[operator]
    assert error.value.code == "bad_training_config"


def test_the_loop_steps_the_schedule_per_update() -> None:
    schedule = OneCycleSchedule()
    _, result = run(
        NaturalConfig(), schedule=schedule, optimizer=SGDConfig(lr=BASE), epochs=3, validation=None
    )
    updates = result.records[0].updates
    total = 3 * updates
    for record in result.records:
        last_update = (record.epoch + 1) * updates - 1
        assert record.lr == learning_rate(schedule, BASE, last_update, updates, total)
    assert result.records[-1].lr == pytest.approx(0.0)


def test_free_epochs_span_replays_epoch_equivalents() -> None:
    # Milestone at epoch 2 of a 4-epoch budget: Free-AT (m = 4) passes it inside its only
    # loop epoch, so its last update runs at the decayed rate, like natural training's.
    schedule = MultiStepSchedule(milestones=(2,), gamma=0.1)
    _, natural = run(
        NaturalConfig(), schedule=schedule, optimizer=SGDConfig(lr=BASE), epochs=4, validation=None
    )
    _, free = run(
        FreeConfig(eps=EPS, replays=4),
        schedule=schedule,
        optimizer=SGDConfig(lr=BASE),
        epochs=4,
        validation=None,
    )
    assert natural.records[-1].lr == free.records[-1].lr == pytest.approx(BASE * 0.1)
