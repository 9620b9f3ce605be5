"""Train a small CNN on scikit-learn's digits and export it for Gauntlet.

    python examples/train_digits.py --out digits_cnn

writes ``digits_cnn.onnx`` (any architecture, as data), ``digits_cnn.safetensors`` (a
state_dict for the built-in ``small_cnn``) and the ``meta`` to upload with each
(``digits_cnn.meta.json``, ``digits_cnn.safetensors.meta.json``). It trains on the
fixed train split of ``builtin:digits``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from adversarial.datasets import load_builtin
from adversarial.models.zoo import build_architecture


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Plain training with Adam."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="digits_cnn", help="output path prefix")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_train, y_train = load_builtin("digits", "train")
    x_test, y_test = load_builtin("digits", "test")
    model = build_architecture("small_cnn", {}, (1, 8, 8), 10)
    train(model, x_train, y_train, args.epochs, args.seed)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()

    out = Path(args.out)
    meta = {
        "name": out.name,
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "input_range": [0.0, 1.0],
    }
    torch.onnx.export(
        model,
        (x_test[:1],),
        f"{out}.onnx",
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    Path(f"{out}.meta.json").write_text(json.dumps({**meta, "format": "onnx"}))
    save_file(model.state_dict(), f"{out}.safetensors")
    Path(f"{out}.safetensors.meta.json").write_text(
        json.dumps({**meta, "format": "safetensors", "architecture": {"name": "small_cnn"}})
    )
    print(f"test accuracy {accuracy:.3f}; wrote {out}.onnx, {out}.safetensors and meta files")  # noqa: T201


if __name__ == "__main__":
    main()
