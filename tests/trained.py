"""Small classifiers trained on scikit-learn's digits, shared by engine and worker tests."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def digits_arrays(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): [N,1,8,8] in [0,1], an 80/20 seeded split."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.tensor(np.random.default_rng(seed).permutation(len(y)))
    x, y = x[order], y[order]
    return x[:1437], y[:1437], x[1437:], y[1437:]


class DigitsCNN(nn.Module):
    """A small CNN for [1, 8, 8] inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 15,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 64,
) -> nn.Module:
    """Plain natural training with Adam; deterministic for a seed on CPU."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


@lru_cache
def trained_digits_cnn(seed: int = 0) -> nn.Module:
    """A DigitsCNN trained on the digits train split (about 98% test accuracy).

    Trained once per process and shared: tests may switch its mode (and restore it) but must
    not change its weights.
    """
    torch.manual_seed(seed)
    x_train, y_train, _, _ = digits_arrays()
    return train(DigitsCNN(), x_train, y_train, seed=seed)
