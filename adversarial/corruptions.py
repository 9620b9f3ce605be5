"""Common corruptions: accuracy under natural shifts, next to adversarial robustness.

Adversarial training buys robustness inside a small ball, not accuracy on natural shifts
(noise, blur, rotation, lost contrast); a training report shows both. The corruptions
follow Hendrycks & Dietterich 2019 (ImageNet-C / CIFAR-10-C) at three severities scaled
for small images. Parameters, with ``w = high - low`` the input range's width:

================  ==========================================  ======  ======  ======
corruption        parameter                                   1       2       3
================  ==========================================  ======  ======  ======
gaussian_noise    noise std, as a fraction of ``w``           0.08    0.12    0.18
gaussian_blur     blur std in pixels                          0.5     0.75    1.0
rotation          angle in degrees, sign random per example   5       10      15
contrast          factor towards each image's mean            0.75    0.5     0.3
================  ==========================================  ======  ======  ======

Every corruption is deterministic given ``seed`` (the random ones draw from a CPU
generator seeded per corruption and severity, over the whole set at once, so results do
not depend on the evaluation batch size or the device) and its output is clipped to the
input range.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adversarial.image_ops import gaussian_blur, rotate

SEVERITY_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.08, 0.12, 0.18),
    "gaussian_blur": (0.5, 0.75, 1.0),
    "rotation": (5.0, 10.0, 15.0),
    "contrast": (0.75, 0.5, 0.3),
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_PARAMETERS)
SEVERITIES: tuple[int, ...] = (1, 2, 3)


def _generator(seed: int, corruption: str, severity: int) -> torch.Generator:
    digest = hashlib.sha256(f"{int(seed)}:corruption:{corruption}:{severity}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def corruption_parameter(corruption: str, severity: int) -> float:
    """The parameter of ``corruption`` at ``severity`` (see the module's table).

    Raises:
        ValueError: unknown corruption or severity.
    """
    if corruption not in SEVERITY_PARAMETERS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return SEVERITY_PARAMETERS[corruption][severity - 1]


def corrupt(
    x: torch.Tensor,
    corruption: str,
    severity: int,
    *,
    seed: int,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` under ``corruption`` at ``severity`` (1..3), in ``input_range``.

    Deterministic given ``seed`` and ``x`` (corrupt a whole set at once, as
    :func:`corruption_accuracy` does, so that results do not depend on batching).

    Raises:
        ValueError: unknown corruption or severity.
    """
    parameter = corruption_parameter(corruption, severity)
    low, high = input_range
    generator = _generator(seed, corruption, severity)
    if corruption == "gaussian_noise":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        corrupted = x + noise * (parameter * (high - low))
    elif corruption == "gaussian_blur":
        corrupted = gaussian_blur(x, parameter)
    elif corruption == "rotation":
        signs = torch.randint(0, 2, (x.shape[0],), generator=generator) * 2 - 1
        corrupted = rotate(x, signs.to(x.dtype) * parameter, low)
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        corrupted = (x - mean) * parameter + mean
    return corrupted.clamp(low, high)


@dataclass(frozen=True)
class CorruptionResult:
    """Accuracy under one corruption at one severity."""

    corruption: str
    severity: int
    parameter: float
    accuracy: float


@dataclass(frozen=True)
class CorruptionReport:
    """Accuracy per corruption and severity, and their means.

    Attributes:
        clean_accuracy: on the uncorrupted examples.
        results: one per corruption and severity, in ``CORRUPTIONS`` then severity order.
        mean_accuracy: the mean over every result (the "mean corruption accuracy").
        mean_by_corruption: per corruption, the mean over its severities.
    """

    clean_accuracy: float
    results: list[CorruptionResult]
    mean_accuracy: float
    mean_by_corruption: dict[str, float]


def _accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int
) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            inputs = x[start : start + batch_size].to(device)
            labels = y[start : start + batch_size].to(device)
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
    return correct / x.shape[0]


def corruption_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    corruptions: Sequence[str] = CORRUPTIONS,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> CorruptionReport:
    """Accuracy of ``model`` on ``x`` ``[N, C, H, W]``, ``y`` ``[N]`` under each corruption.

    The model runs in eval mode (its mode is restored); each corruption is applied to the
    whole set on the CPU (:func:`corrupt`), then evaluated in batches on ``device``.

    Raises:
        ValueError: unknown corruption or severity, or an empty set.
    """
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError("x and y must hold the same, non-zero number of examples")
    device = torch.device(device)
    for corruption in corruptions:
        for severity in severities:
            corruption_parameter(corruption, severity)
    was_training = model.training
    model.eval()
    try:
        x_cpu = x.detach().cpu()
        clean = _accuracy(model, x_cpu, y, device, batch_size)
        results = [
            CorruptionResult(
                corruption=corruption,
                severity=severity,
                parameter=corruption_parameter(corruption, severity),
                accuracy=_accuracy(
                    model,
                    corrupt(x_cpu, corruption, severity, seed=seed, input_range=input_range),
                    y,
                    device,
                    batch_size,
                ),
            )
            for corruption in corruptions
            for severity in severities
        ]
    finally:
        model.train(was_training)
    by_corruption = {
        corruption: sum(r.accuracy for r in results if r.corruption == corruption)
        / max(1, sum(1 for r in results if r.corruption == corruption))
        for corruption in corruptions
    }
    mean = sum(r.accuracy for r in results) / len(results) if results else clean
    return CorruptionReport(
        clean_accuracy=clean,
        results=results,
        mean_accuracy=mean,
        mean_by_corruption=by_corruption,
    )
