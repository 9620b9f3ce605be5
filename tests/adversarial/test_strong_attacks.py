"""R+FGSM, BIM, MI-FGSM, targeted modes, APGD-CE/DLR/T and Square.

Invariants for every attack and norm, targeted behaviour, early stopping measured on the
model itself, and agreement with torchattacks (an independent implementation) at the same
budget on the same model and data.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchattacks
from torch import nn

import adversarial.attacks.square as square_module
from adversarial.attacks import (
    APGD,
    ATTACKS,
    BIM,
    MIFGSM,
    PGD,
    RFGSM,
    TargetableAttack,
    make_attack,
)
from adversarial.attacks.apgd import checkpoints
from adversarial.attacks.losses import dlr_loss, targeted_dlr_loss
from adversarial.attacks.square import square_fraction
from adversarial.threat import L2Ball, LinfBall, make_threat_model
from tests.trained import digits_arrays, trained_digits_cnn


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_digits_cnn()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_arrays()
    return x_test, y_test


def predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predictions(model, x) == y).float().mean().item()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- invariants ------------------------------------------------------------------------------

CASES = [
    ("rfgsm", "linf", 0.1, {}),
    ("rfgsm", "l2", 0.5, {"alpha": 0.2}),
    ("bim", "linf", 0.1, {}),
    ("bim", "l2", 0.5, {"steps": 5, "early_stop": False}),
    ("mifgsm", "linf", 0.1, {}),
    ("mifgsm", "l2", 0.5, {"decay": 0.5}),
    ("apgd-ce", "linf", 0.1, {"steps": 10}),
    ("apgd-ce", "l2", 0.5, {"steps": 10, "restarts": 2}),
    ("apgd-dlr", "linf", 0.1, {"steps": 10}),
    ("apgd-t", "linf", 0.1, {"steps": 10, "target_classes": 3}),
    ("apgd-t", "l2", 0.5, {"steps": 10, "target_classes": 2, "restarts": 2}),
    ("square", "linf", 0.1, {"queries": 100}),
    ("square", "l2", 0.5, {"queries": 100}),
    ("fgsm", "linf", 0.1, {"target": "least_likely"}),
    ("rfgsm", "l2", 0.5, {"target": 3}),
    ("bim", "linf", 0.1, {"target": "least_likely"}),
    ("mifgsm", "l2", 0.5, {"target": 3}),
    ("pgd", "linf", 0.1, {"steps": 5, "target": 3, "restarts": 2}),
]


@pytest.mark.parametrize(("name", "norm", "eps", "params"), CASES)
def test_invariants(model, data, name, norm, eps, params) -> None:
    x, y = data[0][:64], data[1][:64]
    original = x.clone()
    threat = make_threat_model(norm, eps)
    model.train()
    try:
        runs = []
        for _ in range(2):
            attack = make_attack(name, model, threat, params, generator=seeded(123))
            runs.append(attack(x, y))
            assert model.training, "the attack did not restore train mode"
    finally:
        model.eval()
    x_adv = runs[0]
    assert torch.equal(runs[0], runs[1]), "not deterministic for a fixed generator seed"
    assert torch.equal(x, original), "the attack modified its input"
    assert x_adv.shape == x.shape
    assert not x_adv.requires_grad
    assert (threat.distance(x_adv, x) <= eps * (1 + 1e-5) + 1e-6).all()
    assert x_adv.min() >= 0.0
    assert x_adv.max() <= 1.0
    if "target" not in params:
        assert accuracy(model, x_adv, y) < accuracy(model, x, y)


def test_registry_takes_the_service_params(model) -> None:
    # The job spec passes every field, unset optional ones as None.
    specs = {
        "rfgsm": {"alpha": None, "target": None},
        "bim": {"steps": 10, "step_size": None, "early_stop": True, "target": None},
        "mifgsm": {"steps": 10, "step_size": None, "decay": 1.0, "early_stop": True, "target": 3},
        "apgd-ce": {"steps": 100, "restarts": 1, "rho": 0.75},
        "apgd-t": {"steps": 100, "target_classes": 9, "restarts": 1, "rho": 0.75},
        "square": {"queries": 5000, "p_init": 0.8},
    }
    threat = LinfBall(0.1)
    for name, params in specs.items():
        assert name in ATTACKS
        make_attack(name, model, threat, params)
    assert make_attack("bim", model, threat).step_size == pytest.approx(1.25 * 0.1 / 10)
    assert make_attack("mifgsm", model, threat).step_size == pytest.approx(0.1 / 10)
    assert make_attack("rfgsm", model, threat).alpha == pytest.approx(0.05)
    assert make_attack("apgd-t", model, threat).planned_steps() == 900
    assert make_attack("square", model, threat).planned_steps() == 5000


def test_invalid_arguments_fail_clearly(model, data) -> None:
    x, y = data[0][:4], data[1][:4]
    threat = LinfBall(0.1)
    with pytest.raises(ValueError, match="target must be"):
        make_attack("pgd", model, threat, {"target": "most_likely"})
    with pytest.raises(ValueError, match="target must be"):
        make_attack("fgsm", model, threat, {"target": -1})
    with pytest.raises(ValueError, match="does not exist"):
        make_attack("bim", model, threat, {"target": 10})(x, y)
    with pytest.raises(TypeError):
        make_attack("apgd-ce", model, threat, {"target": 3})
    with pytest.raises(ValueError, match="must not exceed eps"):
        make_attack("rfgsm", model, threat, {"alpha": 0.2})(x, y)
    with pytest.raises(ValueError, match="rho"):
        make_attack("apgd-ce", model, threat, {"rho": 0.0})
    with pytest.raises(ValueError, match="images"):
        make_attack("square", model, threat)(x.flatten(1), y)


def test_apgd_t_needs_three_classes() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    for num_classes in (3, 2):
        linear = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes)).eval()
        y = predictions(linear, x)
        attack = make_attack("apgd-t", linear, LinfBall(0.1), {"steps": 5}, generator=seeded())
        if num_classes == 3:
            assert (LinfBall(0.1).distance(attack(x, y), x) <= 0.1 + 1e-6).all()
        else:
            with pytest.raises(ValueError, match="at least 3 classes"):
                attack(x, y)


# -- targeted modes --------------------------------------------------------------------------

TARGETABLE = [
    ("fgsm", {}),
    ("rfgsm", {}),
    ("bim", {"steps": 10}),
    ("mifgsm", {"steps": 10}),
    ("pgd", {"steps": 10}),
]


@pytest.mark.parametrize(("name", "params"), TARGETABLE)
def test_targeted_attacks_reach_their_target(model, data, name, params) -> None:
    x, y = data
    threat = LinfBall(0.3)

    def predicted(target: int | str | None) -> torch.Tensor:
        attack = make_attack(name, model, threat, {**params, "target": target}, generator=seeded())
        x_adv = attack(x, y)
        if target == 3:
            # Nothing to do for examples of the target class: returned unchanged.
            assert torch.equal(x_adv[y == 3], x[y == 3])
        return predictions(model, x_adv)

    untargeted = predicted(None)
    rate_untargeted = (untargeted == 3)[y != 3].float().mean()
    rate_targeted = (predicted(3) == 3)[y != 3].float().mean()
    assert rate_targeted > rate_untargeted + 0.15, (rate_targeted, rate_untargeted)
    if name in ("bim", "pgd"):
        assert rate_targeted > 0.9  # iterative attacks at a large eps reach the target
    with torch.no_grad():
        least_likely = model(x).argmin(dim=1)
    hits_least_likely = (predicted("least_likely") == least_likely).float().mean()
    assert hits_least_likely > (untargeted == least_likely).float().mean()


def test_least_likely_targets_are_the_argmin_of_clean_logits(model, data) -> None:
    x, y = data
    attack = make_attack("bim", model, LinfBall(0.1), {"target": "least_likely"})
    assert isinstance(attack, TargetableAttack)
    with torch.no_grad():
        expected = model(x).argmin(dim=1)
    assert torch.equal(attack.target_labels(x, y), expected)
    assert torch.equal(
        make_attack("pgd", model, LinfBall(0.1), {"target": 7}).target_labels(x, y),
        torch.full_like(y, 7),
    )


# -- early stopping: no gradient (or query) on an example already misclassified --------------


class ForwardRecorder(nn.Module):
    """Records each forward pass: gradients wanted, batch size, rows that count as success."""

    def __init__(self, inner: nn.Module, success: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.success = success
        self.passes: list[tuple[bool, int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(x)
        succeeded = int(self.success(logits.detach().argmax(dim=1)).sum())
        self.passes.append((x.requires_grad, x.shape[0], succeeded))
        return logits


EARLY_STOP_CASES = [
    ("apgd-ce", "linf", {"steps": 20}, None),
    ("apgd-ce", "l2", {"steps": 20}, None),
    ("apgd-t", "linf", {"steps": 20, "target_classes": 1}, None),
    ("mifgsm", "linf", {"steps": 20}, None),
    ("bim", "l2", {"steps": 20, "step_size": 0.1}, None),
    ("pgd", "linf", {"steps": 20, "target": 5}, 5),
    ("square", "linf", {"queries": 200}, None),
]


@pytest.mark.parametrize(("name", "norm", "params", "target"), EARLY_STOP_CASES)
def test_early_stop_spends_nothing_on_fooled_examples(
    model, data, name, norm, params, target
) -> None:
    # One class only, so the recorder can tell success from the predictions alone.
    x, y = data
    label = 8
    chosen = (y == label) & (predictions(model, x) == label)
    x, y = x[chosen], y[chosen]

    def success(predicted: torch.Tensor) -> torch.Tensor:
        return predicted == target if target is not None else predicted != label

    recorder = ForwardRecorder(model, success).eval()
    stepped: list[int] = []
    attack = make_attack(
        name,
        recorder,
        make_threat_model(norm, 0.1 if norm == "linf" else 0.5),
        params,
        generator=seeded(),
        on_step=stepped.append,
    )
    x_adv = attack(x, y)
    # Square only queries; the gradient attacks' own no-grad passes are clean or final.
    counted = [p for p in recorder.passes if p[0] == (name != "square")]
    sizes = [size for _, size, _ in counted]
    for (_, size, succeeded), next_size in zip(counted, sizes[1:], strict=False):
        assert next_size == size - succeeded, sizes
    assert stepped == sizes  # on_step reports exactly the work done
    assert sum(sizes) < attack.planned_steps() * len(y)
    fooled = success(predictions(model, x_adv))
    assert 0 < int(fooled.sum()) < len(y)


# -- agreement with torchattacks -------------------------------------------------------------


def test_bim_without_early_stop_equals_torchattacks(model, data) -> None:
    x, y = data
    ours = BIM(model, LinfBall(0.1), steps=10, step_size=0.0125, early_stop=False)(x, y)
    theirs = torchattacks.BIM(model, eps=0.1, alpha=0.0125, steps=10)(x, y)
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_mifgsm_equals_torchattacks(model, data) -> None:
    x, y = data
    ours = MIFGSM(model, LinfBall(0.1), steps=10, step_size=0.01, decay=1.0, early_stop=False)
    theirs = torchattacks.MIFGSM(model, eps=0.1, alpha=0.01, steps=10, decay=1.0)
    x_ours, x_theirs = ours(x, y), theirs(x, y)
    assert abs(accuracy(model, x_ours, y) - accuracy(model, x_theirs, y)) <= 0.01
    assert torch.allclose(x_ours, x_theirs, atol=1e-6)
    # Early stopping keeps the first fooling iterate: never weaker than the final iterate.
    early = MIFGSM(model, LinfBall(0.1), steps=10, step_size=0.01)(x, y)
    assert accuracy(model, early, y) <= accuracy(model, x_ours, y)


def test_rfgsm_equals_torchattacks_single_step(model, data) -> None:
    # torchattacks' RFGSM with steps=1 and alpha = eps / 2 is the paper's R+FGSM. Its noise
    # comes from the global generator; seeded alike, both draw the same signs, so the points
    # match (the accuracy spread across seeds is about 4 points at eps 0.2).
    x, y = data
    for eps in (0.1, 0.2):
        torch.manual_seed(3)
        theirs = torchattacks.RFGSM(model, eps=eps, alpha=eps / 2, steps=1)(x, y)
        ours = RFGSM(model, LinfBall(eps), generator=seeded(3))(x, y)
        assert abs(accuracy(model, ours, y) - accuracy(model, theirs, y)) <= 0.02
        assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_apgd_ce_agrees_with_torchattacks(model, data, norm, eps) -> None:
    x, y = data
    reference = torchattacks.APGD(
        model,
        norm="Linf" if norm == "linf" else "L2",
        eps=eps,
        steps=30,
        n_restarts=1,
        loss="ce",
        seed=0,
    )
    theirs = accuracy(model, reference(x, y), y)
    ours = accuracy(
        model, APGD(model, make_threat_model(norm, eps), steps=30, generator=seeded())(x, y), y
    )
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


def test_apgd_t_agrees_with_torchattacks(model, data) -> None:
    x, y = data
    reference = torchattacks.APGDT(
        model, norm="Linf", eps=0.1, steps=20, n_restarts=1, n_classes=10, seed=0
    )
    theirs = accuracy(model, reference(x, y), y)
    attack = make_attack("apgd-t", model, LinfBall(0.1), {"steps": 20}, generator=seeded())
    ours = accuracy(model, attack(x, y), y)
    assert abs(ours - theirs) <= 0.02, (ours, theirs)


@pytest.mark.parametrize(("norm", "ball"), [("linf", LinfBall(0.1)), ("l2", L2Ball(0.5))])
def test_apgd_ce_is_at_least_as_strong_as_pgd(model, data, norm, ball) -> None:
    x, y = data
    pgd = accuracy(model, PGD(model, ball, steps=20, generator=seeded())(x, y), y)
    apgd = accuracy(model, APGD(model, ball, steps=20, generator=seeded())(x, y), y)
    assert apgd <= pgd + 0.005, (apgd, pgd)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_square_agrees_with_torchattacks(model, data, monkeypatch, norm, eps) -> None:
    x, y = data
    reference = torchattacks.Square(
        model,
        norm="Linf" if norm == "linf" else "L2",
        eps=eps,
        n_queries=1000,
        p_init=0.8,
        seed=0,
    )
    theirs = accuracy(model, reference(x, y), y)

    def ours() -> float:
        attack = make_attack(
            "square", model, make_threat_model(norm, eps), {"queries": 1000}, generator=seeded()
        )
        return accuracy(model, attack(x, y), y)

    # Our squares may touch the last row and column; the reference (like the authors' code)
    # draws corners in [0, H - side), which on 8x8 digits leaves them out of every square.
    assert ours() <= theirs + 0.02

    def reference_corners(side, height, width, like, random):
        def draw(size: int) -> torch.Tensor:
            return random.integers(0, max(size - side, 1), (), device=like.device)

        return draw(height), draw(width)

    monkeypatch.setattr(square_module, "_square_corners", reference_corners)
    same_squares = ours()
    assert abs(same_squares - theirs) <= 0.02, (same_squares, theirs)


# -- pieces ----------------------------------------------------------------------------------


def test_dlr_losses_match_the_reference_formulas() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32, 10)
    labels = torch.randint(0, 10, (32,))
    targets = (labels + torch.randint(1, 10, (32,))) % 10
    apgd = torchattacks.APGD(nn.Identity())
    apgdt = torchattacks.APGDT(nn.Identity())
    assert torch.allclose(dlr_loss(logits, labels), apgd.dlr_loss(logits, labels))
    assert torch.allclose(
        targeted_dlr_loss(logits, labels, targets),
        apgdt.dlr_loss_targeted(logits, labels, targets),
    )


def test_apgd_checkpoints_and_square_schedule() -> None:
    # Croce & Hein: p_1 = 0.22, intervals shrink by 0.03 down to 0.06 (of 100 steps).
    schedule = checkpoints(100)
    assert list(schedule)[:4] == [21, 40, 56, 69]
    assert list(schedule.values())[:4] == [22, 19, 16, 13]
    assert min(schedule.values()) == 6
    assert max(schedule) < 100
    # Andriushchenko et al.: p halves after 10, 50, 200, ... of 10,000 iterations.
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 60, 1000) == pytest.approx(0.8 / 2**4)
