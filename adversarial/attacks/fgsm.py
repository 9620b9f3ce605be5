"""Fast Gradient Sign Method."""

from __future__ import annotations

import torch

from adversarial.attacks.base import Attack, register


@register
class FGSM(Attack):
    """FGSM: one steepest-ascent step of length ``eps`` on the cross-entropy loss.

    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    ``x' = project(x + eps * sign(grad_x J(x, y)))`` for L-inf; for L2 the step follows the
    normalized gradient. One forward and one backward pass per example.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments: ``model``, ``threat`` (carries ``eps`` and the input range).
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = FGSM(model, LinfBall(eps=0.1))
        x_adv = attack(x, y)
    """

    name = "fgsm"
    gradient_steps = 1

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _ = self.loss_gradient(x, y)
        return self.threat.project(self.threat.step(x, grad, self.threat.eps), x)
