"""Single-step attacks: FGSM and R+FGSM (FGSM from a random step)."""

from __future__ import annotations

import torch
from torch import nn

from adversarial.attacks.base import StepCallback, Target, TargetableAttack, register
from adversarial.randomness import RandomSource
from adversarial.threat import ThreatModel


@register
class FGSM(TargetableAttack):
    """FGSM: one steepest-ascent step of length ``eps`` on the cross-entropy loss.

    Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    ``x' = project(x + eps * sign(grad_x J(x, y)))`` for L-inf; for L2 the step follows the
    normalized gradient. One forward and one backward pass per example. Targeted, the step
    descends the cross-entropy of the target class (Kurakin et al. 2016's "step l.l.").

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments: ``model``, ``threat`` (carries ``eps`` and the input range).
        target (int | str | None): ``None`` (untargeted), ``"least_likely"`` or a class
            index; see :class:`TargetableAttack`. Default: None.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = FGSM(model, LinfBall(eps=0.1))
        x_adv = attack(x, y)
    """

    name = "fgsm"
    gradient_steps = 1

    def perturb_towards(
        self, x: torch.Tensor, labels: torch.Tensor, random: RandomSource
    ) -> torch.Tensor:
        grad, _ = self.goal_gradient(x, labels)
        return self.threat.project(self.threat.step(x, grad, self.threat.eps), x)


@register
class RFGSM(TargetableAttack):
    """R+FGSM: a random step of length ``alpha``, then an FGSM step of length ``eps - alpha``.

    Tramer et al., "Ensemble Adversarial Training: Attacks and Defenses", ICLR 2018:
    ``x_r = x + alpha * sign(N(0, I))``, ``x' = project(x_r + (eps - alpha) *
    sign(grad_x J(x_r, y)))``. The random step escapes the sharp curvature of the loss at
    the data point that makes single-step attacks (and single-step adversarial training)
    look stronger than they are. For L2 the random step is a uniformly random direction of
    length ``alpha`` and the gradient step follows the normalized gradient. With the default
    ``alpha = eps / 2`` it equals torchattacks' ``RFGSM(eps, alpha=eps / 2, steps=1)``.
    One forward and one backward pass per example.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        alpha (float | None): length of the random step, at most ``eps``; ``None`` means
            ``eps / 2`` (the paper's choice). Default: None.
        target (int | str | None): ``None`` (untargeted), ``"least_likely"`` or a class
            index; see :class:`TargetableAttack`. Default: None.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = RFGSM(model, LinfBall(eps=16 / 255), alpha=8 / 255,
                       generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
    """

    name = "rfgsm"
    gradient_steps = 1

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        alpha: float | None = None,
        target: Target = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, target=target, generator=generator, on_step=on_step)
        self.alpha = threat.eps / 2 if alpha is None else float(alpha)
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")

    def perturb_towards(
        self, x: torch.Tensor, labels: torch.Tensor, random: RandomSource
    ) -> torch.Tensor:
        threat = self.threat
        # Checked here, not in __init__: the attack may be built with a placeholder threat
        # model (to plan progress) before the real eps is known.
        if self.alpha > threat.eps:
            raise ValueError(f"alpha ({self.alpha}) must not exceed eps ({threat.eps})")
        # A Gaussian "gradient" gives a uniformly random sign pattern (L-inf) or a uniformly
        # random direction (L2) through the threat model's own steepest step.
        noise = random.normal(x.shape[1:], dtype=x.dtype, device=x.device)
        x_random = threat.project(threat.step(x, noise, self.alpha), x)
        grad, _ = self.goal_gradient(x_random, labels)
        return threat.project(threat.step(x_random, grad, threat.eps - self.alpha), x)
