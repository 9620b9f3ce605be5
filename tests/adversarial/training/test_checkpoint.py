"""Checkpoint bytes: safetensors plus JSON, read back exactly and without any unpickling."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
import torch
from safetensors.torch import load as load_safetensors

from adversarial.errors import TrainingError
from adversarial.training import (
    AdamConfig,
    Checkpoint,
    FastConfig,
    FreeConfig,
    SGDConfig,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
)
from tests.adversarial.training.common import EPS, run


def _equal_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(
        first[key].dtype == second[key].dtype and torch.equal(first[key], second[key])
        for key in first
    )


def _equal_optimizer(first: dict[str, Any], second: dict[str, Any]) -> bool:
    if (
        first["param_groups"] != second["param_groups"]
        or first["state"].keys() != second["state"].keys()
    ):
        return False
    for key, values in first["state"].items():
        other = second["state"][key]
        if values.keys() != other.keys():
            return False
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                if not torch.equal(value, other[name]):
                    return False
            elif value != other[name]:
                return False
    return True


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, Checkpoint]:
    _, free = run(
        FreeConfig(eps=EPS, replays=2), optimizer=SGDConfig(lr=0.05, nesterov=True), epochs=2
    )
    _, fast = run(FastConfig(eps=EPS), optimizer=AdamConfig(lr=3e-3), epochs=2)
    return {"free": free.checkpoint, "fast": fast.checkpoint}


@pytest.mark.parametrize("name", ["free", "fast"])
def test_round_trip_keeps_every_field(checkpoints: dict[str, Checkpoint], name: str) -> None:
    original = checkpoints[name]
    restored = checkpoint_from_bytes(checkpoint_to_bytes(original))
    assert restored.epochs_done == original.epochs_done
    assert restored.run == original.run
    assert _equal_tensors(restored.model_state, original.model_state)
    assert list(restored.model_state) == list(original.model_state)
    assert _equal_optimizer(restored.optimizer_state, original.optimizer_state)
    assert restored.updates == original.updates
    assert _equal_tensors(restored.rng_state, original.rng_state)
    assert _equal_tensors(restored.method_state, original.method_state)
    assert restored.records == original.records
    assert restored.best == original.best
    if original.best_weights is None:
        assert restored.best_weights is None
    else:
        assert restored.best_weights is not None
        assert _equal_tensors(restored.best_weights, original.best_weights)
    assert restored.stopped_early == original.stopped_early
    assert restored.weights_epoch == original.weights_epoch
    assert restored.warnings == original.warnings
    assert name != "free" or "perturbation" in restored.method_state
    assert name != "fast" or restored.best_weights is not None


def test_reading_never_unpickles(
    checkpoints: dict[str, Checkpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = checkpoint_to_bytes(checkpoints["fast"])

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a pickle loader was called")

    for module, name in (
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ):
        monkeypatch.setattr(module, name, refuse)
    restored = checkpoint_from_bytes(data)
    assert restored.epochs_done == checkpoints["fast"].epochs_done


def test_bytes_are_plain_safetensors_with_a_json_document(
    checkpoints: dict[str, Checkpoint],
) -> None:
    data = checkpoint_to_bytes(checkpoints["free"])
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    document = json.loads(header["__metadata__"]["gauntlet_checkpoint"])
    assert document["format"] == "gauntlet-training-checkpoint"
    tensors = load_safetensors(data)
    prefixes = {name.split("/", 1)[0] for name in tensors}
    assert prefixes <= {"model", "optimizer", "rng", "method", "best"}
    # The optimizer's momentum buffers are tensors; its hyperparameters live in the JSON.
    assert any(name.startswith("optimizer/") for name in tensors)
    assert document["optimizer"]["param_groups"][0]["nesterov"] is True


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a checkpoint at all",
        (10**9).to_bytes(8, "little") + b"{}",
        (2).to_bytes(8, "little") + b"{}",
    ],
)
def test_garbage_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(TrainingError) as error:
        checkpoint_from_bytes(data)
    assert error.value.code == "bad_checkpoint"


def test_truncated_and_foreign_files_are_refused(checkpoints: dict[str, Checkpoint]) -> None:
    data = checkpoint_to_bytes(checkpoints["free"])
    with pytest.raises(TrainingError) as truncated:
        checkpoint_from_bytes(data[: len(data) // 2])
    assert truncated.value.code == "bad_checkpoint"
    from safetensors.torch import save

    with pytest.raises(TrainingError) as foreign:
        checkpoint_from_bytes(save({"weight": torch.zeros(2)}))
    assert foreign.value.code == "bad_checkpoint"
