"""Catastrophic-overfitting detection: the pure rule on crafted histories, and the stop."""

from __future__ import annotations

import torch

from adversarial.training import (
    Checkpoint,
    EpochRecord,
    FastConfig,
    OverfittingRule,
    RobustnessCheck,
    detect_catastrophic_overfitting,
)
from tests.adversarial.training.common import EPS, run, tiny_model


def _history(*pairs: tuple[float, float]) -> list[RobustnessCheck]:
    return [RobustnessCheck(pgd, fgsm) for pgd, fgsm in pairs]


def test_a_steady_run_does_not_collapse() -> None:
    history = _history((0.30, 0.40), (0.38, 0.47), (0.42, 0.50), (0.41, 0.52))
    assert detect_catastrophic_overfitting(history) is None


def test_pgd_collapsing_while_fgsm_rises_is_detected() -> None:
    history = _history((0.30, 0.40), (0.44, 0.50), (0.46, 0.52), (0.02, 0.85))
    collapse = detect_catastrophic_overfitting(history)
    assert collapse is not None
    assert (collapse.check, collapse.best_check) == (3, 2)
    assert collapse.pgd_accuracy == 0.02
    assert collapse.best_pgd_accuracy == 0.46
    assert "46.0%" in collapse.describe()
    assert "85.0%" in collapse.describe()


def test_both_accuracies_falling_is_a_bad_epoch_not_a_collapse() -> None:
    history = _history((0.44, 0.50), (0.10, 0.15))
    assert detect_catastrophic_overfitting(history) is None


def test_the_drop_is_measured_from_the_best_earlier_check() -> None:
    # Each step falls by less than 0.2; from the best check the fall reaches 0.2.
    history = _history((0.50, 0.50), (0.42, 0.55), (0.36, 0.60), (0.30, 0.70))
    collapse = detect_catastrophic_overfitting(history)
    assert collapse is not None
    assert (collapse.check, collapse.best_check) == (3, 0)
    assert detect_catastrophic_overfitting(history[:3]) is None


def test_thresholds_are_the_rule_s() -> None:
    history = _history((0.50, 0.50), (0.39, 0.52))
    assert detect_catastrophic_overfitting(history) is None
    assert detect_catastrophic_overfitting(history, OverfittingRule(pgd_drop=0.1)) is not None
    strict = OverfittingRule(pgd_drop=0.1, fgsm_rise=0.05)
    assert detect_catastrophic_overfitting(history, strict) is None


def test_the_first_collapse_is_reported() -> None:
    history = _history((0.5, 0.5), (0.1, 0.9), (0.0, 0.95))
    collapse = detect_catastrophic_overfitting(history)
    assert collapse is not None
    assert collapse.check == 1
    assert detect_catastrophic_overfitting([]) is None


def test_the_loop_stops_and_keeps_the_best_weights() -> None:
    # Wreck the weights after epoch 1 (the epoch hook sees the live model): epoch 2's PGD
    # accuracy then collapses, and a rule that ignores FGSM (fgsm_rise -1) must stop.
    rule = OverfittingRule(pgd_drop=0.05, fgsm_rise=-1.0)
    saved: list[Checkpoint] = []
    holder: dict[str, torch.nn.Module] = {}

    def wreck(record: EpochRecord, checkpoint: Checkpoint) -> None:
        saved.append(checkpoint)
        if record.epoch == 1:
            with torch.no_grad():
                for parameter in holder["model"].parameters():
                    parameter.zero_()

    holder["model"] = tiny_model()
    model, result = run(
        FastConfig(eps=EPS, overfitting=rule), model=holder["model"], epochs=5, epoch_hook=wreck
    )
    assert result.stopped_early
    assert len(result.records) == 3
    assert [warning.code for warning in result.warnings] == ["catastrophic_overfitting"]
    assert result.best is not None
    assert result.best.epoch in (0, 1)
    assert result.weights_epoch == result.best.epoch
    best_state = saved[result.best.epoch].model_state
    assert all(torch.equal(value, best_state[key]) for key, value in model.state_dict().items())
    assert result.checkpoint.stopped_early
    assert result.checkpoint.weights_epoch == result.best.epoch


def test_fast_without_validation_warns_that_it_cannot_check() -> None:
    _, result = run(FastConfig(eps=EPS), epochs=1, validation=None)
    assert [warning.code for warning in result.warnings] == ["overfitting_check_unavailable"]
    assert not result.stopped_early
