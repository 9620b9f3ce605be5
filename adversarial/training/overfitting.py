"""Catastrophic overfitting of single-step adversarial training, detected from accuracies.

Wong et al. 2020 ("Fast is better than free", section 5.2) saw FGSM-based training
collapse within an epoch: robustness to PGD falls to near zero while robustness to FGSM,
the attack it trains on, rises (the model learns to mask its gradient at the data point).
An ordinary bad epoch lowers both. The detector is a pure function of the per-check
accuracies, so the rule can be tested on crafted histories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adversarial.errors import TrainingError


@dataclass(frozen=True)
class RobustnessCheck:
    """Accuracies measured on the same validation slice at one check (an epoch's end)."""

    pgd_accuracy: float
    fgsm_accuracy: float


@dataclass(frozen=True, kw_only=True)
class OverfittingRule:
    """When a check counts as a collapse.

    Attributes:
        pgd_drop: PGD accuracy at least this far (absolute) below the best earlier check.
            Default 0.2, Wong et al.'s early-stopping threshold.
        fgsm_rise: and FGSM accuracy at least this far above its value at that best check
            (0: it did not fall).
    """

    pgd_drop: float = 0.2
    fgsm_rise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.pgd_drop <= 1.0:
            raise TrainingError("bad_training_config", "pgd_drop must be in (0, 1].")
        if not -1.0 <= self.fgsm_rise <= 1.0:
            raise TrainingError("bad_training_config", "fgsm_rise must be in [-1, 1].")


@dataclass(frozen=True)
class Collapse:
    """A detected collapse: the check where it happened and the best check before it."""

    check: int
    best_check: int
    pgd_accuracy: float
    best_pgd_accuracy: float
    fgsm_accuracy: float
    best_fgsm_accuracy: float

    def describe(self) -> str:
        """One sentence for a warning."""
        return (
            f"PGD accuracy fell from {self.best_pgd_accuracy:.1%} (check {self.best_check}) "
            f"to {self.pgd_accuracy:.1%} (check {self.check}) while FGSM accuracy went from "
            f"{self.best_fgsm_accuracy:.1%} to {self.fgsm_accuracy:.1%}"
        )


def detect_catastrophic_overfitting(
    history: Sequence[RobustnessCheck], rule: OverfittingRule | None = None
) -> Collapse | None:
    """The first check in ``history`` that collapsed under ``rule``, or None.

    Check ``i`` collapsed when, with ``b`` the earlier check of highest PGD accuracy (the
    latest such on ties), ``pgd[b] - pgd[i] >= rule.pgd_drop`` and ``fgsm[i] - fgsm[b] >=
    rule.fgsm_rise``. A training loop calls this after every check and stops at the first
    collapse, so the collapse it sees is the latest check.
    """
    rule = rule or OverfittingRule()
    best = -1
    for index, check in enumerate(history):
        if best >= 0:
            reference = history[best]
            # A tiny tolerance so that thresholds written as decimals behave as written.
            if (
                reference.pgd_accuracy - check.pgd_accuracy >= rule.pgd_drop - 1e-12
                and check.fgsm_accuracy - reference.fgsm_accuracy >= rule.fgsm_rise - 1e-12
            ):
                return Collapse(
                    check=index,
                    best_check=best,
                    pgd_accuracy=check.pgd_accuracy,
                    best_pgd_accuracy=reference.pgd_accuracy,
                    fgsm_accuracy=check.fgsm_accuracy,
                    best_fgsm_accuracy=reference.fgsm_accuracy,
                )
        if best < 0 or check.pgd_accuracy >= history[best].pgd_accuracy:
            best = index
    return None
