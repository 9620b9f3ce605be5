"""Square Attack: score-based random search, no gradients."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from adversarial.attacks.base import Attack, StepCallback, register
from adversarial.attacks.losses import margin
from adversarial.randomness import RandomSource
from adversarial.threat import L2Ball, LinfBall, ThreatModel

# Proposes candidates from (clean inputs, current best points, fraction p of pixels, the
# examples' random draws).
_Candidates = Callable[[torch.Tensor, torch.Tensor, float, RandomSource], torch.Tensor]

# Guards divisions by norms of empty or zero perturbation blocks, as in the authors' code.
_TINY = 1e-12

# The paper's schedule for p (the fraction of pixels a square covers), defined for 10,000
# queries and rescaled to the budget: after each bound (iterations, on the 10,000 scale)
# p halves.
_HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction ``p`` of pixels the square of iteration ``iteration`` (from 0) covers."""
    scaled = int(iteration / queries * 10000)
    halvings = sum(scaled > point for point in _HALVING_POINTS)
    return p_init * 0.5**halvings


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def _random_signs(shape: tuple[int, ...], like: torch.Tensor, random: RandomSource) -> torch.Tensor:
    """Independent +1/-1 values ``[count, *shape]`` of ``like``'s dtype and device."""
    return random.signs(shape, dtype=like.dtype, device=like.device)


def _square_corners(
    side: int, height: int, width: int, like: torch.Tensor, random: RandomSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random top-left corners ``([count], [count])`` of ``side``-squares inside."""
    top = random.integers(0, height - side + 1, (), device=like.device)
    left = random.integers(0, width - side + 1, (), device=like.device)
    return top, left


def _square_mask(
    top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int
) -> torch.Tensor:
    """Boolean ``[count, 1, H, W]`` masks of the squares at the given corners."""
    rows = torch.arange(height, device=top.device).view(1, height, 1)
    cols = torch.arange(width, device=top.device).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < top.view(-1, 1, 1) + side)
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < left.view(-1, 1, 1) + side)
    return (inside_rows & inside_cols).unsqueeze(1)


def _square_index(
    top: torch.Tensor, left: torch.Tensor, side: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advanced indices selecting each example's square, as a ``[count, C, side, side]`` view."""
    count = top.shape[0]
    offsets = torch.arange(side, device=top.device)
    examples = torch.arange(count, device=top.device).view(count, 1, 1, 1)
    channel = torch.arange(channels, device=top.device).view(1, channels, 1, 1)
    rows = (top.view(count, 1) + offsets).view(count, 1, side, 1)
    cols = (left.view(count, 1) + offsets).view(count, 1, 1, side)
    return examples, channel, rows, cols


def _nested_rectangles(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Concentric rectangles with weights ``1 / (k + 1)^2``, unit L2 norm (the paper's L2 block)."""
    block = torch.zeros(height, width, dtype=like.dtype, device=like.device)
    center_row, center_col = height // 2, width // 2
    for ring in range(max(center_row + 1, center_col + 1)):
        top, left = center_row - ring, center_col - ring
        block[
            max(top, 0) : min(top + 2 * ring + 1, height),
            max(left, 0) : min(left + 2 * ring + 1, width),
        ] += 1.0 / (ring + 1) ** 2
    unit: torch.Tensor = block / torch.linalg.vector_norm(block).clamp_min(_TINY)
    return unit


def square_update_block(side: int, like: torch.Tensor) -> torch.Tensor:
    """The L2 attack's ``side x side`` update: +rectangles on one half, - on the other."""
    block = torch.zeros(side, side, dtype=like.dtype, device=like.device)
    block[: side // 2] = _nested_rectangles(side // 2, side, like)
    block[side // 2 :] = -_nested_rectangles(side - side // 2, side, like)
    unit: torch.Tensor = block / torch.linalg.vector_norm(block).clamp_min(_TINY)
    return unit


@register
class Square(Attack):
    """Square Attack: random search over square-shaped updates, using only model outputs.

    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020; the score-based half of AutoAttack.
    It minimizes the margin ``z_y - max_{j != y} z_j``: each iteration draws, for every
    still-robust example, a random square covering a fraction ``p`` of the image (``p``
    starts at ``p_init`` and halves on the paper's schedule, rescaled to ``queries``) and
    keeps the candidate if the margin drops. L-inf: the start is vertical stripes of
    ``+-eps`` and a candidate sets the square to ``+-eps`` per channel. L2: the start is a
    grid of the paper's nested-rectangle blocks, and a candidate moves perturbation mass from
    a second random square into the first, keeping ``||delta||_2 = eps``.

    No gradients: it runs under ``torch.no_grad()``, so it also sees through gradient
    masking. Squares are drawn per example (as in the authors' original code) from the
    call's random source, at any position inside the image: AutoAttack's and torchattacks' code
    shares one square across a batch and draws corners in ``[0, H - side)``, so it never
    touches the last row and column (on 8x8 digits that leaves it several points weaker).
    ``on_step`` is called once per iteration with the number of examples queried; an
    example uses at most ``queries`` model queries (the start counts as one; torchattacks'
    ``n_queries`` counts iterations after it) and none once it is misclassified.

    Distance: ``linf`` or ``l2`` (the threat model's).
    Arguments:
        queries (int): model queries per example. Default: 5000.
        p_init (float): initial fraction of pixels a square covers, in (0, 1]. Default: 0.8.
    Shapes: ``x`` ``[N, C, H, W]`` in the input range, ``y`` ``[N]`` class indices.

    Example::

        attack = Square(model, LinfBall(eps=8 / 255), queries=5000,
                        generator=torch.Generator().manual_seed(0))
        x_adv = attack(x, y)
    """

    name = "square"

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        super().__init__(model, threat, generator=generator, on_step=on_step)
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        if not isinstance(threat, LinfBall | L2Ball):
            raise ValueError(f"the Square Attack supports linf and l2, not {threat.norm!r}")
        self.queries = queries
        self.p_init = float(p_init)

    def planned_steps(self) -> int:
        return self.queries

    def perturb(self, x: torch.Tensor, y: torch.Tensor, random: RandomSource) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"the Square Attack needs images [N, C, H, W], got shape {list(x.shape)}"
            )
        with torch.no_grad():
            start = random.child("start")
            if isinstance(self.threat, LinfBall):
                return self._search(x, y, self._linf_start(x, start), self._linf_candidates, random)
            return self._search(x, y, self._l2_start(x, start), self._l2_candidates, random)

    def _query(
        self, x_query: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Margins ``[n]`` and misclassification ``[n]`` at ``x_query``: one query each."""
        logits = self.model(x_query)
        if self.on_step is not None:
            self.on_step(x_query.shape[0])
        return margin(logits, labels), logits.argmax(dim=1) != labels

    def _search(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_start: torch.Tensor,
        candidates: _Candidates,
        random: RandomSource,
    ) -> torch.Tensor:
        x_best = x_start
        best_margin, fooled = self._query(x_best, y)
        for iteration in range(self.queries - 1):
            active = (~fooled).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            fraction = square_fraction(self.p_init, iteration, self.queries)
            draws = random.subset(active).child("iteration", iteration)
            x_new = candidates(x[active], x_best[active], fraction, draws)
            new_margin, fooled_new = self._query(x_new, y[active])
            # A misclassifying candidate is kept even if its margin is not lower (a tie).
            accepted = (new_margin < best_margin[active]) | fooled_new
            x_best[active[accepted]] = x_new[accepted]
            best_margin[active[accepted]] = new_margin[accepted]
            fooled[active] = fooled_new
        return x_best

    def _linf_start(self, x: torch.Tensor, random: RandomSource) -> torch.Tensor:
        # Vertical stripes of +-eps: one sign per column and channel (the paper's init).
        _, channels, _, width = x.shape
        stripes = _random_signs((channels, 1, width), x, random)
        return self.threat.project(x + self.threat.eps * stripes, x)

    def _linf_candidates(
        self, x: torch.Tensor, x_best: torch.Tensor, fraction: float, random: RandomSource
    ) -> torch.Tensor:
        _, channels, height, width = x.shape
        side = min(max(round(math.sqrt(fraction * height * width)), 1), height, width)
        top, left = _square_corners(side, height, width, x, random)
        square = _square_mask(top, left, side, height, width)
        # +-2 eps then projection sets the square to x +- eps, one sign per channel.
        values = 2 * self.threat.eps * _random_signs((channels, 1, 1), x, random)
        return self.threat.project(x_best + square * values, x)

    def _l2_start(self, x: torch.Tensor, random: RandomSource) -> torch.Tensor:
        # A centred grid of update blocks (five across for large images), random signs per
        # block and channel, scaled to ||delta||_2 = eps (the paper's init).
        _, channels, height, width = x.shape
        side = max(height // 5, 1)
        block = square_update_block(side, x).view(1, 1, side, side)
        delta = torch.zeros_like(x)
        for top in range((height - 5 * side) // 2, height - side + 1, side):
            for left in range((width - 5 * side) // 2, width - side + 1, side):
                signs = _random_signs((channels, 1, 1), x, random)
                delta[:, :, top : top + side, left : left + side] += block * signs
        return self._scaled_to_eps(x, delta)

    def _l2_candidates(
        self, x: torch.Tensor, x_best: torch.Tensor, fraction: float, random: RandomSource
    ) -> torch.Tensor:
        count, channels, height, width = x.shape
        eps = self.threat.eps
        delta = x_best - x
        # Odd sides, at least 3: the update block has a positive and a negative half.
        side = max(round(math.sqrt(fraction * height * width)), 3)
        side = min(side + 1 - side % 2, height, width)
        top, left = _square_corners(side, height, width, x, random)
        top_2, left_2 = _square_corners(side, height, width, x, random)
        into = _square_index(top, left, side, channels)
        out_of = _square_index(top_2, left_2, side, channels)
        both = _square_mask(top, left, side, height, width) | _square_mask(
            top_2, left_2, side, height, width
        )

        def channel_norms(blocks: torch.Tensor) -> torch.Tensor:
            norms = torch.linalg.vector_norm(blocks.flatten(2), dim=2)
            shaped: torch.Tensor = norms.view(count, channels, 1, 1)
            return shaped

        image_norms = _rows(torch.linalg.vector_norm(delta.flatten(1), dim=1), x)
        window_norms = _rows(torch.linalg.vector_norm((delta * both).flatten(1), dim=1), x)
        old_block = delta[into]
        shape = square_update_block(side, x)
        transposed = random.integers(0, 2, (), device=x.device).bool()
        shapes = torch.where(_rows(transposed, x), shape.T, shape)
        new_block = shapes * _random_signs((channels, 1, 1), x, random)
        new_block = new_block + old_block / (channel_norms(old_block) + _TINY)
        # The mass the two squares held, plus what the ball has left, spread over channels.
        budget = ((eps**2 - image_norms**2).clamp_min(0) / channels + window_norms**2).sqrt()
        new_block = new_block / (channel_norms(new_block) + _TINY) * budget
        delta[out_of] = 0.0
        delta[into] = new_block
        return self._scaled_to_eps(x, delta)

    def _scaled_to_eps(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        norms = _rows(torch.linalg.vector_norm(delta.flatten(1), dim=1), delta)
        return self.threat.project(x + delta / (norms + _TINY) * self.threat.eps, x)
