"""Reading uploaded datasets (``.npz`` or ``.safetensors`` holding ``x`` and ``y``) safely.

numpy only, no pickle: the API validates uploads with it and workers load them with it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

DATASET_FORMATS = ("npz", "safetensors")


class DatasetFileError(ValueError):
    """An uploaded dataset that cannot be used: ``field`` names the part, ``reason`` why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class DatasetSummary:
    """What validation learned about a dataset."""

    num_examples: int
    example_shape: list[int]
    num_classes: int
    value_range: list[float]


def detect_format(filename: str | None, head: bytes) -> str:
    """``npz`` (a zip) or ``safetensors`` (a little-endian header length, then JSON)."""
    if head.startswith(b"PK\x03\x04") or (filename or "").endswith(".npz"):
        return "npz"
    if (filename or "").endswith(".safetensors") or head[8:9] == b"{":
        return "safetensors"
    raise DatasetFileError("file", "expected an .npz or .safetensors file with arrays 'x' and 'y'")


def _read_npz(data: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DatasetFileError("file", "not a valid .npz (zip) file") from None
    # np.savez_compressed deflates, so compressed entries are fine; bound what they inflate to.
    total = sum(info.file_size for info in archive.infolist())
    if total > max_bytes:
        raise DatasetFileError("file", f"arrays inflate to {total} bytes, over the {max_bytes} cap")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files if name in ("x", "y")}
    except ValueError as exc:
        # allow_pickle=False refuses object arrays: they would need unpickling.
        raise DatasetFileError("file", f"unreadable arrays ({exc})") from None
    except Exception as exc:  # a corrupt member
        raise DatasetFileError("file", f"unreadable .npz ({type(exc).__name__})") from None


def _read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as exc:
        raise DatasetFileError("file", f"not a valid .safetensors file ({exc})") from None
    return {name: arrays[name] for name in ("x", "y") if name in arrays}


def read_dataset(data: bytes, fmt: str, *, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check a dataset file: ``x`` float32 ``[N, C, H, W]``, ``y`` int64 ``[N]``.

    ``x`` may be ``[N, H, W]`` (one channel is added). Raises :class:`DatasetFileError`.
    """
    arrays = _read_npz(data, max_bytes) if fmt == "npz" else _read_safetensors(data)
    for name in ("x", "y"):
        if name not in arrays:
            raise DatasetFileError(name, f"the file has no array named '{name}'")
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "fiu" or x.dtype.kind == "b":
        raise DatasetFileError("x", f"must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DatasetFileError("x", f"must be [N, C, H, W] or [N, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise DatasetFileError("x", "has no examples")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DatasetFileError("x", "contains NaN or infinite values")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DatasetFileError("y", f"must be [N] with N={x.shape[0]}, got shape {list(y.shape)}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise DatasetFileError("y", "labels must be whole numbers")
    elif y.dtype.kind not in "iu":
        raise DatasetFileError("y", f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise DatasetFileError("y", "labels must be >= 0")
    return x, y


def summarize(x: np.ndarray, y: np.ndarray) -> DatasetSummary:
    """Shape, class count (largest label + 1) and value range of checked arrays."""
    return DatasetSummary(
        num_examples=int(x.shape[0]),
        example_shape=[int(d) for d in x.shape[1:]],
        num_classes=int(y.max()) + 1,
        value_range=[float(x.min()), float(x.max())],
    )
