"""The engine's identity: which code made a verdict.

A verdict must not outlive the engine that made it: an audit from before an attack was
fixed, or before a default changed, must not be replayed as today's pass. The engine
version is the package version plus a digest of every source file of the engine
(``adversarial/``) and of the job specs (``service/jobs/specs.py`` and
``service/jobs/train_specs.py``, where the attacks' and methods' defaults and the presets
live). Any change to them changes the digest. Every result
records it; request hashes and the client's derived Idempotency-Keys include it.

Computed by reading the files, not importing them: the API never imports torch.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_SOURCES = ("adversarial", "service/jobs/specs.py", "service/jobs/train_specs.py")


def package_version() -> str:
    """The installed distribution's version (``0.0.0+source`` when run from a bare tree)."""
    try:
        return metadata.version("gauntlet")
    except metadata.PackageNotFoundError:
        return "0.0.0+source"


def source_digest(root: Path = _ROOT) -> str:
    """SHA-256 over the engine's source files (path and bytes, in a stable order)."""
    digest = hashlib.sha256()
    for source in _SOURCES:
        path = root / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(file.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


@lru_cache
def engine_version() -> str:
    """``<package version>+<first 12 hex digits of the source digest>``."""
    return f"{package_version()}+{source_digest()[:12]}"
