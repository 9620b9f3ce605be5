"""Threat models: the set of allowed perturbations, separate from the attacks that search it.

A threat model knows how to start inside its ball, take a steepest-ascent step and project
back. Attacks only call these three methods, so every attack works for every norm.
Inputs live in ``[lower, upper]`` (the model's input range); every method keeps them there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from adversarial.randomness import RandomSource

# Guards divisions by a gradient's norm; small enough not to change any real step.
_TINY = 1e-12


def _per_example_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[N]`` tensor so it broadcasts against ``like`` (``[N, ...]``)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class ThreatModel(ABC):
    """A ball of radius ``eps`` around each clean input, intersected with the input range."""

    norm: str = ""

    def __init__(self, eps: float, lower: float = 0.0, upper: float = 1.0) -> None:
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if lower >= upper:
            raise ValueError(f"input range must have lower < upper, got [{lower}, {upper}]")
        self.eps = float(eps)
        self.lower = float(lower)
        self.upper = float(upper)

    @abstractmethod
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return the closest point to ``x_adv`` in the ball around ``x`` and the input range."""

    @abstractmethod
    def random_init(self, x: torch.Tensor, random: RandomSource) -> torch.Tensor:
        """Return a uniformly random point in the ball around ``x`` (clipped to the range),
        drawn from ``random`` (one row per example of ``x``)."""

    @abstractmethod
    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """Take one steepest-ascent step of length ``step_size`` in this norm along ``grad``."""

    @abstractmethod
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example perturbation size ``||x_adv - x||`` in this norm, shape ``[N]``."""

    @abstractmethod
    def project_perturbation_(self, delta: torch.Tensor) -> torch.Tensor:
        """Project the perturbations ``delta`` ``[N, ...]`` onto the ball, in place.

        The input range is not considered (there is no clean input): callers that carry a
        perturbation across inputs (Free-AT) clip ``x + delta`` to the range when they use
        it. Returns ``delta``.
        """

    def clip_range(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp ``x`` to the model's input range."""
        return x.clamp(self.lower, self.upper)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, range=[{self.lower}, {self.upper}])"


class LinfBall(ThreatModel):
    """``||delta||_inf <= eps``: every input coordinate moves by at most ``eps``."""

    norm = "linf"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = (x_adv - x).clamp(-self.eps, self.eps)
        return self.clip_range(x + delta)

    def random_init(self, x: torch.Tensor, random: RandomSource) -> torch.Tensor:
        noise = random.uniform(x.shape[1:], dtype=x.dtype, device=x.device)
        return self.clip_range(x + (2 * noise - 1) * self.eps)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return x_adv + step_size * grad.sign()

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).abs().amax(dim=1)

    def project_perturbation_(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp_(-self.eps, self.eps)


class L2Ball(ThreatModel):
    """``||delta||_2 <= eps`` over the whole input."""

    norm = "l2"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1)
        factor = torch.clamp(self.eps / (norms + _TINY), max=1.0)
        return self.clip_range(x + delta * _per_example_view(factor, delta))

    def random_init(self, x: torch.Tensor, random: RandomSource) -> torch.Tensor:
        # Uniform in the ball: a uniform direction times a radius ~ eps * U^(1/d).
        direction = random.normal(x.shape[1:], dtype=x.dtype, device=x.device)
        direction = direction / _per_example_view(direction.flatten(1).norm(dim=1) + _TINY, x)
        dims = x[0].numel()
        radius = random.uniform((), dtype=x.dtype, device=x.device)
        radius = self.eps * radius.pow(1.0 / dims)
        return self.clip_range(x + direction * _per_example_view(radius, x))

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        norms = grad.flatten(1).norm(dim=1)
        direction = grad.div(_per_example_view(norms + _TINY, grad))
        return x_adv.add(direction, alpha=step_size)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        norms: torch.Tensor = torch.linalg.vector_norm((x_adv - x).flatten(1), dim=1)
        return norms

    def project_perturbation_(self, delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1)
        factor = torch.clamp(self.eps / (norms + _TINY), max=1.0)
        return delta.mul_(_per_example_view(factor, delta))


THREAT_MODELS: dict[str, type[ThreatModel]] = {"linf": LinfBall, "l2": L2Ball}


def make_threat_model(norm: str, eps: float, lower: float = 0.0, upper: float = 1.0) -> ThreatModel:
    """Build the threat model registered under ``norm`` (``"linf"`` or ``"l2"``)."""
    try:
        cls = THREAT_MODELS[norm]
    except KeyError:
        known = ", ".join(sorted(THREAT_MODELS))
        raise ValueError(f"unknown norm {norm!r}; known norms: {known}") from None
    return cls(eps, lower, upper)
