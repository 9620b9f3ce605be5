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


class EngineCheckError(RuntimeError):
    """The engine caught itself producing something it must not report (an adversarial
    example outside its ball, a non-finite input): a bug, never a number."""


class ModelTooLargeError(ModelFormatError):
    """A model that would exceed a resource budget (memory, compute, size) if it were run.

    The code is always ``model_too_large``; ``limit`` names the budget (a field of the limits
    dataclass that was exceeded, e.g. ``max_tensor_elements``), ``value`` is what the model
    needs and ``maximum`` what the budget allows, in the budget's unit.
    """

    def __init__(self, message: str, *, limit: str, value: int, maximum: int) -> None:
        super().__init__("model_too_large", message)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class TrainingError(EngineInputError):
    """A training request that cannot run as given: bad configuration, data or checkpoint."""
