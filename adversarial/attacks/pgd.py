"""Projected Gradient Descent, and the Basic Iterative Method (PGD without random start)."""

from __future__ import annotations

import torch
from torch import nn

from adversarial.attacks.base import StepCallback, Target, TargetableAttack, register
from adversarial.randomness import RandomSource
from adversarial.threat import ThreatModel


@register
class PGD(TargetableAttack):
    """PGD: iterated steepest-ascent steps on the cross-entropy loss, projected to the ball.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018;
    without ``random_start`` it is the Basic Iterative Method of Kurakin et al. 2016.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        steps (int): gradient steps per restart. Default: 10.
        step_size (float | None): step length; ``None`` means ``2.5 * eps / steps``
            (Madry et al.'s rule, enough to cross the ball).
        random_start (bool): start from a uniform point in the ball. Default: True.
        restarts (int): independent runs; later runs attack only the examples that every
            earlier run failed to fool, and each example keeps its worst case. Default: 1.
        early_stop (bool): stop spending gradients on an example as soon as an iterate
            fools the model, and keep that iterate (the per-example worst case). With
            ``False`` every example runs all steps and the final iterate counts, as in
            torchattacks. Targeted, "fools" means "predicts the target". Default: True.
        target (int | str | None): ``None`` (untargeted), ``"least_likely"`` or a class
            index; see :class:`TargetableAttack`. Default: None.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = PGD(model, LinfBall(eps=8 / 255), steps=20, restarts=2)
        x_adv = attack(x, y)
    """

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = True,
        target: Target = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, target=target, generator=generator, on_step=on_step)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        self.steps = steps
        self.step_size = 2.5 * threat.eps / steps if step_size is None else float(step_size)
        if self.step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.random_start = random_start
        self.restarts = restarts
        self.early_stop = early_stop

    def planned_steps(self) -> int:
        return self.steps * self.restarts

    def perturb_towards(
        self, x: torch.Tensor, labels: torch.Tensor, random: RandomSource
    ) -> torch.Tensor:
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            remaining = (~fooled).nonzero().squeeze(1)
            if remaining.numel() == 0:
                break
            last = restart == self.restarts - 1
            x_adv, fooled_here = self._run(
                x[remaining],
                labels[remaining],
                random.subset(remaining).child("restart", restart),
                check_final=not last,
            )
            best[remaining] = x_adv
            fooled[remaining] = fooled_here
        return best

    def _run(
        self, x: torch.Tensor, y: torch.Tensor, random: RandomSource, *, check_final: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart: the adversarial inputs and which of them reach the goal.

        ``y`` holds the loss labels: the true labels, or the targets of a targeted attack.
        Without ``check_final`` (the last restart: nothing follows that needs to know) the
        final iterates are not checked, which saves a forward pass; they count as not
        fooled here, and callers judge them by their own predictions.
        """
        threat = self.threat
        x_adv = threat.random_init(x, random) if self.random_start else x.clone()
        result = x_adv.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        # Positions (into x) of the examples still being attacked.
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.steps):
            grad, logits = self.goal_gradient(x_adv, y[active])
            if self.early_stop:
                fooled_now = self.reached_goal(logits, y[active])
                if fooled_now.any():
                    result[active[fooled_now]] = x_adv[fooled_now]
                    fooled[active[fooled_now]] = True
                    keep = ~fooled_now
                    active, x_adv, grad = active[keep], x_adv[keep], grad[keep]
                    if active.numel() == 0:
                        return result, fooled
            x_adv = threat.project(threat.step(x_adv, grad, self.step_size), x[active])
        result[active] = x_adv
        if check_final:
            with torch.no_grad():
                fooled[active] = self.reached_goal(self.model(x_adv), y[active])
        return result, fooled


@register
class BIM(PGD):
    """BIM (iterative FGSM): PGD from the clean input, without random start or restarts.

    Kurakin, Goodfellow, Bengio, "Adversarial Examples in the Physical World", ICLR 2017
    workshop (arXiv 2016). ``x_{t+1} = project(x_t + step_size * sign(grad_x J(x_t, y)))``
    from ``x_0 = x``; deterministic, hence no restarts. The paper takes steps of one pixel
    level (1/255) for ``min(eps + 4, 1.25 * eps)`` iterations (``eps`` in pixel levels), so
    the steps add up to ``1.25 * eps`` for the usual ``eps <= 16``; the default step size
    keeps that total, ``1.25 * eps / steps``, without assuming 255 levels or an input range.
    With ``early_stop=False`` it equals torchattacks' ``BIM(eps, alpha=step_size, steps)``.

    Distance: the threat model's norm (``linf`` or ``l2``; L2 steps follow the normalized
    gradient).
    Arguments:
        steps (int): gradient steps. Default: 10.
        step_size (float | None): step length; ``None`` means ``1.25 * eps / steps``.
            Default: None.
        early_stop (bool): stop spending gradients on an example once an iterate fools the
            model (predicts the target, when targeted) and keep that iterate. Default: True.
        target (int | str | None): ``None`` (untargeted), ``"least_likely"`` (Kurakin et
            al.'s iterative least-likely class method) or a class index. Default: None.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = BIM(model, LinfBall(eps=8 / 255), steps=10)
        x_adv = attack(x, y)
    """

    name = "bim"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        steps: int = 10,
        step_size: float | None = None,
        early_stop: bool = True,
        target: Target = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(
            model,
            threat,
            steps=steps,
            step_size=1.25 * threat.eps / max(steps, 1) if step_size is None else step_size,
            random_start=False,
            restarts=1,
            early_stop=early_stop,
            target=target,
            generator=generator,
            on_step=on_step,
        )
