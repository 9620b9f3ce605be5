"""Small images for reports: arrays to PNG with numpy and zlib (no imaging library)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode ``uint8`` pixels, ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), as a PNG."""
    if pixels.dtype != np.uint8:
        raise ValueError("pixels must be uint8")
    if pixels.ndim == 2:
        color_type, rows = 0, pixels
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        color_type, rows = 2, pixels.reshape(pixels.shape[0], -1)
    else:
        raise ValueError(f"expected [H, W] or [H, W, 3], got {list(pixels.shape)}")
    height, width = pixels.shape[:2]
    # Filter type 0 (none) before every row.
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def to_pixels(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """A ``[C, H, W]`` input in ``[lower, upper]`` as displayable uint8 pixels."""
    scaled = np.clip((image - lower) / max(upper - lower, 1e-12), 0, 1)
    if scaled.shape[0] == 3:
        pixels = np.transpose(scaled, (1, 2, 0))
    else:
        pixels = scaled[0]
    return np.round(pixels * 255).astype(np.uint8)


def perturbation_pixels(delta: np.ndarray) -> np.ndarray:
    """A perturbation amplified to the full range around mid-grey (the panda figure)."""
    largest = float(np.abs(delta).max())
    return to_pixels(
        0.5 + 0.5 * delta / largest if largest > 0 else np.full_like(delta, 0.5), 0.0, 1.0
    )
