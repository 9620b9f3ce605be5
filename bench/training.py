"""Cost of every training method relative to natural training, measured side by side.

    .venv/bin/python -m bench.training [--device cpu|cuda] [--repeats 5] [--workloads digits 32]

Two workloads: the digits (1x8x8, the zoo's ``small_cnn``) and a 3x32x32 one (the digits
upscaled to 32x32 RGB as in ``bench/attacks.py``, ``small_cnn`` with channels [32, 64,
64]), both at L-inf eps 0.1. Every method trains from the same initial weights for the
same budget of epochs (Free-AT, m = 4: a quarter of the loop epochs, each replaying every
minibatch 4 times) with the same optimizer, schedule and batch size; the runs are
interleaved (natural, fgsm, ..., natural, fgsm, ...) ``--repeats`` times and each
method's median counts, so that load from other processes hits every method alike.

Timed: the training only (``TrainingResult.seconds``: the epochs' minibatch loops, no
validation, which is off in the timed runs). Each repeat runs every method once (in
alternating order); a method's ratio is the median, over repeats, of its time divided by
natural training's time in the same repeat, so that load from other processes (which
varies over minutes on a shared machine) cancels. Shown for wall time (the target's
figure, with its range over repeats) and for the CPU time of the training thread
(``TrainingResult.cpu_seconds``). Afterwards, untimed: clean and PGD-20
accuracy on the test examples. Gradient computations are per-example backward passes
(see ``adversarial.training.counting``), counted by the loop.

Targets (wall time relative to natural): Free-AT <= 1.10x, Fast-AT <= 2.0x, PGD-7 <= 8x.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from adversarial.attacks import PGD
from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture
from adversarial.threat import LinfBall
from adversarial.training import (
    AdamConfig,
    CosineSchedule,
    TrainingData,
    method_config,
    train,
)

EPS = 0.1


def to_32(x: torch.Tensor) -> torch.Tensor:
    """Digits as 3x32x32 images (nearest upscaling, grey in three channels), as in
    ``bench/attacks.py``."""
    return x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).repeat(1, 3, 1, 1)


METHODS: dict[str, tuple[str, dict[str, object]]] = {
    "natural": ("natural", {}),
    "fgsm": ("fgsm", {"eps": EPS}),
    "pgd-7": ("pgd", {"eps": EPS, "steps": 7}),
    "free m=4": ("free", {"eps": EPS, "replays": 4}),
    "fast": ("fast", {"eps": EPS}),
    "trades-10": ("trades", {"eps": EPS}),
    "vat": ("vat", {"eps": EPS}),
}
TARGETS = {"free m=4": 1.10, "fast": 2.0, "pgd-7": 8.0}


@dataclass
class Workload:
    """A model builder and its data."""

    label: str
    architecture_kwargs: dict[str, object]
    input_shape: tuple[int, int, int]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    epochs: int

    def model(self, device: torch.device) -> nn.Module:
        torch.manual_seed(0)
        return build_architecture("small_cnn", self.architecture_kwargs, self.input_shape, 10).to(
            device
        )


def pgd20_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(clean, PGD-20) accuracy; only correctly classified examples are attacked."""
    model.eval()
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    generator = torch.Generator(device=device).manual_seed(0)
    attack = PGD(model, LinfBall(EPS), steps=20, generator=generator)
    index = correct.nonzero().squeeze(1)
    x_adv = attack(x[index], y[index])
    with torch.no_grad():
        robust = int((model(x_adv).argmax(1) == y[index]).sum())
    return float(correct.float().mean()), robust / len(y)


def bench(workload: Workload, device: torch.device, repeats: int, batch_size: int) -> None:
    data = TrainingData(workload.x_train, workload.y_train)
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    computations: dict[str, int] = {}
    accuracy: dict[str, tuple[float, float]] = {}
    print(
        f"\n{workload.label}: {len(workload.y_train)} training examples "
        f"{list(workload.input_shape)}, budget {workload.epochs} epochs, batch {batch_size}, "
        f"adam lr 3e-3 cosine, eps {EPS}, {repeats} interleaved repeats"
    )
    # One untimed natural epoch first: kernels, allocator and caches warm for everyone.
    train(
        workload.model(device),
        data,
        method_config("natural"),
        schedule=CosineSchedule(),
        optimizer=AdamConfig(lr=3e-3),
        epochs=1,
        batch_size=batch_size,
        seed=0,
        device=device,
    )
    for repeat in range(repeats):
        # Alternate the order so that no method always runs right after the same one.
        order = list(METHODS.items())
        for label, (name, params) in order if repeat % 2 == 0 else order[::-1]:
            model = workload.model(device)
            result = train(
                model,
                data,
                method_config(name, **params),  # type: ignore[arg-type]
                schedule=CosineSchedule(),
                optimizer=AdamConfig(lr=3e-3),
                epochs=workload.epochs,
                batch_size=batch_size,
                seed=0,
                device=device,
            )
            seconds[label].append(result.seconds)
            cpu_seconds[label].append(result.cpu_seconds)
            computations[label] = result.gradient_computations
            if repeat == 0:
                accuracy[label] = pgd20_accuracy(model, workload.x_test, workload.y_test, device)
    natural_computations = computations["natural"]
    print(
        f"  {'method':<10} {'wall s':>7} {'x natural':>9} {'(range)':>13} {'cpu x nat':>9} "
        f"{'grad comps':>11} {'x nat':>6} {'clean':>7} {'PGD-20':>7}  target"
    )
    for label in METHODS:
        # Ratios of runs made back to back (each pair saw similar load), median over pairs.
        wall_ratios = [a / b for a, b in zip(seconds[label], seconds["natural"], strict=True)]
        cpu_ratios = [
            a / b for a, b in zip(cpu_seconds[label], cpu_seconds["natural"], strict=True)
        ]
        wall_ratio = statistics.median(wall_ratios)
        cpu_ratio = statistics.median(cpu_ratios)
        target = TARGETS.get(label)
        verdict = ""
        if target is not None:
            verdict = f"<= {target:g}x " + ("met" if wall_ratio <= target else "MISSED")
        clean, robust = accuracy[label]
        print(
            f"  {label:<10} {statistics.median(seconds[label]):7.3f} {wall_ratio:8.2f}x "
            f"({min(wall_ratios):4.2f}-{max(wall_ratios):4.2f}x) {cpu_ratio:8.2f}x "
            f"{computations[label]:11d} {computations[label] / natural_computations:5.2f}x "
            f"{clean:7.1%} {robust:7.1%}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples-32", type=int, default=768, help="3x32x32 training examples")
    parser.add_argument("--epochs-32", type=int, default=8, help="3x32x32 epoch budget")
    parser.add_argument("--workloads", nargs="+", default=["digits", "32"])
    args = parser.parse_args()
    device = torch.device(args.device)

    x_train, y_train = load_builtin("digits", "train")
    x_test, y_test = load_builtin("digits", "test")
    workloads = {
        "digits": Workload(
            "digits small_cnn",
            {},
            (1, 8, 8),
            x_train,
            y_train,
            x_test,
            y_test,
            epochs=4,
        ),
        "32": Workload(
            "3x32x32 small_cnn [32, 64, 64]",
            {"channels": [32, 64, 64]},
            (3, 32, 32),
            to_32(x_train[: args.examples_32]),
            y_train[: args.examples_32],
            to_32(x_test),
            y_test,
            epochs=args.epochs_32,
        ),
    }
    for name in args.workloads:
        bench(workloads[name], device, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
