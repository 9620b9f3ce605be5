"""A short version of bench/training_accuracy.py: FGSM-AT buys PGD accuracy on the digits."""

from __future__ import annotations

import torch

from adversarial.attacks import PGD
from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture
from adversarial.threat import LinfBall
from adversarial.training import (
    FGSMConfig,
    NaturalConfig,
    TrainingData,
    recommended_settings,
    seeded_initialization,
    train,
)

EPS = 0.1


def _pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    attack = PGD(model, LinfBall(EPS), steps=10, generator=torch.Generator().manual_seed(0))
    index = correct.nonzero().squeeze(1)
    x_adv = attack(x[index], y[index])
    with torch.no_grad():
        robust = int((model(x_adv).argmax(1) == y[index]).sum())
    return float(correct.float().mean()), robust / len(y)


def test_fgsm_training_beats_natural_training_under_pgd() -> None:
    x_train, y_train = load_builtin("digits", "train")
    x_test, y_test = load_builtin("digits", "test")
    data = TrainingData(x_train, y_train)
    accuracies = {}
    for config in (NaturalConfig(), FGSMConfig(eps=EPS)):
        settings = recommended_settings(config.name)
        with seeded_initialization(0):
            model = build_architecture("small_cnn", {}, (1, 8, 8), 10)
        train(
            model,
            data,
            config,
            schedule=settings.schedule,
            optimizer=settings.optimizer,
            epochs=4,
            batch_size=settings.batch_size,
            seed=0,
        )
        accuracies[config.name] = _pgd_accuracy(model, x_test, y_test)
    natural_clean, natural_robust = accuracies["natural"]
    fgsm_clean, fgsm_robust = accuracies["fgsm"]
    assert natural_clean > 0.9
    assert fgsm_clean > 0.9
    assert fgsm_robust >= natural_robust + 0.06, accuracies
