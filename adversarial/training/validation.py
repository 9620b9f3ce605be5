"""Per-epoch validation: clean accuracy, and accuracy under PGD and FGSM on a slice.

Run after each loop epoch, outside the timed training, with the model in eval mode and a
fresh generator per epoch (so validation never shifts the training streams). Like the
audit's evaluation, only the examples still classified correctly are attacked, and every
adversarial example is re-predicted before it counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from adversarial.attacks import FGSM, PGD
from adversarial.errors import TrainingError
from adversarial.threat import ThreatModel


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """How each epoch is validated.

    Attributes:
        limit: validate on the first ``limit`` validation examples (all when None).
        pgd_steps: steps of the PGD attack (random start, one restart). Default 10.
        pgd_step_size: its step; None means ``2.5 * eps / pgd_steps``.
        eps: the radius to attack at; None means the method's eps (a run of ``natural``
            training then reports no robust accuracy unless ``eps`` is given here).
        norm: ``"linf"`` or ``"l2"``; None means the method's norm (``"linf"`` for
            natural training).
        batch_size: examples per forward pass. Default 500.
        fgsm: also measure FGSM accuracy (one gradient per example), which the
            catastrophic-overfitting check needs. Default True.
    """

    limit: int | None = 1000
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    eps: float | None = None
    norm: str | None = None
    batch_size: int = 500
    fgsm: bool = True

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise TrainingError("bad_training_config", "validation limit must be >= 1.")
        if self.pgd_steps < 1:
            raise TrainingError("bad_training_config", "validation pgd_steps must be >= 1.")
        if self.batch_size < 1:
            raise TrainingError("bad_training_config", "validation batch_size must be >= 1.")
        if self.eps is not None and not self.eps >= 0:
            raise TrainingError("bad_training_config", "validation eps must be >= 0.")


@dataclass(frozen=True)
class ValidationOutcome:
    """Accuracies over the validated examples (robust ones None without a threat model)."""

    clean_accuracy: float
    robust_accuracy: float | None
    fgsm_accuracy: float | None
    examples: int


def validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel | None,
    config: ValidationConfig,
    generator: torch.Generator,
    device: torch.device,
) -> ValidationOutcome:
    """Clean, PGD and FGSM accuracy of ``model`` on labeled ``x`` ``[N, ...]``, ``y`` ``[N]``.

    The model's mode is restored afterwards. ``threat`` None measures clean accuracy only.
    """
    was_training = model.training
    model.eval()
    clean = robust = fgsm = 0
    pgd_attack = fgsm_attack = None
    if threat is not None:
        pgd_attack = PGD(
            model,
            threat,
            steps=config.pgd_steps,
            step_size=config.pgd_step_size,
            generator=generator,
        )
        fgsm_attack = FGSM(model, threat) if config.fgsm else None
    try:
        for start in range(0, x.shape[0], config.batch_size):
            inputs = x[start : start + config.batch_size].to(device)
            labels = y[start : start + config.batch_size].to(device)
            with torch.no_grad():
                correct = model(inputs).argmax(dim=1) == labels
            clean += int(correct.sum())
            pending = correct.nonzero().squeeze(1)
            if pending.numel() == 0:
                continue
            inputs, labels = inputs[pending], labels[pending]
            if pgd_attack is not None:
                robust += _still_correct(model, pgd_attack(inputs, labels), labels)
            if fgsm_attack is not None:
                fgsm += _still_correct(model, fgsm_attack(inputs, labels), labels)
    finally:
        model.train(was_training)
    count = x.shape[0]
    return ValidationOutcome(
        clean_accuracy=clean / count,
        robust_accuracy=robust / count if pgd_attack is not None else None,
        fgsm_accuracy=fgsm / count if fgsm_attack is not None else None,
        examples=count,
    )


def _still_correct(model: nn.Module, x_adv: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x_adv).argmax(dim=1) == labels).sum())


def timed_validate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel | None,
    config: ValidationConfig,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[ValidationOutcome, float]:
    """:func:`validate` and its wall time in seconds (synchronized on CUDA)."""
    started = time.perf_counter()
    outcome = validate(
        model, x, y, threat=threat, config=config, generator=generator, device=device
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return outcome, time.perf_counter() - started
