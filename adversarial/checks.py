"""Evaluation validity checks: signs that a robustness number is too high to trust.

Gradient masking and weak attacks have made published defenses look robust (Carlini et al.
2019; Croce & Hein 2020). These checks look at the model (probability outputs, randomness,
vanishing gradients) and at the results (curves that rise with eps, iterative attacks
weaker than FGSM, a black-box attack beating the white-box ones, accuracy left at a huge
eps, attacks no better than random noise). Each finding has a stable ``code`` and a plain
explanation; none of them changes a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adversarial.attacks import make_attack
from adversarial.evaluation import AttackOutcome, EvaluationResult
from adversarial.models.blackbox import is_differentiable
from adversarial.randomness import ExampleStreams
from adversarial.threat import make_threat_model
from adversarial.verification import verify_adversarial

WHITE_BOX = frozenset({"fgsm", "rfgsm", "bim", "mifgsm", "pgd", "apgd-ce", "apgd-t"})
ITERATIVE = frozenset({"bim", "mifgsm", "pgd", "apgd-ce", "apgd-t", "autoattack"})
BLACK_BOX = frozenset({"square"})

# Differences below one point are within what restarts and ties move.
TOLERANCE = 0.01
# At half the input range (L-inf) every input can reach the same mid-grey image, so a
# working attack leaves about 0% accuracy.
LARGE_EPS_MAX_ACCURACY = 0.1


@dataclass(frozen=True)
class Finding:
    """One validity warning."""

    code: str
    message: str


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


@torch.no_grad()
def model_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    max_examples: int = 256,
) -> list[Finding]:
    """Checks of the model itself on (a prefix of) the evaluation data (for a black box,
    :func:`adversarial.models.blackbox.is_differentiable` false, only the determinism check:
    it has no gradients, and its scores may be probabilities)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        x = x[:max_examples].to(device)
        y = y[:max_examples].to(device)
        findings = []
        first = model(x).float()
        second = model(x).float()
        if not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
            findings.append(
                Finding(
                    "randomized_model",
                    "Two identical forward passes in eval mode gave different outputs (for example "
                    "dropout left on, or random input transformations). Gradients of a random "
                    "model mislead attacks, so robust accuracy can be overstated; an "
                    "expectation-over-transformation attack is needed for a trustworthy number.",
                )
            )
        if not is_differentiable(model):
            # A black box is queried, never differentiated: its scores may well be
            # probabilities (score-based attacks do not mind), and it has no gradients.
            return findings
        sums = first.sum(dim=1)
        if (
            first.min() >= 0
            and first.max() <= 1
            and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
        ):
            findings.append(
                Finding(
                    "probability_outputs",
                    "The model's outputs are non-negative and sum to 1: it seems to end in a "
                    "softmax. Attacks expect logits; cross-entropy on probabilities saturates and "
                    "its gradients vanish, which makes attacks weak. Export the model without "
                    "its final softmax.",
                )
            )
        findings += _gradient_findings(model, x, y)
        return findings
    finally:
        model.train(was_training)


def _gradient_findings(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Finding]:
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    if not torch.isfinite(grad).all():
        return [
            Finding(
                "nan_gradients",
                "Input gradients contain NaN or infinite values: gradient-based attacks cannot "
                "work, so their robust accuracy is meaningless for this model.",
            )
        ]
    per_example = grad.flatten(1).abs().amax(dim=1)
    zero = float((per_example == 0).float().mean())
    if zero > 0.1:
        return [
            Finding(
                "zero_gradients",
                f"Input gradients are exactly zero for {_pct(zero)} of the examples (for example "
                "a rounding or quantizing input layer). Gradient-based attacks see nothing there; "
                "their robust accuracy is an upper bound at best. Trust the black-box (Square) "
                "and ensemble numbers instead.",
            )
        ]
    tiny = float((per_example < 1e-8).float().mean())
    if tiny > 0.5:
        return [
            Finding(
                "tiny_gradients",
                f"Input gradients are below 1e-8 for {_pct(tiny)} of the examples: the loss is "
                "saturated (very confident outputs, or probabilities instead of logits). "
                "Cross-entropy attacks may stall; margin-based losses (APGD-T with DLR, the "
                "autoattack preset) do not.",
            )
        ]
    return []


def result_checks(result: EvaluationResult) -> list[Finding]:
    """Checks of the measured numbers."""
    findings: list[Finding] = []
    outcomes = result.outcomes
    findings += _rising_with_eps(outcomes)
    findings += _iterative_weaker_than_fgsm(outcomes)
    findings += _black_box_beats_white_box(outcomes)
    findings += _no_better_than_noise(result)
    if result.non_finite_predictions:
        findings.append(
            Finding(
                "non_finite_outputs",
                f"The model's logits were NaN or infinite in {result.non_finite_predictions} "
                "prediction(s). Such an example has no valid prediction and counts as "
                "misclassified, clean or adversarial.",
            )
        )
    return findings


def _rising_with_eps(outcomes: Sequence[AttackOutcome]) -> list[Finding]:
    findings = []
    families: dict[tuple[str, str, str], list[AttackOutcome]] = {}
    for outcome in outcomes:
        families.setdefault(outcome.config.family, []).append(outcome)
    for members in families.values():
        members = sorted(members, key=lambda o: o.config.eps)
        for smaller, larger in zip(members, members[1:], strict=False):
            if larger.robust_accuracy > smaller.robust_accuracy + TOLERANCE:
                findings.append(
                    Finding(
                        "accuracy_rises_with_eps",
                        f"{larger.config.name} ({larger.config.norm}): robust accuracy rises from "
                        f"{_pct(smaller.robust_accuracy)} at eps {smaller.config.eps:g} to "
                        f"{_pct(larger.robust_accuracy)} at eps {larger.config.eps:g}. A larger "
                        "ball contains the smaller one, so a working attack can only do better: "
                        "the attack is failing (gradient masking or a too-small step size).",
                    )
                )
                break
    return findings


def _same_point(outcomes: Sequence[AttackOutcome]) -> dict[tuple[str, float], list[AttackOutcome]]:
    groups: dict[tuple[str, float], list[AttackOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.config.norm, outcome.config.eps), []).append(outcome)
    return groups


def _iterative_weaker_than_fgsm(outcomes: Sequence[AttackOutcome]) -> list[Finding]:
    findings = []
    for (norm, eps), members in _same_point(outcomes).items():
        fgsm = [o for o in members if o.config.name == "fgsm"]
        if not fgsm:
            continue
        best_fgsm = min(o.robust_accuracy for o in fgsm)
        for outcome in members:
            if outcome.config.name in ITERATIVE and outcome.robust_accuracy > best_fgsm + TOLERANCE:
                findings.append(
                    Finding(
                        "iterative_weaker_than_fgsm",
                        f"{outcome.config.name} leaves {_pct(outcome.robust_accuracy)} robust at "
                        f"{norm} eps {eps:g}, more than FGSM's {_pct(best_fgsm)}. An iterative "
                        "attack includes FGSM's step; being weaker points to a bad step size, too "
                        "few steps, or gradient masking.",
                    )
                )
    return findings


def _black_box_beats_white_box(outcomes: Sequence[AttackOutcome]) -> list[Finding]:
    findings = []
    for (norm, eps), members in _same_point(outcomes).items():
        black = [o for o in members if o.config.name in BLACK_BOX]
        white = [o for o in members if o.config.name in WHITE_BOX]
        # Inside an ensemble, the components' cumulative numbers tell the same story.
        for ensemble in (o for o in members if o.components):
            before_black = [c for c in ensemble.components if c.name not in BLACK_BOX]
            if before_black and any(c.name in BLACK_BOX for c in ensemble.components):
                white_only = before_black[-1].robust_accuracy
                if ensemble.robust_accuracy < white_only - TOLERANCE:
                    findings.append(
                        _black_box_finding(
                            f"{ensemble.config.name} ({norm}, eps {eps:g})",
                            "Square",
                            ensemble.robust_accuracy,
                            "its gradient attacks",
                            white_only,
                        )
                    )
        if not black or not white:
            continue
        best_black = min(black, key=lambda o: o.robust_accuracy)
        best_white = min(o.robust_accuracy for o in white)
        if best_black.robust_accuracy < best_white - TOLERANCE:
            findings.append(
                _black_box_finding(
                    f"{norm} eps {eps:g}",
                    best_black.config.name,
                    best_black.robust_accuracy,
                    "every white-box attack",
                    best_white,
                )
            )
    return findings


def _black_box_finding(
    where: str, black: str, black_accuracy: float, white: str, white_accuracy: float
) -> Finding:
    return Finding(
        "black_box_beats_white_box",
        f"At {where}, the score-based {black} attack leaves {_pct(black_accuracy)} robust, "
        f"fewer than {white} ({_pct(white_accuracy)}). With honest gradients a white-box "
        "attack is at least as strong: the gradients are masked or obfuscated, and the "
        "white-box numbers overstate robustness.",
    )


def _no_better_than_noise(result: EvaluationResult) -> list[Finding]:
    findings = []
    noise = {(n.norm, n.eps): n.accuracy for n in result.noise}
    for (norm, eps), members in _same_point(result.outcomes).items():
        noise_accuracy = noise.get((norm, eps))
        if noise_accuracy is None:
            continue
        strongest = min(o.robust_accuracy for o in members)
        # Only where eps is large enough for something to work: some attack there lowered
        # accuracy clearly, or random noise itself did.
        meaningful = (
            result.clean_accuracy - strongest > 0.05
            or result.clean_accuracy - noise_accuracy > 0.05
        )
        if not meaningful:
            continue
        for outcome in members:
            if outcome.robust_accuracy >= noise_accuracy - TOLERANCE:
                findings.append(
                    Finding(
                        "attack_no_better_than_noise",
                        f"{outcome.config.name} ({norm}, eps {eps:g}) leaves "
                        f"{_pct(outcome.robust_accuracy)} robust, no better than random noise of "
                        f"the same size ({_pct(noise_accuracy)}). Adversarial examples are not "
                        "noise (Goodfellow et al. 2015): an attack this weak is not measuring "
                        "robustness here.",
                    )
                )
    return findings


def large_eps_check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    input_range: tuple[float, float],
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_examples: int = 100,
    example_ids: torch.Tensor | None = None,
) -> tuple[float, list[Finding]]:
    """Accuracy under PGD-20 at L-inf eps = half the input range; a warning if not near 0.

    Runs on the first ``max_examples`` of ``x``; ``example_ids`` (default ``0..N-1``) key
    their random starts, as in :func:`adversarial.evaluation.evaluate`.
    """
    device = torch.device(device)
    lower, upper = input_range
    eps = (upper - lower) / 2
    ids = torch.arange(x.shape[0]) if example_ids is None else example_ids
    x, y, ids = x[:max_examples].to(device), y[:max_examples].to(device), ids[:max_examples]
    threat = make_threat_model("linf", eps, lower, upper)
    attack = make_attack("pgd", model, threat, {"steps": 20})
    x_adv = attack(x, y, ExampleStreams.for_examples(seed, ids.cpu(), "large_eps"))
    verify_adversarial(threat, x_adv, x, "large-eps check")
    with torch.no_grad():
        accuracy = float((model(x_adv).argmax(dim=1) == y).float().mean())
    if accuracy <= LARGE_EPS_MAX_ACCURACY:
        return accuracy, []
    return accuracy, [
        Finding(
            "not_broken_at_large_eps",
            f"PGD-20 at L-inf eps {eps:g} (half the input range, where every input can be turned "
            f"into the same grey image) still leaves {_pct(accuracy)} accuracy. A working attack "
            "gets close to 0% there: the attacks do not reach this model (masked gradients, "
            "randomness or a bug), so every robust accuracy above is suspect.",
        )
    ]
