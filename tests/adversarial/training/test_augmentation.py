"""Augmentation: shapes, the input range, determinism, and what each transform does."""

from __future__ import annotations

import pytest
import torch

from adversarial.errors import TrainingError
from adversarial.image_ops import crop_with_padding, flip_horizontal, rotate
from adversarial.training import AugmentationConfig, NaturalConfig, augment
from tests.adversarial.training.common import run, tiny_data

ALL = AugmentationConfig(crop_padding=2, horizontal_flip=True, rotation_degrees=15)


def _images(channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(12, channels, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_shape_and_range_are_kept(input_range: tuple[float, float]) -> None:
    low, high = input_range
    x = _images() * (high - low) + low
    out = augment(x, ALL, torch.Generator().manual_seed(0), input_range)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert float(out.min()) >= low
    assert float(out.max()) <= high
    assert not torch.equal(out, x)


def test_deterministic_given_the_generator_state() -> None:
    x = _images()
    first = augment(x, ALL, torch.Generator().manual_seed(5), (0.0, 1.0))
    second = augment(x, ALL, torch.Generator().manual_seed(5), (0.0, 1.0))
    other = augment(x, ALL, torch.Generator().manual_seed(6), (0.0, 1.0))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_crop_offsets_move_the_image_and_pad_with_the_fill() -> None:
    x = _images(channels=1, size=4)
    count = x.shape[0]
    centered = torch.full((count,), 2)
    assert torch.equal(crop_with_padding(x, centered, centered, 2, 0.0), x)
    shifted = crop_with_padding(x, torch.zeros(count, dtype=torch.long), centered, 2, 0.5)
    # The window starts 2 rows above the image: two rows of fill, then the image's top.
    assert torch.all(shifted[:, :, :2] == 0.5)
    assert torch.equal(shifted[:, :, 2:], x[:, :, :2])


def test_flip_mirrors_only_the_chosen_images() -> None:
    x = _images()
    flags = torch.tensor([True, False] * 6)
    out = flip_horizontal(x, flags)
    assert torch.equal(out[flags], x[flags].flip(3))
    assert torch.equal(out[~flags], x[~flags])


def test_rotation_by_zero_and_by_a_quarter_turn() -> None:
    x = _images(channels=1, size=8)
    assert torch.allclose(rotate(x, torch.zeros(12), 0.0), x, atol=1e-5)
    quarter = rotate(x, torch.full((12,), 90.0), 0.0)
    turned = [torch.rot90(x, k, dims=(2, 3)) for k in (1, -1)]
    assert any(torch.allclose(quarter, option, atol=1e-5) for option in turned)


def test_rotation_corners_take_the_fill() -> None:
    x = torch.ones(1, 1, 9, 9)
    out = rotate(x, torch.tensor([45.0]), 0.0)
    assert float(out[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(out[0, 0, 4, 4]) == pytest.approx(1.0, abs=1e-6)


def test_bad_configs_are_refused() -> None:
    for kwargs in ({"crop_padding": -1}, {"rotation_degrees": 200.0}):
        with pytest.raises(TrainingError) as error:
            AugmentationConfig(**kwargs)  # type: ignore[arg-type]
        assert error.value.code == "bad_training_config"


def test_training_with_augmentation_is_reproducible_and_differs_from_without() -> None:
    config = AugmentationConfig(crop_padding=1, rotation_degrees=10)
    first, _ = run(NaturalConfig(), epochs=1, augmentation=config, validation=None)
    second, _ = run(NaturalConfig(), epochs=1, augmentation=config, validation=None)
    plain, _ = run(NaturalConfig(), epochs=1, validation=None)
    state = first.state_dict()
    assert all(torch.equal(state[k], v) for k, v in second.state_dict().items())
    assert any(not torch.equal(state[k], v) for k, v in plain.state_dict().items())
    assert tiny_data().inputs.shape[0] > 0
