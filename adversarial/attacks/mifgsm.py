"""Momentum Iterative FGSM."""

from __future__ import annotations

import torch
from torch import nn

from adversarial.attacks.base import StepCallback, Target, TargetableAttack, register
from adversarial.randomness import RandomSource
from adversarial.threat import ThreatModel

# Guards the division by a gradient's mean magnitude when the gradient vanishes.
_TINY = 1e-12


@register
class MIFGSM(TargetableAttack):
    """MI-FGSM: iterative FGSM steps along an accumulated, L1-normalized gradient.

    Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018:
    ``g_{t+1} = decay * g_t + grad_x J(x_t, y) / ||grad_x J(x_t, y)||_1``,
    ``x_{t+1} = project(x_t + step_size * sign(g_{t+1}))`` from ``x_0 = x``. The momentum
    steadies the update direction across iterations, escaping poor local maxima (and making
    the examples transfer better to other models). For L2 the step follows ``g_{t+1}``
    normalized, as in the paper's L2 variant. With ``early_stop=False`` it equals
    torchattacks' ``MIFGSM(eps, alpha=step_size, steps, decay)``.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        steps (int): gradient steps. Default: 10.
        step_size (float | None): step length; ``None`` means ``eps / steps`` (the paper's
            ``alpha = eps / T``). Default: None.
        decay (float): momentum factor ``mu``. Default: 1.0.
        early_stop (bool): stop spending gradients on an example once an iterate fools the
            model (predicts the target, when targeted) and keep that iterate. With ``False``
            the final iterate counts. Default: True.
        target (int | str | None): ``None`` (untargeted), ``"least_likely"`` or a class
            index; see :class:`TargetableAttack`. Default: None.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = MIFGSM(model, LinfBall(eps=16 / 255), steps=10, decay=1.0)
        x_adv = attack(x, y)
    """

    name = "mifgsm"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        early_stop: bool = True,
        target: Target = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, target=target, generator=generator, on_step=on_step)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.steps = steps
        self.step_size = threat.eps / steps if step_size is None else float(step_size)
        if self.step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.decay = float(decay)
        self.early_stop = early_stop

    def planned_steps(self) -> int:
        return self.steps

    def perturb_towards(
        self, x: torch.Tensor, labels: torch.Tensor, random: RandomSource
    ) -> torch.Tensor:
        threat = self.threat
        x_adv = x.clone()
        result = x.clone()
        momentum = torch.zeros_like(x)
        # Positions (into x) of the examples still being attacked.
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            grad, logits = self.goal_gradient(x_adv, labels[active])
            if self.early_stop:
                reached = self.reached_goal(logits, labels[active])
                if reached.any():
                    result[active[reached]] = x_adv[reached]
                    keep = ~reached
                    active, x_adv = active[keep], x_adv[keep]
                    grad, momentum = grad[keep], momentum[keep]
                    if active.numel() == 0:
                        return result
            mean_magnitude = grad.abs().flatten(1).mean(dim=1).clamp_min(_TINY)
            momentum = self.decay * momentum + grad / mean_magnitude.view(
                -1, *([1] * (grad.dim() - 1))
            )
            x_adv = threat.project(threat.step(x_adv, momentum, self.step_size), x[active])
        result[active] = x_adv
        return result
