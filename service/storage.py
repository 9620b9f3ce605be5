"""Content-addressed artifact storage: bytes are stored once under their SHA-256.

The interface is what an S3-compatible store would implement too (put a stream, open by
digest, check, delete); :class:`LocalArtifactStore` keeps the bytes in a folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

from service.settings import get_settings

_CHUNK = 1 << 20


class StoredObjectTooLarge(Exception):
    """The stream was longer than the caller's limit; nothing was stored."""


class ArtifactStore(ABC):
    """Stores immutable blobs addressed by their SHA-256 hex digest."""

    @abstractmethod
    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        """Store everything ``stream`` yields; return ``(sha256, size)``.

        Raises :class:`StoredObjectTooLarge` past ``max_bytes``, leaving nothing behind.
        """

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading; ``FileNotFoundError`` when absent."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob if present."""

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; return ``(sha256, size)``."""
        return self.put_stream(io.BytesIO(data))

    def read_bytes(self, sha256: str) -> bytes:
        """A stored blob's bytes."""
        with self.open(sha256) as handle:
            return handle.read()


class LocalArtifactStore(ArtifactStore):
    """Blobs as files ``<root>/ab/cdef...``, written to a temporary file then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:]

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        handle, temp_name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise StoredObjectTooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            target = self._path(sha256)
            target.parent.mkdir(exist_ok=True)
            # Same digest, same bytes: an existing blob is already right.
            os.replace(temp_name, target)
            return sha256, size
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)

    def open(self, sha256: str) -> BinaryIO:
        return self._path(sha256).open("rb")

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def local_path(self, sha256: str) -> Path:
        """The file holding a blob (local stores only)."""
        return self._path(sha256)

    def clear(self) -> None:
        """Remove every blob (tests)."""
        shutil.rmtree(self.root, ignore_errors=True)


def get_store() -> ArtifactStore:
    """The artifact store the settings describe."""
    settings = get_settings()
    assert settings.artifact_dir is not None
    return LocalArtifactStore(settings.artifact_dir)
