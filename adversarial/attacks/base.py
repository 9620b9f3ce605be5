"""The attack interface, the shared targeted mode and the attack registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from adversarial.randomness import GeneratorSource, RandomSource
from adversarial.threat import ThreatModel

# Called after every gradient step with the number of examples the step covered, so that
# long attacks can report progress (and be cancelled by a callback that raises).
StepCallback = Callable[[int], None]

# A per-example objective computed from logits ``[N, K]``: one value per example, ``[N]``.
Objective = Callable[[torch.Tensor], torch.Tensor]

# ``target`` of a targeted attack: ``None`` (untargeted), ``"least_likely"`` (each example's
# class with the lowest clean logit) or a class index shared by every example.
Target = int | str | None
LEAST_LIKELY = "least_likely"


class Attack(ABC):
    """Base class of every attack.

    ``__call__(x, y, random)`` puts the model in eval mode, runs :meth:`perturb` and
    restores the model's mode, whatever happens. Attacks never modify ``x`` and return
    detached tensors inside the threat model's ball and input range.

    Randomness comes from ``random`` (one row per example): per-example streams
    (:class:`~adversarial.randomness.ExampleStreams`) make an example's result independent
    of its batch; without it, the attack draws from ``generator`` as torchattacks does.
    """

    name: ClassVar[str]
    # Gradient steps per example per restart: used to plan progress reporting.
    gradient_steps: ClassVar[int] = 1

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.model = model
        self.threat = threat
        self.generator = generator
        self.on_step = on_step

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, random: RandomSource | None = None
    ) -> torch.Tensor:
        if random is None:
            random = GeneratorSource(x.shape[0], self.generator)
        elif random.count != x.shape[0]:
            raise ValueError(f"random draws for {random.count} examples, x has {x.shape[0]}")
        was_training = self.model.training
        self.model.eval()
        try:
            return self.perturb(x.detach(), y.detach(), random).detach()
        finally:
            self.model.train(was_training)

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        """Adversarial inputs for clean inputs ``x`` ``[N, ...]`` and labels ``y`` ``[N]``,
        drawing any randomness from ``random``."""

    def planned_steps(self) -> int:
        """Gradient steps this attack plans per example (an upper bound with early stopping)."""
        return self.gradient_steps

    def loss_gradient(
        self, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy input gradient at ``x_adv`` and the logits there.

        The loss is summed, not averaged, so an example's gradient does not depend on which
        other examples share its batch.
        """
        grad, logits, _ = self.objective_gradient(
            x_adv, lambda logits: nn.functional.cross_entropy(logits, y, reduction="none")
        )
        return grad, logits

    def objective_gradient(
        self, x_adv: torch.Tensor, objective: Objective
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input gradient of a per-example objective at ``x_adv``, the logits and its values.

        The gradient is the one of the summed objective, so each example's gradient is its
        own. Returns ``(grad [N, ...], logits [N, K], values [N])``, all detached.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            values = objective(logits)
            (grad,) = torch.autograd.grad(values.sum(), x_adv)
        if self.on_step is not None:
            self.on_step(x_adv.shape[0])
        return grad.detach(), logits.detach(), values.detach()


def check_target(target: object) -> Target:
    """Validate a ``target`` argument: ``None``, ``"least_likely"`` or a class index >= 0."""
    if target is None:
        return None
    if target == LEAST_LIKELY:
        return LEAST_LIKELY
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return target
    raise ValueError(f"target must be None, {LEAST_LIKELY!r} or a class index >= 0, got {target!r}")


class TargetableAttack(Attack):
    """An attack with an optional targeted mode, shared by FGSM, R+FGSM, BIM, MI-FGSM and PGD.

    Untargeted (``target=None``), the attack ascends the cross-entropy of the true label and
    succeeds when the prediction changes. Targeted, it descends the cross-entropy of a target
    class and succeeds when the prediction equals the target: ``target="least_likely"`` picks
    each example's class with the lowest clean logit (Kurakin et al. 2016's iterative
    least-likely class method), an ``int`` picks that class for every example. Examples whose
    true label is their target are returned unchanged: there is nothing to do for them.

    Subclasses implement :meth:`perturb_towards`, which sees the loss labels (the true labels
    or the targets) and uses :meth:`goal_gradient` and :meth:`reached_goal`.
    """

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        target: Target = None,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, generator=generator, on_step=on_step)
        self.target = check_target(target)

    @property
    def targeted(self) -> bool:
        """Whether the attack steers examples to a target class."""
        return self.target is not None

    def target_labels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each example's target class ``[N]`` (the true labels ``y`` when untargeted)."""
        if self.target is None:
            return y
        with torch.no_grad():
            if self.target == LEAST_LIKELY:
                clean_logits: torch.Tensor = self.model(x)
                return clean_logits.argmin(dim=1)
            # Only the number of classes is needed: one example tells it.
            num_classes = int(self.model(x[:1]).shape[1])
        if not isinstance(self.target, int) or self.target >= num_classes:
            raise ValueError(
                f"target class {self.target!r} does not exist: the model has {num_classes} classes"
            )
        return torch.full_like(y, self.target)

    def goal_gradient(
        self, x_adv: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascent direction towards the goal at ``x_adv``, and the logits there.

        Untargeted: the cross-entropy gradient of ``labels`` (the true labels). Targeted: its
        negative, so that ascending it descends the cross-entropy of the target ``labels``.
        """
        grad, logits = self.loss_gradient(x_adv, labels)
        return (grad.neg() if self.targeted else grad), logits

    def reached_goal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example success ``[N]``: prediction changed (untargeted) or equals the target."""
        predicted = logits.argmax(dim=1)
        return predicted == labels if self.targeted else predicted != labels

    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        labels = self.target_labels(x, y)
        if not self.targeted:
            return self.perturb_towards(x, labels, random)
        result = x.clone()
        pending = (labels != y).nonzero().squeeze(1)
        if pending.numel():
            result[pending] = self.perturb_towards(
                x[pending], labels[pending], random.subset(pending)
            )
        return result

    @abstractmethod
    def perturb_towards(
        self, x: torch.Tensor, labels: torch.Tensor, random: RandomSource
    ) -> torch.Tensor:
        """Adversarial inputs for ``x`` given the loss ``labels`` (true labels or targets)."""


AttackT = TypeVar("AttackT", bound=type[Attack])

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: AttackT) -> AttackT:
    """Class decorator: make an attack selectable by its ``name`` in audit specs."""
    ATTACKS[cls.name] = cls
    return cls


def make_attack(
    name: str,
    model: nn.Module,
    threat: ThreatModel,
    params: dict[str, Any] | None = None,
    *,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> Attack:
    """Build the attack registered under ``name`` with keyword ``params``."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        known = ", ".join(sorted(ATTACKS))
        raise ValueError(f"unknown attack {name!r}; known attacks: {known}") from None
    return cls(model, threat, generator=generator, on_step=on_step, **(params or {}))
