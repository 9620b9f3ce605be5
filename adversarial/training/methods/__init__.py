"""Training methods: strategies over the one training loop, selectable by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from adversarial.errors import TrainingError
from adversarial.training.methods.base import (
    AdversarialConfig,
    Method,
    MethodConfig,
    MethodContext,
    Updater,
)
from adversarial.training.methods.fast import FastConfig, FastTraining
from adversarial.training.methods.fgsm import FGSMConfig, FGSMTraining
from adversarial.training.methods.free import FreeConfig, FreeTraining
from adversarial.training.methods.natural import NaturalConfig, NaturalTraining
from adversarial.training.methods.pgd import PGDConfig, PGDTraining
from adversarial.training.methods.trades import TradesConfig, TradesTraining
from adversarial.training.methods.vat import VATConfig, VATTraining

AnyMethodConfig = (
    NaturalConfig | FGSMConfig | PGDConfig | FreeConfig | FastConfig | TradesConfig | VATConfig
)

# name -> (configuration class, method class)
METHODS: dict[str, tuple[type[MethodConfig], type[Method[Any]]]] = {
    "natural": (NaturalConfig, NaturalTraining),
    "fgsm": (FGSMConfig, FGSMTraining),
    "pgd": (PGDConfig, PGDTraining),
    "free": (FreeConfig, FreeTraining),
    "fast": (FastConfig, FastTraining),
    "trades": (TradesConfig, TradesTraining),
    "vat": (VATConfig, VATTraining),
}


def method_config(name: str, **params: Any) -> AnyMethodConfig:
    """The configuration of method ``name`` with keyword ``params`` (defaults fill the rest).

    Example: ``method_config("free", eps=0.1, replays=4)``.

    Raises:
        TrainingError: ``unknown_method`` (the message lists the known ones) or
            ``bad_training_config`` (an unknown or invalid parameter).
    """
    entry = METHODS.get(name)
    if entry is None:
        raise TrainingError(
            "unknown_method", f"Unknown training method {name!r}; known: {', '.join(METHODS)}."
        )
    config_class = entry[0]
    accepted = {field.name for field in fields(config_class)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TrainingError(
            "bad_training_config",
            f"Method {name!r} does not take {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted)) or 'nothing'}.",
        )
    try:
        config = config_class(**params)
    except TypeError as error:
        raise TrainingError("bad_training_config", f"Method {name!r}: {error}.") from None
    return config  # type: ignore[return-value]


def make_method(config: MethodConfig, context: MethodContext) -> Method[Any]:
    """The method object for ``config``, bound to the run's ``context``."""
    entry = METHODS.get(config.name)
    if entry is None or not isinstance(config, entry[0]):
        raise TrainingError("unknown_method", f"Unknown training method config {config!r}.")
    return entry[1](config, context)


__all__ = [
    "METHODS",
    "AdversarialConfig",
    "AnyMethodConfig",
    "FGSMConfig",
    "FGSMTraining",
    "FastConfig",
    "FastTraining",
    "FreeConfig",
    "FreeTraining",
    "Method",
    "MethodConfig",
    "MethodContext",
    "NaturalConfig",
    "NaturalTraining",
    "PGDConfig",
    "PGDTraining",
    "TradesConfig",
    "TradesTraining",
    "Updater",
    "VATConfig",
    "VATTraining",
    "make_method",
    "method_config",
]
