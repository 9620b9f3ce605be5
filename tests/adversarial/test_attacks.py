"""Attacks and evaluation: invariants, and agreement with torchattacks on one model and data."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from adversarial.attacks import FGSM, PGD, make_attack
from adversarial.evaluation import AttackConfig, evaluate
from adversarial.randomness import GeneratorSource
from adversarial.threat import L2Ball, LinfBall, make_threat_model
from tests.trained import digits_arrays, trained_digits_cnn


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_arrays()
    return x_test, y_test


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ATTACKS = [
    ("fgsm", "linf", 0.1, {}),
    ("fgsm", "l2", 1.0, {}),
    ("pgd", "linf", 0.1, {"steps": 7}),
    ("pgd", "l2", 1.0, {"steps": 7, "restarts": 2}),
    ("pgd", "linf", 0.1, {"steps": 7, "random_start": False, "early_stop": False}),
]


@pytest.mark.parametrize(("name", "norm", "eps", "params"), ATTACKS)
def test_perturbation_stays_in_ball_and_range(model, data, name, norm, eps, params) -> None:
    x, y = data[0][:64], data[1][:64]
    original = x.clone()
    threat = make_threat_model(norm, eps)
    generator = torch.Generator().manual_seed(0)
    x_adv = make_attack(name, model, threat, params, generator=generator)(x, y)
    assert torch.equal(x, original), "the attack modified its input"
    assert x_adv.shape == x.shape
    assert not x_adv.requires_grad
    assert (threat.distance(x_adv, x) <= eps * (1 + 1e-5) + 1e-6).all()
    assert x_adv.min() >= 0.0
    assert x_adv.max() <= 1.0
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


@pytest.mark.parametrize(("name", "norm", "eps", "params"), ATTACKS)
def test_mode_is_restored_and_results_are_deterministic(
    model, data, name, norm, eps, params
) -> None:
    x, y = data[0][:32], data[1][:32]
    model.train()
    try:
        runs = []
        for _ in range(2):
            generator = torch.Generator().manual_seed(123)
            runs.append(
                make_attack(name, model, make_threat_model(norm, eps), params, generator=generator)(
                    x, y
                )
            )
            assert model.training, "the attack did not restore train mode"
        assert torch.equal(runs[0], runs[1])
    finally:
        model.eval()


def test_threat_models_project() -> None:
    x = torch.full((2, 1, 4, 4), 0.5)
    far = x + torch.randn(x.shape)
    linf = LinfBall(0.1).project(far, x)
    assert (linf - x).abs().amax() <= 0.1 + 1e-7
    assert linf.min() >= 0
    assert linf.max() <= 1
    l2 = L2Ball(0.5).project(far, x)
    assert ((l2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()
    assert torch.equal(L2Ball(0.5).project(x, x), x)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        LinfBall(-1.0)


def test_l2_random_init_is_inside_the_ball() -> None:
    x = torch.full((64, 3, 8, 8), 0.5)
    start = L2Ball(0.3).random_init(
        x, GeneratorSource(x.shape[0], torch.Generator().manual_seed(0))
    )
    norms = (start - x).flatten(1).norm(dim=1)
    assert (norms <= 0.3 + 1e-6).all()
    assert norms.mean() > 0.2


# -- agreement with torchattacks (same model, same data) ------------------------------------


def test_fgsm_agrees_with_torchattacks(model, data) -> None:
    x, y = data
    for eps in (0.05, 0.1, 0.2):
        ours = accuracy(model, FGSM(model, LinfBall(eps))(x, y), y)
        theirs = accuracy(model, torchattacks.FGSM(model, eps=eps)(x, y), y)
        assert ours == theirs, (eps, ours, theirs)


def test_pgd_without_random_start_agrees_with_torchattacks(model, data) -> None:
    x, y = data
    for eps, step_size, steps in ((0.1, 0.02, 10), (0.15, 0.01, 20)):
        ours = PGD(
            model,
            LinfBall(eps),
            steps=steps,
            step_size=step_size,
            random_start=False,
            early_stop=False,
        )(x, y)
        theirs = torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=False)(
            x, y
        )
        assert accuracy(model, ours, y) == accuracy(model, theirs, y)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_pgd_with_random_start_is_within_two_points_of_torchattacks(model, data) -> None:
    x, y = data
    torch.manual_seed(0)
    theirs = accuracy(
        model, torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=10, random_start=True)(x, y), y
    )
    ours = accuracy(
        model,
        PGD(
            model,
            LinfBall(0.1),
            steps=10,
            step_size=0.02,
            generator=torch.Generator().manual_seed(0),
        )(x, y),
        y,
    )
    assert abs(ours - theirs) <= 0.02, (ours, theirs)
    # Early stopping keeps the first fooling iterate: never weaker than the final iterate.
    final_iterate = accuracy(
        model,
        PGD(
            model,
            LinfBall(0.1),
            steps=10,
            step_size=0.02,
            early_stop=False,
            generator=torch.Generator().manual_seed(0),
        )(x, y),
        y,
    )
    assert ours <= final_iterate


def test_pgd_l2_agrees_with_torchattacks(model, data) -> None:
    x, y = data
    ours = PGD(model, L2Ball(1.0), steps=10, step_size=0.2, random_start=False, early_stop=False)(
        x, y
    )
    theirs = torchattacks.PGDL2(model, eps=1.0, alpha=0.2, steps=10, random_start=False)(x, y)
    assert abs(accuracy(model, ours, y) - accuracy(model, theirs, y)) <= 1 / len(y)


# -- evaluation ------------------------------------------------------------------------------


class GradientCounter(nn.Module):
    """Counts examples that went through a forward pass with gradients wanted."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.gradient_examples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            self.gradient_examples += x.shape[0]
        return self.inner(x)


def test_evaluation_attacks_only_correct_examples(model, data) -> None:
    x, y = data
    counter = GradientCounter(model).eval()
    result = evaluate(counter, x, y, [AttackConfig("fgsm", "linf", 0.1)], num_classes=10)
    assert counter.gradient_examples == int(result.clean_correct.sum()) < len(y)


def test_early_stop_spends_fewer_gradients(model, data) -> None:
    x, y = data
    config = {"steps": 20, "step_size": 0.02}
    spent = {}
    for early_stop in (True, False):
        counter = GradientCounter(model).eval()
        evaluate(
            counter,
            x,
            y,
            [AttackConfig("pgd", "linf", 0.1, {**config, "early_stop": early_stop})],
            num_classes=10,
        )
        spent[early_stop] = counter.gradient_examples
    assert spent[True] < 0.8 * spent[False]


def test_evaluation_result(model, data) -> None:
    x, y = data
    progress: list[float] = []
    configs = [
        AttackConfig("fgsm", "linf", 0.1),
        AttackConfig("pgd", "linf", 0.1, {"steps": 10, "step_size": 0.02}),
        AttackConfig("pgd", "l2", 1.0, {"steps": 5}),
    ]
    result = evaluate(
        model,
        x,
        y,
        configs,
        num_classes=10,
        progress=lambda fraction, stage, message: progress.append(fraction),
    )
    assert result.clean_accuracy == pytest.approx(accuracy(model, x, y))
    fgsm, pgd, _ = result.outcomes
    assert pgd.robust_accuracy <= fgsm.robust_accuracy <= result.clean_accuracy
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    linf = next(w for w in result.worst_cases if w.norm == "linf")
    assert linf.robust_accuracy <= min(fgsm.robust_accuracy, pgd.robust_accuracy)
    assert len(pgd.per_class_accuracy) == 10
    assert pgd.mean_perturbation_norm is not None
    assert pgd.mean_perturbation_norm <= 0.1 + 1e-6
    assert 0 < pgd.mean_wrong_confidence <= 1
    again = evaluate(model, x, y, configs, num_classes=10)
    assert [o.robust_accuracy for o in again.outcomes] == [
        o.robust_accuracy for o in result.outcomes
    ]


def test_a_progress_callback_can_abort(model, data) -> None:
    class Stop(Exception):
        pass

    def stop(fraction: float, stage: str, message: str) -> None:
        if stage == "pgd":
            raise Stop

    model.train()
    try:
        with pytest.raises(Stop):
            evaluate(
                model, *data, [AttackConfig("pgd", "linf", 0.1)], num_classes=10, progress=stop
            )
        assert model.training
    finally:
        model.eval()  # the model is shared by every engine test
