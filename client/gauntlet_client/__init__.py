"""The Gauntlet client: the ``gauntlet`` command and the Python SDK (``Gauntlet``).

It imports only the standard library and httpx, so a pipeline can run it without the
server's dependencies (no torch, no FastAPI, no database drivers).
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("gauntlet-client")
except metadata.PackageNotFoundError:  # run from a source folder that was never installed
    __version__ = "0.0.0+source"

from gauntlet_client.http import ApiError, GauntletError  # noqa: E402
from gauntlet_client.sdk import Audit, Gauntlet, Job, Model, Verdict  # noqa: E402

__all__ = ["ApiError", "Audit", "Gauntlet", "GauntletError", "Job", "Model", "Verdict"]
