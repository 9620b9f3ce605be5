"""The last check before an adversarial example counts, as AutoAttack makes it.

Every adversarial input an evaluation reports must be finite, inside its eps-ball around
the clean input and inside the model's input range; the evaluation then predicts it again
in a fresh forward pass. A violation means an attack is broken: it raises
:class:`~adversarial.errors.EngineCheckError` (the job fails) instead of producing a number.
"""

from __future__ import annotations

import torch

from adversarial.errors import EngineCheckError
from adversarial.threat import ThreatModel

# Float32 arithmetic moves a clamped point by a few ulps; 1e-5 of the input range is far
# above that and far below any perturbation that would matter.
RELATIVE_TOLERANCE = 1e-5


def tolerance(threat: ThreatModel) -> float:
    """The absolute slack allowed on the ball's radius and on the input range."""
    return RELATIVE_TOLERANCE * (threat.upper - threat.lower)


def verify_adversarial(
    threat: ThreatModel, adversarial: torch.Tensor, clean: torch.Tensor, label: str
) -> None:
    """Raise :class:`EngineCheckError` unless every row of ``adversarial`` is finite, within
    ``threat.eps`` of the same row of ``clean`` (in the threat's norm) and in its range."""
    if adversarial.shape != clean.shape:
        raise EngineCheckError(
            f"{label}: adversarial inputs have shape {list(adversarial.shape)}, "
            f"the clean inputs {list(clean.shape)}"
        )
    if adversarial.numel() == 0:
        return
    slack = tolerance(threat)
    finite = torch.isfinite(adversarial.flatten(1)).all(dim=1)
    if not finite.all():
        raise EngineCheckError(
            f"{label}: {int((~finite).sum())} adversarial input(s) contain NaN or infinity"
        )
    distance = threat.distance(adversarial, clean)
    radius = threat.eps + slack + (RELATIVE_TOLERANCE * threat.eps if threat.norm == "l2" else 0)
    outside = distance > radius
    if outside.any():
        raise EngineCheckError(
            f"{label}: {int(outside.sum())} adversarial input(s) lie outside the {threat.norm} "
            f"ball of radius {threat.eps:g} (largest distance {float(distance.max()):.6g}, "
            f"tolerance {slack:.1g})"
        )
    low = float(adversarial.min())
    high = float(adversarial.max())
    if low < threat.lower - slack or high > threat.upper + slack:
        raise EngineCheckError(
            f"{label}: adversarial inputs span [{low:.6g}, {high:.6g}], outside the input "
            f"range [{threat.lower:g}, {threat.upper:g}]"
        )
