"""Training-time data augmentation: random crop with padding, horizontal flip, rotation.

Applied per minibatch, before the method sees it (so the attack perturbs the augmented
image), with per-example parameters drawn from the run's augmentation generator on the
CPU: the same seed gives the same augmented batches on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adversarial.errors import TrainingError
from adversarial.image_ops import crop_with_padding, flip_horizontal, rotate


@dataclass(frozen=True, kw_only=True)
class AugmentationConfig:
    """What to apply to each training minibatch, in this order.

    Attributes:
        crop_padding: pad each image by this many pixels (of the input range's lower bound,
            black for [0, 1]) and crop a random ``H x W`` window; 0 disables. CIFAR-10
            practice is 4 for 32x32.
        horizontal_flip: mirror each image with probability 1/2 (not for digits or text).
        rotation_degrees: rotate each image by an angle uniform in ``[-d, d]`` degrees
            (bilinear; corners filled with the lower bound); 0 disables.
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    rotation_degrees: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int):
            raise TrainingError("bad_training_config", "crop_padding must be an integer.")
        if self.crop_padding < 0:
            raise TrainingError("bad_training_config", "crop_padding must be >= 0.")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise TrainingError(
                "bad_training_config", "rotation_degrees must be between 0 and 180."
            )

    @property
    def enabled(self) -> bool:
        """Whether any transform is switched on."""
        return self.crop_padding > 0 or self.horizontal_flip or self.rotation_degrees > 0


def augment(
    x: torch.Tensor,
    config: AugmentationConfig,
    generator: torch.Generator,
    input_range: tuple[float, float],
) -> torch.Tensor:
    """Augment the minibatch ``x`` ``[N, C, H, W]``; the result stays in ``input_range``.

    Draws, in this order and only for the enabled transforms: crop offsets (two integers
    per example), flips (one bit per example), angles (one float per example), all from
    ``generator`` (a CPU generator), so the result depends only on its state.
    """
    count = x.shape[0]
    fill = input_range[0]
    if config.crop_padding > 0:
        span = 2 * config.crop_padding + 1
        offsets = torch.randint(0, span, (2, count), generator=generator).to(x.device)
        x = crop_with_padding(x, offsets[0], offsets[1], config.crop_padding, fill)
    if config.horizontal_flip:
        flips = torch.rand(count, generator=generator) < 0.5
        x = flip_horizontal(x, flips.to(x.device))
    if config.rotation_degrees > 0:
        angles = (torch.rand(count, generator=generator) * 2 - 1) * config.rotation_degrees
        # Bilinear weights are convex, but their float sum may miss 1 by an ulp.
        x = rotate(x, angles, fill).clamp(input_range[0], input_range[1])
    return x
