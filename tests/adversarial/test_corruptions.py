"""Common corruptions: in range, deterministic, as parameterized; accuracy per severity."""

from __future__ import annotations

import pytest
import torch

from adversarial.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_accuracy,
    corruption_parameter,
)
from tests.trained import digits_arrays, trained_digits_cnn


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x_test, y_test = digits_arrays()
    return x_test[:120], y_test[:120]


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_in_range_and_deterministic(corruption: str, input_range: tuple[float, float]) -> None:
    low, high = input_range
    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * (high - low) + low
    for severity in SEVERITIES:
        out = corrupt(x, corruption, severity, seed=3, input_range=input_range)
        assert out.shape == x.shape
        assert float(out.min()) >= low
        assert float(out.max()) <= high
        assert not torch.equal(out, x)
        again = corrupt(x, corruption, severity, seed=3, input_range=input_range)
        assert torch.equal(out, again)


def test_random_corruptions_depend_on_the_seed() -> None:
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for corruption in ("gaussian_noise", "rotation"):
        first = corrupt(x, corruption, 2, seed=0)
        second = corrupt(x, corruption, 2, seed=1)
        assert not torch.equal(first, second)


def test_severity_grows() -> None:
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    for corruption in CORRUPTIONS:
        distances = [
            float((corrupt(x, corruption, severity, seed=0) - x).abs().mean())
            for severity in SEVERITIES
        ]
        assert distances == sorted(distances), corruption


def test_what_each_corruption_does() -> None:
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(corrupt(flat, "gaussian_blur", 3, seed=0), flat)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    contrast = corrupt(x, "contrast", 2, seed=0)
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    centered = x - x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(
        contrast - contrast.mean(dim=(1, 2, 3), keepdim=True), centered * 0.5, atol=1e-6
    )
    noise = corrupt(torch.full((64, 1, 16, 16), 0.5), "gaussian_noise", 1, seed=0) - 0.5
    assert float(noise.std()) == pytest.approx(corruption_parameter("gaussian_noise", 1), rel=0.05)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1, seed=0)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 4, seed=0)


def test_corruption_accuracy(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = trained_digits_cnn()
    report = corruption_accuracy(model, x, y, seed=0, batch_size=50)
    assert len(report.results) == len(CORRUPTIONS) * len(SEVERITIES)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert report.clean_accuracy == pytest.approx(clean)
    assert report.mean_accuracy == pytest.approx(
        sum(r.accuracy for r in report.results) / len(report.results)
    )
    noise = [r.accuracy for r in report.results if r.corruption == "gaussian_noise"]
    assert report.mean_by_corruption["gaussian_noise"] == pytest.approx(sum(noise) / 3)
    assert min(r.accuracy for r in report.results) < clean
    for result in report.results:
        assert result.parameter == corruption_parameter(result.corruption, result.severity)
        corrupted = corrupt(x, result.corruption, result.severity, seed=0)
        with torch.no_grad():
            direct = float((model(corrupted).argmax(1) == y).float().mean())
        assert result.accuracy == pytest.approx(direct)
    # Batching does not change anything.
    other = corruption_accuracy(model, x, y, seed=0, batch_size=7, severities=(2,))
    same = {(r.corruption, r.severity): r.accuracy for r in report.results}
    assert all(same[(r.corruption, r.severity)] == r.accuracy for r in other.results)
    assert not model.training
