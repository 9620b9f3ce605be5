"""Per-example losses on logits that attacks maximize: cross-entropy, margins and DLR.

Every function takes logits ``[N, K]`` and returns one value per example, ``[N]``, so that
attacks can track each example's best point; summing them gives independent gradients.
"""

from __future__ import annotations

import torch
from torch import nn

# Keeps the DLR ratio finite when the top logits coincide (as in Croce & Hein's code).
_TINY = 1e-12


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``labels`` ``[N]``, per example."""
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def _label_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels.unsqueeze(1)).squeeze(1)


def best_other_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The largest logit of a class other than ``labels``, per example."""
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    return others.amax(dim=1)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j``: negative exactly when another class beats label ``y``."""
    return _label_logits(logits, labels) - best_other_logits(logits, labels)


def _check_classes(logits: torch.Tensor, needed: int, loss: str) -> None:
    if logits.shape[1] < needed:
        raise ValueError(
            f"the {loss} loss needs at least {needed} classes (it is normalized by the gap "
            f"between sorted logits), the model has {logits.shape[1]}"
        )


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020), to be maximized.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in
    decreasing order: the margin, made invariant to shifting and rescaling the logits (so a
    model cannot hide behind saturated softmax outputs). Needs at least 3 classes.
    """
    _check_classes(logits, 3, "DLR")
    top = logits.topk(3, dim=1).values
    return -margin(logits, labels) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020), to be maximized: pushes ``z_t`` above ``z_y``.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs at least 3 classes; with exactly
    3 there is no ``z_pi4`` and the denominator is ``z_pi1 - z_pi3`` (the untargeted DLR's).
    """
    _check_classes(logits, 3, "targeted DLR")
    top = logits.topk(min(4, logits.shape[1]), dim=1).values
    lowest = top[:, 2:].mean(dim=1)
    gap = _label_logits(logits, labels) - _label_logits(logits, targets)
    return -gap / (top[:, 0] - lowest + _TINY)
