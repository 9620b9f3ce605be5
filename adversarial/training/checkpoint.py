"""Training checkpoints and their pickle-free serialization (safetensors + JSON).

A checkpoint is everything a run needs to continue exactly where it stopped: the model's
weights and buffers, the optimizer's state, the schedule's position, every random
stream's state, the method's carried state (Free-AT's perturbation), the records so far
and the best epoch (with its weights when the run may go back to them). ``train(...,
resume=checkpoint)`` then ends with the same weights and records, bit for bit on a CPU, as
a run that was never interrupted.

The byte format is one safetensors file: every tensor under a prefixed name (``model/``,
``optimizer/<param>/<key>``, ``rng/``, ``method/``, ``best/``) and, in the safetensors
metadata under ``"gauntlet_checkpoint"``, one JSON document with everything else (the
optimizer's non-tensor state and parameter groups included). Reading it never unpickles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from adversarial.errors import TrainingError
from adversarial.training.records import BestSoFar, EpochRecord, TrainingWarning

FORMAT = "gauntlet-training-checkpoint"
FORMAT_VERSION = 1
_METADATA_KEY = "gauntlet_checkpoint"
# The safetensors header is JSON with one entry per tensor; real checkpoints stay far
# below this, and a larger claim is a corrupt or hostile file.
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_PREFIXES = ("model", "optimizer", "rng", "method", "best")


@dataclass
class Checkpoint:
    """The complete state of a training run after ``epochs_done`` loop epochs.

    Attributes:
        epochs_done: loop epochs completed; a resume starts at this epoch.
        run: the run's settings (method, optimizer, schedule, epochs, batch size, seed,
            augmentation, validation, trainable parameters, data summary) as JSON; a
            resume with other settings is refused.
        model_state: the model's ``state_dict`` (weights and buffers).
        optimizer_state: the optimizer's ``state_dict``.
        updates: optimizer updates done: the schedule's whole state.
        rng_state: every random stream's state (see ``RandomStreams.state``).
        method_state: the method's carried tensors (Free-AT: ``perturbation``).
        records: the epoch records so far.
        best: the best epoch so far, by validation robust accuracy.
        best_weights: that epoch's ``state_dict``, kept when the run may restore it
            (a method that stops on catastrophic overfitting), else None.
        stopped_early: the run stopped on catastrophic overfitting.
        weights_epoch: the epoch whose weights ``model_state`` holds.
        warnings: the run's warnings so far.
    """

    epochs_done: int
    run: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    updates: int
    rng_state: dict[str, torch.Tensor]
    method_state: dict[str, torch.Tensor]
    records: list[EpochRecord]
    best: BestSoFar | None
    best_weights: dict[str, torch.Tensor] | None
    stopped_early: bool
    weights_epoch: int
    warnings: list[TrainingWarning]


def _bad(message: str) -> TrainingError:
    return TrainingError("bad_checkpoint", message)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors that share memory; a contiguous CPU copy never does.
    return tensor.detach().to("cpu", copy=True).contiguous()


def _json_value(value: object, where: str) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(f"{where} is not a finite number.")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, where) for item in value]
    raise _bad(f"{where} has a value of type {type(value).__name__}, which cannot be stored.")


def _flatten_optimizer(
    state_dict: Mapping[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Move the optimizer state's tensors into ``tensors``; return the JSON rest."""
    state_json: dict[str, dict[str, object]] = {}
    for parameter_id, parameter_state in state_dict["state"].items():
        values: dict[str, object] = {}
        for key, value in parameter_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{int(parameter_id)}/{key}"] = _cpu(value)
            else:
                values[key] = _json_value(value, f"optimizer state {key!r}")
        state_json[str(int(parameter_id))] = values
    groups = [
        {key: _json_value(value, f"optimizer group {key!r}") for key, value in group.items()}
        for group in state_dict["param_groups"]
    ]
    return {"state": state_json, "param_groups": groups}


def _unflatten_optimizer(
    document: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for parameter_id, values in document["state"].items():
        state[int(parameter_id)] = dict(values)
    for name, tensor in tensors.items():
        parameter_id, _, key = name.partition("/")
        if not parameter_id.isdigit() or not key:
            raise _bad(f"Bad optimizer tensor name {name!r}.")
        state.setdefault(int(parameter_id), {})[key] = tensor
    groups = []
    for group in document["param_groups"]:
        # JSON has no tuples; torch's groups hold tuples (Adam's betas) except "params".
        groups.append(
            {
                key: tuple(value) if isinstance(value, list) and key != "params" else value
                for key, value in group.items()
            }
        )
    return {"state": state, "param_groups": groups}


def checkpoint_to_bytes(checkpoint: Checkpoint) -> bytes:
    """Serialize ``checkpoint`` to safetensors bytes with a JSON metadata document.

    Raises:
        TrainingError: ``bad_checkpoint`` when a value cannot be stored (not a tensor,
            number, string, bool, None or list of them).
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.model_state.items():
        tensors[f"model/{key}"] = _cpu(value)
    for key, value in checkpoint.rng_state.items():
        tensors[f"rng/{key}"] = _cpu(value)
    for key, value in checkpoint.method_state.items():
        tensors[f"method/{key}"] = _cpu(value)
    if checkpoint.best_weights is not None:
        for key, value in checkpoint.best_weights.items():
            tensors[f"best/{key}"] = _cpu(value)
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "epochs_done": checkpoint.epochs_done,
        "run": checkpoint.run,
        "model_keys": list(checkpoint.model_state),
        "optimizer": _flatten_optimizer(checkpoint.optimizer_state, tensors),
        "updates": checkpoint.updates,
        "records": [record.to_dict() for record in checkpoint.records],
        "best": None
        if checkpoint.best is None
        else {"epoch": checkpoint.best.epoch, "metric": checkpoint.best.metric},
        "best_keys": None if checkpoint.best_weights is None else list(checkpoint.best_weights),
        "stopped_early": checkpoint.stopped_early,
        "weights_epoch": checkpoint.weights_epoch,
        "warnings": [warning.to_dict() for warning in checkpoint.warnings],
    }
    try:
        metadata = json.dumps(document, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise _bad(f"The checkpoint cannot be stored as JSON: {error}.") from None
    return save_safetensors(tensors, metadata={_METADATA_KEY: metadata})


def _read_metadata(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise _bad("The checkpoint is too short to be a safetensors file.")
    header_length = int.from_bytes(data[:8], "little")
    if header_length > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise _bad("The checkpoint's safetensors header is truncated or too large.")
    try:
        header = json.loads(data[8 : 8 + header_length])
        document = json.loads(header["__metadata__"][_METADATA_KEY])
    except (ValueError, KeyError, TypeError):
        raise _bad("The file is not a Gauntlet training checkpoint.") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _bad("The file is not a Gauntlet training checkpoint.")
    if document.get("version") != FORMAT_VERSION:
        raise _bad(f"Unsupported checkpoint version {document.get('version')!r}.")
    return document


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Read a checkpoint written by :func:`checkpoint_to_bytes` (no pickle involved).

    Raises:
        TrainingError: ``bad_checkpoint`` for anything that is not such a checkpoint.
    """
    document = _read_metadata(bytes(data))
    try:
        tensors = load_safetensors(bytes(data))
    except Exception as error:  # safetensors raises its own error types for bad files
        raise _bad(f"The checkpoint's tensors cannot be read: {error}.") from None
    groups: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in _PREFIXES}
    for name, tensor in tensors.items():
        prefix, _, key = name.partition("/")
        if prefix not in groups or not key:
            raise _bad(f"Unexpected tensor {name!r} in the checkpoint.")
        groups[prefix][key] = tensor
    try:
        model_state = {key: groups["model"][key] for key in document["model_keys"]}
        if len(model_state) != len(groups["model"]):
            raise _bad("The checkpoint has model tensors its metadata does not list.")
        best_keys = document["best_keys"]
        best_weights = (
            None if best_keys is None else {key: groups["best"][key] for key in best_keys}
        )
        best = document["best"]
        return Checkpoint(
            epochs_done=int(document["epochs_done"]),
            run=dict(document["run"]),
            model_state=model_state,
            optimizer_state=_unflatten_optimizer(document["optimizer"], groups["optimizer"]),
            updates=int(document["updates"]),
            rng_state=groups["rng"],
            method_state=groups["method"],
            records=[EpochRecord.from_dict(record) for record in document["records"]],
            best=None if best is None else BestSoFar(int(best["epoch"]), float(best["metric"])),
            best_weights=best_weights,
            stopped_early=bool(document["stopped_early"]),
            weights_epoch=int(document["weights_epoch"]),
            warnings=[TrainingWarning(**warning) for warning in document["warnings"]],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, TrainingError):
            raise
        raise _bad(f"The checkpoint's metadata is incomplete: {error!r}.") from None
