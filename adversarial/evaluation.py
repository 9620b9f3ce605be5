"""Robustness evaluation: clean accuracy, then each attack on the points still correct.

An example already misclassified on clean input counts as non-robust and never costs a
gradient. Each configured attack is reported on its own; the per-example worst case across
the attacks of one norm and eps is reported as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adversarial.attacks import make_attack
from adversarial.threat import make_threat_model

# progress(fraction in [0, 1], stage, message). A callback may raise to abort the evaluation
# (cancellation): the exception propagates unchanged.
ProgressCallback = Callable[[float, str, str], None]


@dataclass(frozen=True)
class AttackConfig:
    """One attack at one eps: ``name`` from the attack registry, ``norm``, ``eps``, params."""

    name: str
    norm: str
    eps: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short human-readable name, such as ``pgd linf eps=0.1``."""
        return f"{self.name} {self.norm} eps={self.eps:g}"


@dataclass
class AttackOutcome:
    """What one attack configuration did to the evaluated examples.

    ``robust`` is the per-example mask (correct under attack). Confidence is the mean softmax
    probability of the predicted class over examples misclassified under attack; perturbation
    norms are over the examples the attack fooled (those it turned from correct to wrong).
    """

    config: AttackConfig
    robust: torch.Tensor
    adversarial_predictions: torch.Tensor
    robust_accuracy: float
    success_rate: float | None
    mean_wrong_confidence: float | None
    mean_perturbation_norm: float | None
    max_perturbation_norm: float | None
    per_class_accuracy: list[float | None]
    seconds: float


@dataclass
class WorstCase:
    """Per-example worst case over every attack evaluated at one norm and eps."""

    norm: str
    eps: float
    attacks: list[str]
    robust_accuracy: float


@dataclass
class EvaluationResult:
    """Clean accuracy and every attack's outcome on the same examples."""

    num_examples: int
    clean_accuracy: float
    clean_correct: torch.Tensor
    clean_predictions: torch.Tensor
    per_class_clean_accuracy: list[float | None]
    outcomes: list[AttackOutcome]
    worst_cases: list[WorstCase]
    seconds: float


def per_class_accuracy(
    correct: torch.Tensor, y: torch.Tensor, num_classes: int
) -> list[float | None]:
    """Accuracy for each class; ``None`` for a class with no examples."""
    result: list[float | None] = []
    for cls in range(num_classes):
        members = y == cls
        count = int(members.sum())
        result.append(int(correct[members].sum()) / count if count else None)
    return result


class _Progress:
    """Turns units of work done into throttle-free calls of a progress callback."""

    def __init__(self, callback: ProgressCallback | None, total: float) -> None:
        self.callback = callback
        self.total = max(total, 1.0)
        self.done = 0.0
        self.stage = "clean"
        self.message = ""

    def advance(self, units: float) -> None:
        self.done += units
        if self.callback is not None:
            self.callback(min(self.done / self.total, 1.0), self.stage, self.message)

    def skip_to(self, units_done: float) -> None:
        # Early stopping finishes an attack before its planned steps: jump to its end.
        self.done = max(self.done, units_done)
        self.advance(0)


@torch.inference_mode()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and their softmax confidences for ``x``, computed in batches."""
    predictions, confidences = [], []
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size].to(device))
        probabilities = logits.float().softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        predictions.append(predicted.cpu())
        confidences.append(confidence.cpu())
    if not predictions:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.cat(predictions), torch.cat(confidences)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    configs: Sequence[AttackConfig],
    *,
    num_classes: int,
    input_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Measure clean and robust accuracy of ``model`` on ``(x, y)`` under each attack config.

    ``x`` is ``[N, C, H, W]`` inside ``input_range`` on any device, ``y`` ``[N]``. Attacks run
    only on the examples the model classifies correctly on clean input, in batches of
    ``batch_size`` on ``device``. Results depend only on the inputs and ``seed``.
    """
    started = time.perf_counter()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        x = x.detach().cpu()
        y = y.detach().cpu().long()
        num_examples = x.shape[0]
        clean_predictions, _ = predict(model, x, batch_size=batch_size, device=device)
        clean_correct = clean_predictions == y
        attacked = clean_correct.nonzero().squeeze(1)

        # Plan the work in "example-gradient" units so progress moves evenly across attacks.
        probe_threat = make_threat_model("linf", 0.0, *input_range)
        plans = [
            make_attack(c.name, model, probe_threat, dict(c.params)).planned_steps()
            for c in configs
        ]
        tracker = _Progress(progress, num_examples + sum(plans) * attacked.numel())
        tracker.advance(num_examples)

        outcomes = []
        for config, planned in zip(configs, plans, strict=True):
            tracker.stage = config.name
            tracker.message = config.label
            end_of_attack = tracker.done + planned * attacked.numel()
            outcomes.append(
                _run_attack(
                    model,
                    x,
                    y,
                    attacked,
                    clean_predictions,
                    config,
                    num_classes=num_classes,
                    input_range=input_range,
                    batch_size=batch_size,
                    device=device,
                    seed=seed,
                    tracker=tracker,
                )
            )
            tracker.skip_to(end_of_attack)

        return EvaluationResult(
            num_examples=num_examples,
            clean_accuracy=_mean(clean_correct),
            clean_correct=clean_correct,
            clean_predictions=clean_predictions,
            per_class_clean_accuracy=per_class_accuracy(clean_correct, y, num_classes),
            outcomes=outcomes,
            worst_cases=_worst_cases(outcomes),
            seconds=time.perf_counter() - started,
        )
    finally:
        model.train(was_training)


def _mean(mask: torch.Tensor) -> float:
    # Exact k / N in double precision (float32 means print as 0.9888888597...).
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacked: torch.Tensor,
    clean_predictions: torch.Tensor,
    config: AttackConfig,
    *,
    num_classes: int,
    input_range: tuple[float, float],
    batch_size: int,
    device: torch.device,
    seed: int,
    tracker: _Progress,
) -> AttackOutcome:
    started = time.perf_counter()
    threat = make_threat_model(config.norm, config.eps, *input_range)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    attack = make_attack(
        config.name,
        model,
        threat,
        dict(config.params),
        generator=generator,
        on_step=tracker.advance,
    )

    adversarial_predictions = clean_predictions.clone()
    confidences = torch.zeros(x.shape[0])
    norms = torch.zeros(x.shape[0])
    # Misclassified clean examples keep their clean input: their confidence is the clean one.
    wrong_clean = (~(clean_predictions == y)).nonzero().squeeze(1)
    if wrong_clean.numel():
        _, confidences[wrong_clean] = predict(
            model, x[wrong_clean], batch_size=batch_size, device=device
        )
    for start in range(0, attacked.numel(), batch_size):
        indices = attacked[start : start + batch_size]
        x_batch = x[indices].to(device)
        y_batch = y[indices].to(device)
        x_adv = attack(x_batch, y_batch)
        predicted, confidence = predict(model, x_adv, batch_size=batch_size, device=device)
        adversarial_predictions[indices] = predicted
        confidences[indices] = confidence
        norms[indices] = threat.distance(x_adv, x_batch).float().cpu()

    robust = adversarial_predictions == y
    fooled = torch.zeros_like(robust)
    fooled[attacked] = ~robust[attacked]
    wrong = ~robust
    return AttackOutcome(
        config=config,
        robust=robust,
        adversarial_predictions=adversarial_predictions,
        robust_accuracy=_mean(robust),
        success_rate=_mean(fooled[attacked]) if attacked.numel() else None,
        mean_wrong_confidence=float(confidences[wrong].mean()) if wrong.any() else None,
        mean_perturbation_norm=float(norms[fooled].mean()) if fooled.any() else None,
        max_perturbation_norm=float(norms[fooled].max()) if fooled.any() else None,
        per_class_accuracy=per_class_accuracy(robust, y, num_classes),
        seconds=time.perf_counter() - started,
    )


def _worst_cases(outcomes: Sequence[AttackOutcome]) -> list[WorstCase]:
    groups: dict[tuple[str, float], list[AttackOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.config.norm, outcome.config.eps), []).append(outcome)
    cases = []
    for (norm, eps), members in sorted(groups.items()):
        robust = torch.stack([m.robust for m in members]).all(dim=0)
        cases.append(
            WorstCase(
                norm=norm,
                eps=eps,
                attacks=[m.config.label for m in members],
                robust_accuracy=_mean(robust),
            )
        )
    return cases
