"""What the ONNX budgets cost: load time, and forward time with and without run-time guards.

    .venv/bin/python -m bench.onnx_guards [--device cpu|cuda] [--batch 64] [--repeats 30]

PreAct ResNet-18 (3x32x32, 93 nodes) exported with the TorchScript exporter. Prints the
``load_onnx`` time (the static budgets included), then the median forward + backward time of
the module as built and with its guard table emptied, and their ratio; both in one run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch

from adversarial.models.onnx import executor, load_onnx
from adversarial.models.zoo import build_architecture


def _exported_resnet() -> bytes:
    torch.manual_seed(0)
    network = build_architecture("preact_resnet18", {}, (3, 32, 32), 10).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (torch.rand(2, 3, 32, 32),),
            buffer,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return buffer.getvalue()


def _median_step_seconds(
    module: torch.nn.Module, inputs: torch.Tensor, repeats: int, device: torch.device
) -> float:
    times = []
    for _ in range(repeats):
        x = inputs.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        module(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Print the load time and the guarded / unguarded forward-backward times."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    data = _exported_resnet()
    started = time.perf_counter()
    module = load_onnx(data, input_shape=(3, 32, 32)).to(device)
    print(f"load_onnx: {time.perf_counter() - started:.3f} s for {len(data) / 2**20:.1f} MB")
    inputs = torch.rand(args.batch, 3, 32, 32, device=device)
    _median_step_seconds(module, inputs, 3, device)  # warm-up
    guarded = _median_step_seconds(module, inputs, args.repeats, device)
    saved = dict(executor.GUARDS)
    executor.GUARDS.clear()
    try:
        unguarded = _median_step_seconds(module, inputs, args.repeats, device)
    finally:
        executor.GUARDS.update(saved)
    print(
        f"forward+backward at batch {args.batch} on {device}: guarded {guarded * 1000:.2f} ms, "
        f"unguarded {unguarded * 1000:.2f} ms, ratio {guarded / unguarded:.3f}"
    )


if __name__ == "__main__":
    main()
