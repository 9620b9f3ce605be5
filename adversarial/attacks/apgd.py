"""Auto-PGD (APGD): PGD with momentum and a step size that adapts, needing no tuning.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (Algorithm 1), the white-box half of AutoAttack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from adversarial.attacks.base import Attack, StepCallback, register
from adversarial.attacks.losses import cross_entropy_loss, dlr_loss, targeted_dlr_loss
from adversarial.randomness import RandomSource
from adversarial.threat import ThreatModel

# The paper's momentum alpha: x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1})).
_MOMENTUM = 0.75


def checkpoints(steps: int) -> dict[int, int]:
    """Iterations after which APGD checks its step size, each with the iterations since the last.

    The paper's checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, in the integer form of the authors'
    code: intervals of ``0.22 * steps`` shrinking by ``0.03 * steps`` down to ``0.06 * steps``.
    """
    length = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    result = {}
    iteration = length - 1
    while iteration < steps:
        result[iteration] = length
        length = max(length - shrink, shortest)
        iteration += length
    return result


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example ``[N]`` values to broadcast against ``like`` ``[N, ...]``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class _RunState:
    """Per-example state of one APGD run; rows are the examples still being attacked."""

    index: torch.Tensor  # positions of these examples in the run's inputs
    x: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None
    x_adv: torch.Tensor
    x_previous: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    loss: torch.Tensor  # at x_adv
    best_loss: torch.Tensor
    x_best: torch.Tensor
    grad_best: torch.Tensor
    increases: torch.Tensor  # loss increases since the last checkpoint
    best_loss_at_check: torch.Tensor
    reduced_at_check: torch.Tensor

    def keep(self, mask: torch.Tensor) -> _RunState:
        """The state of the examples selected by the boolean ``mask`` only."""
        kept = {
            f.name: value[mask]
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **kept)


@register
class APGD(Attack):
    """APGD-CE: Auto-PGD on the cross-entropy loss.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020, Algorithm 1. From a random point in the ball, steps
    of size ``eta`` (initially ``2 * eps``) with momentum 0.75; at checkpoints ``eta`` halves
    for an example whose loss rose in fewer than ``rho`` of the steps since the last
    checkpoint (condition 1), or whose step size and best loss have not changed since then
    (condition 2), and that example restarts from its best point. Steps are sign steps for
    L-inf and normalized-gradient steps for L2 (the paper's L2 version).

    Each example keeps its highest-loss point, and the first iterate that misclassifies it:
    the returned point is adversarial whenever any iterate was. An example stops costing
    gradients once it is misclassified (examples are independent, so this changes nothing
    for the others). Later restarts attack only the examples every earlier one failed on.
    A run costs ``steps`` gradients per example (the loss at the last iterate needs none).

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        steps (int): iterations per restart. Default: 100.
        restarts (int): runs from independent random starts. Default: 1.
        rho (float): condition 1's fraction of loss-increasing steps. Default: 0.75.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = APGD(model, LinfBall(eps=8 / 255), steps=100,
                      generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
    """

    name = "apgd-ce"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        steps: int = 100,
        restarts: int = 1,
        rho: float = 0.75,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, generator=generator, on_step=on_step)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        self.steps = steps
        self.restarts = restarts
        self.rho = float(rho)

    def planned_steps(self) -> int:
        return self.steps * self.restarts

    def example_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """The per-example loss APGD maximizes (cross-entropy here)."""
        return cross_entropy_loss(logits, labels)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        return self.run_all(x, y, [None] * self.restarts, random)

    def run_all(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        run_targets: Sequence[torch.Tensor | None],
        random: RandomSource,
    ) -> torch.Tensor:
        """One run per entry of ``run_targets`` (targets ``[N]`` or ``None``), in order.

        Each run attacks only the examples no earlier run misclassified. An example keeps
        the point of the run that fooled it, or else its highest-loss point over all runs.
        """
        result = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        for run, targets in enumerate(run_targets):
            remaining = (~fooled).nonzero().squeeze(1)
            if remaining.numel() == 0:
                break
            points, fooled_here, loss_here = self._run(
                x[remaining],
                y[remaining],
                None if targets is None else targets[remaining],
                random.subset(remaining).child("run", run),
            )
            better = fooled_here | (loss_here > best_loss[remaining])
            result[remaining[better]] = points[better]
            best_loss[remaining[better]] = loss_here[better]
            fooled[remaining] = fooled_here
        return result

    def _loss_gradient(
        self, x_adv: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.objective_gradient(
            x_adv, lambda logits: self.example_loss(logits, labels, targets)
        )

    def _run(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None,
        random: RandomSource,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run of Algorithm 1: (points, which of them are misclassified, their loss)."""
        threat = self.threat
        count = x.shape[0]
        points = x.clone()
        fooled = torch.zeros(count, dtype=torch.bool, device=x.device)
        final_loss = torch.full((count,), float("inf"), dtype=x.dtype, device=x.device)

        def retire_fooled(state: _RunState, logits: torch.Tensor) -> _RunState:
            # Misclassified now: keep this iterate and spend no further gradient on it.
            misclassified = logits.argmax(dim=1) != state.labels
            if misclassified.any():
                points[state.index[misclassified]] = state.x_adv[misclassified]
                fooled[state.index[misclassified]] = True
                state = state.keep(~misclassified)
            return state

        x_start = threat.random_init(x, random)
        grad, logits, loss = self._loss_gradient(x_start, labels, targets)
        state = _RunState(
            index=torch.arange(count, device=x.device),
            x=x,
            labels=labels,
            targets=targets,
            x_adv=x_start,
            x_previous=x_start,
            grad=grad,
            step_size=torch.full((count,), 2 * threat.eps, dtype=x.dtype, device=x.device),
            loss=loss,
            best_loss=loss,
            x_best=x_start,
            grad_best=grad,
            increases=torch.zeros(count, dtype=torch.long, device=x.device),
            best_loss_at_check=loss,
            reduced_at_check=torch.zeros(count, dtype=torch.bool, device=x.device),
        )
        state = retire_fooled(state, logits)
        schedule = checkpoints(self.steps)
        for iteration in range(self.steps):
            if state.index.numel() == 0:
                break
            momentum = 1.0 if iteration == 0 else _MOMENTUM
            with torch.no_grad():
                # The threat model's steepest step from zero is the unit step direction; it
                # is scaled here by each example's own step size.
                direction = threat.step(torch.zeros_like(state.x_adv), state.grad, 1.0)
                z = threat.project(
                    state.x_adv + _rows(state.step_size, direction) * direction, state.x
                )
                x_next = threat.project(
                    state.x_adv
                    + momentum * (z - state.x_adv)
                    + (1 - momentum) * (state.x_adv - state.x_previous),
                    state.x,
                )
            last = iteration == self.steps - 1
            if last:
                # Nothing steps from the last iterate: its loss needs no gradient.
                with torch.no_grad():
                    logits = self.model(x_next)
                    loss = self.example_loss(logits, state.labels, state.targets)
            else:
                grad, logits, loss = self._loss_gradient(x_next, state.labels, state.targets)
                state.grad = grad
            state.increases = state.increases + (loss > state.loss).long()
            state.x_previous, state.x_adv, state.loss = state.x_adv, x_next, loss
            state = retire_fooled(state, logits)
            if last or state.index.numel() == 0:
                break

            improved = state.loss > state.best_loss
            state.best_loss = torch.where(improved, state.loss, state.best_loss)
            state.x_best = torch.where(_rows(improved, x), state.x_adv, state.x_best)
            state.grad_best = torch.where(_rows(improved, x), state.grad, state.grad_best)
            if iteration in schedule:
                oscillating = state.increases < self.rho * schedule[iteration]
                stalled = ~state.reduced_at_check & (state.best_loss <= state.best_loss_at_check)
                reduce = oscillating | stalled
                state.step_size = torch.where(reduce, state.step_size / 2, state.step_size)
                state.x_adv = torch.where(_rows(reduce, x), state.x_best, state.x_adv)
                state.grad = torch.where(_rows(reduce, x), state.grad_best, state.grad)
                state.loss = torch.where(reduce, state.best_loss, state.loss)
                state.reduced_at_check = reduce
                state.best_loss_at_check = state.best_loss
                state.increases = torch.zeros_like(state.increases)

        # The last iterate's loss has not entered the best point yet.
        improved = state.loss > state.best_loss
        state.best_loss = torch.where(improved, state.loss, state.best_loss)
        state.x_best = torch.where(_rows(improved, x), state.x_adv, state.x_best)
        points[state.index] = state.x_best
        final_loss[state.index] = state.best_loss
        return points, fooled, final_loss


@register
class APGDDLR(APGD):
    """APGD-DLR: Auto-PGD on the Difference of Logits Ratio loss.

    Croce & Hein 2020: ``DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` (``z_pi`` the
    sorted logits), invariant to shifting and rescaling the logits, so it does not stall on
    models whose cross-entropy saturates. The algorithm is :class:`APGD`'s.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        steps (int): iterations per restart. Default: 100.
        restarts (int): runs from independent random starts. Default: 1.
        rho (float): condition 1's fraction of loss-increasing steps. Default: 0.75.
    Shapes: ``x`` ``[N, C, H, W]``, ``y`` ``[N]``; the model needs at least 3 classes.

    Example::

        attack = APGDDLR(model, LinfBall(eps=8 / 255), generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
    """

    name = "apgd-dlr"

    def example_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        return dlr_loss(logits, labels)


@register
class APGDT(APGD):
    """APGD-T: targeted Auto-PGD on the targeted DLR loss, over the top other classes.

    Croce & Hein 2020 (AutoAttack's APGD-T). For each of the ``target_classes`` classes with
    the highest clean logits other than the true class, in that order, APGD (Algorithm 1)
    maximizes ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` towards target ``t`` on the
    examples still correctly classified. Success is misclassification (into any class), as
    in AutoAttack: the targets only diversify the search directions.

    Distance: the threat model's norm (``linf`` or ``l2``).
    Arguments:
        steps (int): iterations per run. Default: 100.
        target_classes (int): how many target classes to try; at most ``num_classes - 1``
            are used. Default: 9.
        restarts (int): runs per target class from independent random starts. Default: 1.
        rho (float): condition 1's fraction of loss-increasing steps. Default: 0.75.
    Shapes: ``x`` ``[N, C, H, W]``, ``y`` ``[N]``. The model needs at least 3 classes: the
    loss is normalized by sorted logits (with exactly 3, by ``z_pi1 - z_pi3``).

    Example::

        attack = APGDT(model, LinfBall(eps=8 / 255), steps=100, target_classes=9,
                       generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
    """

    name = "apgd-t"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        steps: int = 100,
        target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(
            model,
            threat,
            steps=steps,
            restarts=restarts,
            rho=rho,
            generator=generator,
            on_step=on_step,
        )
        if target_classes < 1:
            raise ValueError(f"target_classes must be >= 1, got {target_classes}")
        self.target_classes = target_classes

    def planned_steps(self) -> int:
        return self.steps * self.restarts * self.target_classes

    def example_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        if targets is None:
            raise ValueError("APGD-T needs target classes")
        return targeted_dlr_loss(logits, labels, targets)

    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        with torch.no_grad():
            clean_logits = self.model(x)
        num_classes = clean_logits.shape[1]
        if num_classes < 3:
            raise ValueError(
                f"APGD-T needs at least 3 classes (the targeted DLR loss is normalized by the "
                f"first and third largest logits), the model has {num_classes}"
            )
        # Other classes by decreasing clean logit; the true class sorts last.
        others = clean_logits.scatter(1, y.unsqueeze(1), float("-inf"))
        ranked = others.argsort(dim=1, descending=True, stable=True)
        ranks = min(self.target_classes, num_classes - 1)
        run_targets = [ranked[:, rank] for rank in range(ranks) for _ in range(self.restarts)]
        return self.run_all(x, y, run_targets, random)
