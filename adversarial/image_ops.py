"""Batched image transforms on ``[N, C, H, W]`` tensors, with per-example parameters.

Shared by training augmentation and the corruption benchmark. Nothing here draws random
numbers: callers pass the parameters, so they decide where the randomness comes from.
Every transform is a convex combination of input pixels and ``fill``, so inputs inside an
input range stay inside it.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional


def crop_with_padding(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, padding: int, fill: float
) -> torch.Tensor:
    """Pad each image by ``padding`` pixels of value ``fill`` and crop it back to ``H x W``.

    ``top`` and ``left`` ``[N]`` (integers in ``[0, 2 * padding]``) place each crop in the
    padded image; ``top = left = padding`` returns the image unchanged.
    """
    if padding == 0:
        return x
    count, channels, height, width = x.shape
    padded = functional.pad(x, (padding, padding, padding, padding), value=fill)
    rows = (top.view(-1, 1) + torch.arange(height, device=x.device)).view(count, 1, height, 1)
    columns = (left.view(-1, 1) + torch.arange(width, device=x.device)).view(count, 1, 1, width)
    examples = torch.arange(count, device=x.device).view(count, 1, 1, 1)
    channel_index = torch.arange(channels, device=x.device).view(1, channels, 1, 1)
    return padded[examples, channel_index, rows, columns]


def flip_horizontal(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose ``flip`` ``[N]`` (bool) is set, left to right."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor, fill: float) -> torch.Tensor:
    """Rotate each image by ``degrees`` ``[N]`` (counter-clockwise) about its center.

    Bilinear interpolation (``affine_grid`` + ``grid_sample``); pixels that come from
    outside the image take the value ``fill``.
    """
    count, _, height, width = x.shape
    radians = degrees.to(dtype=x.dtype, device=x.device) * (math.pi / 180.0)
    cos, sin = radians.cos(), radians.sin()
    # affine_grid works in coordinates normalized to [-1, 1] per axis; rescale so that the
    # rotation is one in pixel space even when H != W.
    theta = torch.zeros(count, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (height / width)
    theta[:, 1, 0] = sin * (width / height)
    theta[:, 1, 1] = cos
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros: shift so that zero means ``fill``.
    rotated = functional.grid_sample(
        x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return rotated + fill


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel with a Gaussian of standard deviation ``sigma`` pixels.

    The kernel reaches ``ceil(3 * sigma)`` pixels each way and is normalized to sum 1;
    borders replicate the edge pixels.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    blurred = functional.conv2d(padded, horizontal, groups=channels)
    return functional.conv2d(blurred, vertical, groups=channels)
