"""Every method trains, lowers its loss, and costs exactly its number of gradient passes."""

from __future__ import annotations

import math

import pytest
import torch

from adversarial.errors import TrainingError
from adversarial.training import (
    UNLABELED,
    FastConfig,
    FGSMConfig,
    FreeConfig,
    MethodConfig,
    NaturalConfig,
    PGDConfig,
    TradesConfig,
    TrainingData,
    VATConfig,
    method_config,
)
from tests.adversarial.training.common import (
    BATCH_SIZE,
    EPS,
    TRAIN_EXAMPLES,
    run,
    tiny_data,
    tiny_model,
    weights,
)

METHODS: dict[str, MethodConfig] = {
    "natural": NaturalConfig(),
    "fgsm": FGSMConfig(eps=EPS),
    "pgd": PGDConfig(eps=EPS, steps=2),
    "free": FreeConfig(eps=EPS, replays=2),
    "fast": FastConfig(eps=EPS),
    "trades": TradesConfig(eps=EPS, steps=2),
    "vat": VATConfig(eps=EPS),
    "fgsm-l2": FGSMConfig(eps=0.5, norm="l2"),
    "free-l2": FreeConfig(eps=0.5, norm="l2", replays=2),
}
BATCHES = math.ceil(TRAIN_EXAMPLES / BATCH_SIZE)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_and_lowers_its_loss(name: str) -> None:
    method = METHODS[name]
    epochs = 4 if isinstance(method, FreeConfig) else 2
    before = weights(tiny_model())
    model, result = run(method, epochs=epochs)
    losses = [record.loss for record in result.records]
    assert len(losses) == 2
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    assert not model.training
    last = result.records[-1]
    assert last.clean_accuracy is not None
    assert last.clean_accuracy > 0.5
    assert last.robust_accuracy is not None
    assert last.robust_accuracy <= last.clean_accuracy


# Gradient computations per example per loop epoch (see adversarial.training.counting).
PASSES = {
    "natural": 1,
    "fgsm": 2,  # the clean pass (weights and input gradient at once), the adversarial pass
    "pgd": 2 + 1,  # K = 2 attack steps, then the training pass
    "free": 2,  # m = 2 replays of one pass each
    "fast": 2,  # the attack step, the training pass
    "trades": 2 + 2,  # K = 2 steps, then one backward through clean and adversarial passes
    "vat": 1 + 2,  # one power iteration, then one backward through both passes
    "fgsm-l2": 2,
    "free-l2": 2,
}


@pytest.mark.parametrize("name", list(METHODS))
def test_gradient_computations_are_counted_exactly(name: str) -> None:
    method = METHODS[name]
    _, result = run(method, epochs=2 if isinstance(method, FreeConfig) else 1)
    (record,) = result.records
    assert record.gradient_computations == PASSES[name] * TRAIN_EXAMPLES
    replays = method.replays if isinstance(method, FreeConfig) else 1
    assert record.updates == BATCHES * replays
    # The validation attacks are counted apart, never as training cost.
    assert record.validation_gradient_computations > 0
    assert result.gradient_computations == record.gradient_computations


def test_free_costs_what_natural_training_costs() -> None:
    _, natural = run(NaturalConfig(), epochs=4, validation=None)
    _, free = run(FreeConfig(eps=EPS, replays=4), epochs=4, validation=None)
    assert len(natural.records) == 4
    assert len(free.records) == 1
    assert free.gradient_computations == natural.gradient_computations == 4 * TRAIN_EXAMPLES
    assert sum(r.updates for r in free.records) == sum(r.updates for r in natural.records)


def test_free_rounds_its_loop_epochs_up() -> None:
    _, result = run(FreeConfig(eps=EPS, replays=4), epochs=5, validation=None)
    assert len(result.records) == 2  # ceil(5 / 4)
    assert result.gradient_computations == 8 * TRAIN_EXAMPLES


def test_pgd_k_costs_k_plus_one_natural_passes() -> None:
    _, natural = run(NaturalConfig(), epochs=1, validation=None)
    for steps in (1, 3):
        _, pgd = run(PGDConfig(eps=EPS, steps=steps), epochs=1, validation=None)
        assert pgd.gradient_computations == (steps + 1) * natural.gradient_computations


def test_free_perturbation_carries_over_and_stays_in_the_ball() -> None:
    _, result = run(FreeConfig(eps=EPS, replays=2), epochs=2, validation=None)
    perturbation = result.checkpoint.method_state["perturbation"]
    assert perturbation.shape == (BATCH_SIZE, 1, 8, 8)
    assert float(perturbation.abs().max()) <= EPS + 1e-7
    # The carried perturbation is a real one, not zeros.
    assert float(perturbation.abs().mean()) > EPS / 4


def test_method_config_by_name() -> None:
    config = method_config("free", eps=0.1, replays=3)
    assert config == FreeConfig(eps=0.1, replays=3)
    with pytest.raises(TrainingError) as unknown:
        method_config("magic")
    assert unknown.value.code == "unknown_method"
    with pytest.raises(TrainingError) as bad:
        method_config("pgd", eps=0.1, replays=3)
    assert bad.value.code == "bad_training_config"
    for params in ({"eps": -1.0}, {"eps": 0.1, "norm": "l7"}, {"eps": 0.1, "steps": 0}):
        with pytest.raises(TrainingError) as invalid:
            method_config("pgd", **params)
        assert invalid.value.code == "bad_training_config"


def test_methods_that_need_labels_refuse_unlabeled_examples() -> None:
    data = tiny_data(validation=False)
    labels = data.labels.clone()
    labels[::2] = UNLABELED
    with pytest.raises(TrainingError) as error:
        run(FGSMConfig(eps=EPS), data=TrainingData(data.inputs, labels), validation=None)
    assert error.value.code == "unlabeled_examples"
