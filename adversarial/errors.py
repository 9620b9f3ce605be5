"""Errors the engine raises for bad user input (as opposed to bugs)."""

from __future__ import annotations


class EngineInputError(ValueError):
    """Bad user input found by the engine: a stable ``code`` and a plain message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModelFormatError(EngineInputError):
    """A model file that cannot be loaded safely or does not match its declared metadata."""


class DatasetError(EngineInputError):
    """A dataset that cannot be used as declared."""


class TrainingError(EngineInputError):
    """A training request that cannot run as given: bad configuration, data or checkpoint."""
