"""Robust accuracy of every training method on the digits, over three seeds.

    .venv/bin/python -m bench.training_accuracy [--seeds 0 1 2] [--epochs 20]

Built-in digits (1,437 train, 360 test, inputs in [0, 1]), the zoo's ``small_cnn``, L-inf
eps 0.1. Every method trains with its recommended settings
(:func:`adversarial.training.recommended_settings`) for a budget of ``--epochs`` epochs of
natural training (Free-AT, m = 4: ``epochs / 4`` loop epochs). Fast-AT's
catastrophic-overfitting check validates on the first 256 training examples (as Wong et
al. check a training minibatch); nothing is tuned on the test examples. The final numbers
are clean and PGD-20 accuracy (the engine's PGD attack: random start, step 2.5 * eps / 20,
one restart) on the 360 test examples.

Requirement: every adversarial method's PGD-20 accuracy at least 10 points above natural
training's, with clean accuracy >= 94%, for every seed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from adversarial.attacks import PGD
from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture
from adversarial.threat import LinfBall
from adversarial.training import (
    TrainingData,
    ValidationConfig,
    method_config,
    recommended_settings,
    seeded_initialization,
    train,
)

EPS = 0.1
METHODS: dict[str, dict[str, object]] = {
    "natural": {},
    "fgsm": {"eps": EPS},
    "pgd": {"eps": EPS, "steps": 7},
    "free": {"eps": EPS, "replays": 4},
    "fast": {"eps": EPS},
    "trades": {"eps": EPS},
    "vat": {"eps": EPS},
}
ADVERSARIAL_MARGIN = 0.10
MIN_CLEAN = 0.94


def pgd20_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
) -> tuple[float, float]:
    """(clean, PGD-20) accuracy; only correctly classified examples are attacked."""
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    attack = PGD(model, LinfBall(EPS), steps=20, generator=torch.Generator().manual_seed(seed))
    index = correct.nonzero().squeeze(1)
    x_adv = attack(x[index], y[index])
    with torch.no_grad():
        robust = int((model(x_adv).argmax(1) == y[index]).sum())
    return float(correct.float().mean()), robust / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()

    x_train, y_train = load_builtin("digits", "train")
    x_test, y_test = load_builtin("digits", "test")
    data = TrainingData(x_train, y_train, x_train[:256], y_train[:256])
    results: dict[str, list[tuple[float, float, float]]] = {}
    print(f"digits, small_cnn, Linf eps {EPS}, budget {args.epochs} epochs; test: 360 examples")
    print(f"{'method':<8} {'seed':>4} {'clean':>7} {'PGD-20':>7} {'train s':>8}  settings")
    for name in args.methods:
        config = method_config(name, **METHODS[name])  # type: ignore[arg-type]
        settings = recommended_settings(name)
        for seed in args.seeds:
            with seeded_initialization(seed):
                model = build_architecture("small_cnn", {}, (1, 8, 8), 10)
            started = time.perf_counter()
            result = train(
                model,
                data,
                config,
                schedule=settings.schedule,
                optimizer=settings.optimizer,
                epochs=args.epochs,
                batch_size=settings.batch_size,
                seed=seed,
                validation=ValidationConfig(eps=EPS, limit=256, pgd_steps=10),
            )
            wall = time.perf_counter() - started
            clean, robust = pgd20_accuracy(model, x_test, y_test, seed)
            results.setdefault(name, []).append((clean, robust, result.seconds))
            stop = " (stopped early)" if result.stopped_early else ""
            print(
                f"{name:<8} {seed:>4} {clean:7.1%} {robust:7.1%} {result.seconds:8.2f}  "
                f"{settings.describe()}, wall {wall:.1f}s{stop}"
            )
    print("\nmean over seeds, and the requirement check")
    natural = results.get("natural")
    failures = 0
    for name, rows in results.items():
        clean = statistics.mean(row[0] for row in rows)
        robust = statistics.mean(row[1] for row in rows)
        verdict = ""
        if name != "natural" and natural is not None:
            ok = all(
                row[1] >= base[1] + ADVERSARIAL_MARGIN and row[0] >= MIN_CLEAN
                for row, base in zip(rows, natural, strict=True)
            )
            failures += not ok
            verdict = "meets it" if ok else "FAILS"
        print(f"{name:<8} clean {clean:6.1%}  PGD-20 {robust:6.1%}  {verdict}")
    if natural is not None:
        print("requirement " + ("met by every method" if not failures else f"FAILED ({failures})"))


if __name__ == "__main__":
    main()
