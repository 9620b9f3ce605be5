"""The jail's overhead per job: the same task in a jail and in this process, side by side.

    .venv/bin/python -m bench.jail [--repeats 5] [--long-examples 200000] [--mode auto]

Each task is a function of ``worker.jail.tasks``; "in process" calls it here, the way the
worker ran models before the jail, and "jail" runs it through ``run_in_jail``. Measured:

- small jobs: validating the digits CNN (ONNX, and a safetensors ``small_cnn``), with the
  warm spare ready when the job arrives (a worker between jobs), and back to back (the
  next job arrives as soon as the previous one ends, while its spare still warms up);
- a cold jail (no spare at all: Python and torch imports included), for reference;
- a long job: predictions for ``--long-examples`` digits, where the jail's cost should be a
  small fraction;
- audits, the jobs users run (the ``audit`` task: adversarial.audit.audit in the jail): a
  small one (FGSM at three eps and PGD-20 on the 360 test digits, the CI case) and a long
  one (PGD-50 on a 3x32x32 CNN, ``--cifar-examples`` examples), interleaved.

Prints medians of ``--repeats`` runs, the per-job overhead in seconds and as a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adversarial.models.loading import ModelSpec
from tests.model_files import digits_onnx, digits_small_cnn_safetensors
from worker.jail import JailConfig, JailLimits, get_pool, resolve_mode, run_in_jail
from worker.jail import tasks as jail_tasks
from worker.jail.sandbox import Mode


def median_seconds(run: Callable[[], Any], repeats: int, before: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-examples", type=int, default=200_000)
    parser.add_argument("--mode", choices=("auto", "namespaces", "process"), default="auto")
    parser.add_argument("--cifar-examples", type=int, default=120)
    arguments = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="gauntlet-bench-jail-"))
    config = JailConfig(jail_dir=folder / "jails")
    pool = get_pool(config)
    mode: Mode = resolve_mode(arguments.mode, config)
    limits = JailLimits()
    print(f"jail mode: {mode}; torch threads: {torch.get_num_threads()}")

    models = {
        "onnx": (digits_onnx(), ModelSpec("onnx", (1, 8, 8), 10)),
        "safetensors": (
            digits_small_cnn_safetensors(),
            ModelSpec("safetensors", (1, 8, 8), 10, architecture="small_cnn"),
        ),
    }

    def ready() -> None:
        pool.warm(mode)

    def nothing() -> None:
        return None

    def cold() -> None:
        pool.close()

    print(f"\n{'job':<34}{'in process':>12}{'jail':>10}{'overhead':>11}")
    for name, (data, spec) in models.items():
        path = folder / f"model.{name}"
        path.write_bytes(data)
        payload = {"spec": spec.to_json(), "max_bytes": 2**28, "device": "cpu"}

        def in_process(payload: dict[str, Any] = payload, path: Path = path) -> None:
            jail_tasks.validate_model(
                payload, {"model": path}, progress=lambda *_: None, output_dir=folder
            )

        def jailed(payload: dict[str, Any] = payload, path: Path = path) -> None:
            run_in_jail(
                "validate_model",
                payload,
                {"model": path},
                limits=limits,
                mode=mode,
                on_progress=lambda *_: None,
                pool=pool,
            )

        in_process()  # the worker has imported and run this before
        base = median_seconds(in_process, arguments.repeats, nothing)
        for label, before, repeats in (
            ("spare ready", ready, arguments.repeats),
            ("back to back", nothing, arguments.repeats),
            ("cold (no spare)", cold, 2),
        ):
            if label == "back to back":
                ready()
            seconds = median_seconds(jailed, repeats, before)
            print(
                f"{f'validate {name}, {label}':<34}{base:>11.3f}s{seconds:>9.3f}s"
                f"{seconds - base:>+10.3f}s"
            )

    examples = torch.rand(arguments.long_examples, 1, 8, 8).numpy()
    examples_path = folder / "examples.npy"
    np.save(examples_path, examples)
    data, spec = models["onnx"]
    model_path = folder / "model.onnx"
    payload = {
        "spec": spec.to_json(),
        "max_bytes": 2**28,
        "device": "cpu",
        "return_logits": False,
        "batch_size": 1024,
    }
    inputs = {"model": model_path, "examples": examples_path}

    def long_in_process() -> None:
        jail_tasks.predict(payload, inputs, progress=lambda *_: None, output_dir=folder)

    def long_jailed() -> None:
        run_in_jail(
            "predict",
            payload,
            inputs,
            limits=limits,
            mode=mode,
            on_progress=lambda *_: None,
            pool=pool,
        )

    # Interleaved, so that the machine's other load falls on both alike.
    long_in_process()
    base_times, jail_times = [], []
    for _ in range(arguments.repeats):
        base_times.append(median_seconds(long_in_process, 1, nothing))
        jail_times.append(median_seconds(long_jailed, 1, ready))
    base, seconds = statistics.median(base_times), statistics.median(jail_times)
    print(
        f"{f'predict {arguments.long_examples} examples':<34}{base:>11.3f}s{seconds:>9.3f}s"
        f"{seconds - base:>+10.3f}s ({100 * (seconds - base) / base:+.1f}%)"
    )
    bench_audits(arguments, folder, limits, mode, pool, ready)
    pool.close()


def bench_audits(
    arguments: argparse.Namespace,
    folder: Path,
    limits: JailLimits,
    mode: Mode,
    pool: Any,
    ready: Callable[[], None],
) -> None:
    """A small and a long audit, in this process and in the jail (interleaved)."""
    from adversarial.audit import AuditConfig
    from adversarial.datasets import load_builtin
    from adversarial.evaluation import AttackConfig
    from bench.attacks import Cifar32CNN, to_32
    from tests.model_files import onnx_bytes
    from tests.trained import digits_arrays, train
    from worker.loading import write_examples

    x, y = load_builtin("digits", "test")
    x_train, y_train, _, _ = digits_arrays()
    torch.manual_seed(0)
    cifar = train(Cifar32CNN(), to_32(x_train), y_train, epochs=4)
    count = arguments.cifar_examples
    jobs = {
        "audit digits: FGSM x3 + PGD-20": (
            digits_onnx(),
            (1, 8, 8),
            (x, y),
            [AttackConfig("fgsm", "linf", eps) for eps in (0.05, 0.1, 0.2)]
            + [AttackConfig("pgd", "linf", 0.1, {"steps": 20})],
        ),
        f"audit 3x32x32: PGD-50, {count} ex.": (
            onnx_bytes(cifar, torch.rand(2, 3, 32, 32)),
            (3, 32, 32),
            (to_32(x[:count]), y[:count]),
            [AttackConfig("pgd", "linf", 8 / 255, {"steps": 50, "early_stop": False})],
        ),
    }
    for label, (data, shape, (examples, labels), attacks) in jobs.items():
        model_path = folder / "audit-model.onnx"
        model_path.write_bytes(data)
        examples_path = write_examples(
            folder / "audit-examples.npz", examples, labels, torch.arange(labels.shape[0])
        )
        config = AuditConfig(attacks=attacks, num_classes=10, seed=0)
        payload = {
            "spec": ModelSpec("onnx", shape, 10).to_json(),
            "max_bytes": 2**28,
            "device": "cpu",
            "config": config.to_json(),
        }
        inputs = {"model": model_path, "examples": examples_path}
        (folder / "audit-outputs").mkdir(exist_ok=True)

        def here(payload: dict[str, Any] = payload, inputs: dict[str, Path] = inputs) -> None:
            jail_tasks.audit(
                payload, inputs, progress=lambda *_: None, output_dir=folder / "audit-outputs"
            )

        def jailed(payload: dict[str, Any] = payload, inputs: dict[str, Path] = inputs) -> None:
            run_in_jail(
                "audit",
                payload,
                inputs,
                limits=limits,
                mode=mode,
                on_progress=lambda *_: None,
                pool=pool,
                output_dir=folder / "audit-collected",
            )

        here()
        base_times, jail_times = [], []
        for _ in range(arguments.repeats):
            base_times.append(median_seconds(here, 1, lambda: None))
            jail_times.append(median_seconds(jailed, 1, ready))
        base, seconds = statistics.median(base_times), statistics.median(jail_times)
        print(
            f"{label:<34}{base:>11.3f}s{seconds:>9.3f}s{seconds - base:>+10.3f}s "
            f"({100 * (seconds - base) / base:+.1f}%)"
        )


if __name__ == "__main__":
    main()
