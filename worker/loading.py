"""Turning stored rows into engine inputs: models, datasets and the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adversarial.datasets import load_builtin
from adversarial.models.loading import ModelSpec
from service.datasets.builtin import BUILTIN_PREFIX
from service.datasets.reader import DatasetLimits, read_dataset
from service.settings import Settings
from service.storage import ArtifactStore
from service.tables import Dataset, Model


def select_device(setting: str) -> torch.device:
    """``auto`` picks the GPU when there is one; anything else names a torch device."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def model_spec(row: Model) -> ModelSpec:
    """The engine's description of an uploaded model."""
    normalization = None
    if row.normalization:
        normalization = (tuple(row.normalization["mean"]), tuple(row.normalization["std"]))
    architecture = row.architecture or {}
    return ModelSpec(
        format=row.format,
        input_shape=(row.input_shape[0], row.input_shape[1], row.input_shape[2]),
        num_classes=row.num_classes,
        input_range=(row.input_range[0], row.input_range[1]),
        normalization=normalization,
        architecture=architecture.get("name"),
        architecture_kwargs=architecture.get("kwargs", {}),
    )


def load_examples(
    dataset_id: str,
    split: str,
    row: Dataset | None,
    store: ArtifactStore,
    settings: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset split as ``x`` float32 ``[N, C, H, W]`` and ``y`` int64 ``[N]``."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        return load_builtin(dataset_id.removeprefix(BUILTIN_PREFIX), split)
    if row is None:
        raise LookupError(f"dataset {dataset_id} is gone")
    with store.open(row.file_sha256) as handle:
        x, y = read_dataset(handle, row.format, DatasetLimits.from_settings(settings))
    return torch.from_numpy(x), torch.from_numpy(y)


def subset(
    x: torch.Tensor, y: torch.Tensor, limit: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """At most ``limit`` examples: a seeded random subset in original order, and its indices."""
    indices = np.arange(x.shape[0])
    if limit is not None and limit < x.shape[0]:
        indices = np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:limit])
    index = torch.from_numpy(indices)
    return x[index], y[index], indices


def write_examples(path: Path, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> Path:
    """Write a job's examples for a jail: an ``.npz`` of ``x`` (float32), ``y`` and ``ids``
    (int64: the examples' indices in their dataset, which key their random streams)."""
    with path.open("wb") as handle:
        np.savez(handle, x=x.float().numpy(), y=y.long().numpy(), ids=ids.long().numpy())
    return path
