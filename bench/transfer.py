"""A transferability matrix on the digits: CNN sources (and their ensemble) against CNNs, an
MLP and four scikit-learn models run in onnxruntime as black boxes.

    .venv/bin/python -m bench.transfer [--steps 40] [--step-size 0.01] [--eps 0.1]

Sources: two DigitsCNNs trained with seeds 0 and 1, and their logit ensemble. Targets: the
same CNNs, an MLP (hidden 128), and scikit-learn's logistic regression, SVC (RBF, decision
values), decision tree and 5-nearest neighbours fitted on the flattened train digits and
exported with skl2onnx. Attack: PGD L-inf at ``--eps`` on the 360 built-in test digits,
once with early stopping (the attack's default: each example stops at the first iterate
that fools the source) and once with every step run (``early_stop: False``), as transfer
studies do. Each cell prints the target's error rate on the examples it gets right when
clean, and (in parentheses) how often a fooled target picks the source's wrong class. A
last table gives each target's error rate under random signs of the same size, the floor
that transfer must beat.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from adversarial.datasets import load_builtin
from adversarial.evaluation import AttackConfig
from adversarial.models.blackbox import load_black_box
from adversarial.models.zoo import build_architecture
from adversarial.randomness import ExampleStreams
from adversarial.transfer import TransferMatrix, score, transfer_matrix
from tests.sklearn_models import sklearn_onnx
from tests.trained import digits_arrays, train, trained_digits_cnn

SKLEARN_TARGETS = {
    "logreg": "logistic_regression",
    "svm": "svc",
    "tree": "decision_tree",
    "knn": "knn",
}


def percent(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}"


def print_matrix(matrix: TransferMatrix, title: str) -> None:
    width = 11
    print(f"\n{title}")
    print("error rate % (wrong-class agreement %) of each target, per source")
    print(f"{'source':>8} |" + "".join(f"{name:>{width}}" for name in matrix.targets))
    for source in matrix.sources:
        cells = []
        for target in matrix.targets:
            cell = matrix.cell(source, target)
            cells.append(
                f"{percent(cell.error_rate)} ({percent(cell.wrong_class_agreement).strip():>3})"
            )
        print(f"{source:>8} |" + "".join(f"{text:>{width}}" for text in cells))
    print(
        f"{'clean':>8} |"
        + "".join(
            f"{percent(matrix.cell(matrix.sources[0], t).clean_accuracy):>{width}}"
            for t in matrix.targets
        )
    )
    white_box = ", ".join(
        f"{source} {percent(sets[0].source_success_rate).strip()}%"
        for source, sets in matrix.crafted.items()
    )
    print(f"white-box success rate on each source: {white_box}")
    members = {member for source in matrix.sources for member in source.split("+")}
    held_out = [target for target in matrix.targets if target not in members]
    print(f"over the held-out targets ({', '.join(held_out)}):")
    for source in matrix.sources:
        cells = [matrix.cell(source, target) for target in held_out]
        fooled = sum(cell.fooled for cell in cells)
        agreeing = sum(cell.agreeing for cell in cells)
        right = sum(cell.target_clean_correct for cell in cells)
        print(
            f"  {source:>8}: {fooled}/{right} fooled ({100 * fooled / right:.1f}%), "
            f"{agreeing}/{fooled} of them on the source's class "
            f"({100 * agreeing / max(fooled, 1):.1f}%)"
        )
    print(f"seconds: {matrix.seconds:.1f}")


def print_noise_baseline(
    targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float, seed: int
) -> None:
    """Each target's error rate under random signs of size eps: the floor transfer must beat."""
    random = ExampleStreams.for_examples(seed, torch.arange(x.shape[0]), "noise", "linf")
    noisy = (x + eps * random.signs(x.shape[1:], dtype=x.dtype, device="cpu")).clamp(0, 1)
    nothing = torch.full((x.shape[0],), -1)
    cells = [score(target, x, noisy, y, nothing).error_rate for target in targets.values()]
    print(f"{'noise':>8} |" + "".join(f"{percent(rate):>11}" for rate in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    x, y = load_builtin("digits", "test")
    x_train, y_train, _, _ = digits_arrays()
    cnn_a, cnn_b = trained_digits_cnn(0), trained_digits_cnn(1)
    torch.manual_seed(0)
    mlp = train(build_architecture("mlp", {"hidden": [128]}, (1, 8, 8), 10), x_train, y_train)
    targets: dict[str, nn.Module] = {"cnn_a": cnn_a, "cnn_b": cnn_b, "mlp": mlp}
    for name, estimator in SKLEARN_TARGETS.items():
        targets[name] = load_black_box(
            sklearn_onnx(estimator), input_shape=(1, 8, 8), num_classes=10
        )
    sources: dict[str, nn.Module | list[nn.Module]] = {
        "cnn_a": cnn_a,
        "cnn_b": cnn_b,
        "cnn_a+b": [cnn_a, cnn_b],
    }
    print(f"models ready in {time.perf_counter() - started:.1f}s; {x.shape[0]} test digits")

    for early_stop in (True, False):
        config = AttackConfig(
            "pgd",
            "linf",
            args.eps,
            {"steps": args.steps, "step_size": args.step_size, "early_stop": early_stop},
        )
        matrix = transfer_matrix(sources, targets, x, y, config, seed=args.seed)
        print_matrix(
            matrix,
            f"PGD-{args.steps} linf eps={args.eps:g} step {args.step_size:g}, "
            f"early_stop={early_stop}",
        )
    print(f"\nrandom signs of size eps={args.eps:g}, error rate %:")
    print(f"{'':>8} |" + "".join(f"{name:>11}" for name in targets))
    print_noise_baseline(targets, x, y, args.eps, args.seed)


if __name__ == "__main__":
    main()
