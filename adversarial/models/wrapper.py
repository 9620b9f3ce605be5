"""The input-space wrapper every loaded or trained classifier is served through."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from adversarial.errors import ModelFormatError


class InputSpaceModel(nn.Module):
    """A classifier whose inputs live in ``input_range``, with its preprocessing inside.

    Attacks, threat models and robustness gates are stated in input space: an L-inf eps of
    8/255 means "each pixel may move by 8 of 255 levels". If per-channel normalization
    happened outside the model, the same eps would mean a different perturbation for every
    model (dividing by a std of 0.25 quadruples it). So the normalization a model was
    trained with is applied here, inside ``forward``, and everything else only ever sees
    raw inputs in ``input_range``.

    The wrapper does not clamp its inputs: keeping them in range is the attack's job, and a
    clamp here would zero the gradients of out-of-range points and hide the problem.

    Attributes:
        network: the wrapped classifier, which receives normalized inputs.
        input_shape: ``(C, H, W)`` of one example.
        num_classes: width of the logits.
        input_range: ``(low, high)`` bounds of valid inputs.
        normalization: ``(mean, std)`` per channel, or None.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        input_range: tuple[float, float] = (0.0, 1.0),
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.input_shape: tuple[int, int, int] = (
            int(input_shape[0]),
            int(input_shape[1]),
            int(input_shape[2]),
        )
        self.num_classes = int(num_classes)
        self.input_range: tuple[float, float] = (float(input_range[0]), float(input_range[1]))
        low, high = self.input_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ModelFormatError(
                "bad_input_range", f"input_range must be finite with low < high, got {input_range}."
            )
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        # Buffers so .to(device) moves them; not persistent so the wrapper's state_dict is
        # exactly the network's (prefixed "network."), whatever the normalization.
        self.register_buffer("mean", None, persistent=False)
        self.register_buffer("std", None, persistent=False)
        if normalization is not None:
            mean, std = (tuple(float(value) for value in values) for values in normalization)
            _check_normalization(mean, std, self.input_shape[0])
            self.normalization = (mean, std)
            self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, C, H, W]`` in ``input_range``."""
        if self.mean is not None and self.std is not None:
            inputs = (inputs - self.mean) / self.std
        logits: torch.Tensor = self.network(inputs)
        return logits

    def extra_repr(self) -> str:
        """Shown by ``repr``: the declared input space."""
        return (
            f"input_shape={list(self.input_shape)}, num_classes={self.num_classes}, "
            f"input_range={self.input_range}, normalization={self.normalization}"
        )


def _check_normalization(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> None:
    """Refuse a normalization that does not fit the channels or would divide by zero."""
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ModelFormatError(
            "bad_normalization",
            f"normalization needs mean and std with 1 or {channels} values each, got "
            f"{len(mean)} and {len(std)}.",
        )
    if not all(math.isfinite(value) for value in mean) or not all(
        math.isfinite(value) and value > 0 for value in std
    ):
        raise ModelFormatError(
            "bad_normalization", "normalization mean must be finite and std finite and positive."
        )
