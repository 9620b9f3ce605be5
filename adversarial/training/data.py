"""The examples a run trains and validates on, checked before any work starts."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from adversarial.errors import TrainingError

UNLABELED = -1


@dataclass(frozen=True)
class TrainingData:
    """Training and validation examples, inputs in ``input_range``.

    Attributes:
        inputs: ``[N, C, H, W]`` floating point, every value in ``input_range``.
        labels: ``[N]`` integer class indices; ``-1`` (:data:`UNLABELED`) marks an
            unlabeled example, which only methods without labels (VAT) accept.
        validation_inputs: ``[M, C, H, W]`` examples validated after every epoch, or None.
        validation_labels: ``[M]`` their labels (all labeled), or None.
        input_range: ``(low, high)`` of valid inputs; threat models keep inputs inside it.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    validation_inputs: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None
    input_range: tuple[float, float] = (0.0, 1.0)

    @property
    def has_validation(self) -> bool:
        """Whether validation examples were given."""
        return self.validation_inputs is not None and self.validation_labels is not None

    def check(self, *, allow_unlabeled: bool) -> None:
        """Refuse data the loop cannot train on, with a clear message.

        Raises:
            TrainingError: ``bad_training_data`` (shapes, types, empty, out of range,
                non-finite), ``unlabeled_examples`` (label -1 for a method that needs
                labels).
        """
        low, high = self.input_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise _bad(f"input_range must be finite with low < high, got {self.input_range}.")
        _check_split("training", self.inputs, self.labels, self.input_range)
        if bool((self.labels < UNLABELED).any()):
            raise _bad("Training labels must be class indices >= 0, or -1 for unlabeled.")
        if not allow_unlabeled and bool((self.labels == UNLABELED).any()):
            raise TrainingError(
                "unlabeled_examples",
                "Some training labels are -1 (unlabeled); only the vat method trains on "
                "unlabeled examples.",
            )
        if (self.validation_inputs is None) != (self.validation_labels is None):
            raise _bad("Give both validation inputs and labels, or neither.")
        if self.validation_inputs is not None and self.validation_labels is not None:
            _check_split(
                "validation", self.validation_inputs, self.validation_labels, self.input_range
            )
            if bool((self.validation_labels < 0).any()):
                raise _bad("Validation labels must all be class indices >= 0.")
            if self.validation_inputs.shape[1:] != self.inputs.shape[1:]:
                raise _bad(
                    f"Validation inputs have shape {list(self.validation_inputs.shape[1:])}, "
                    f"training inputs {list(self.inputs.shape[1:])}."
                )

    def check_classes(self, num_classes: int) -> None:
        """Refuse labels the model's ``num_classes`` logits cannot score.

        Raises:
            TrainingError: ``labels_out_of_range``.
        """
        for name, labels in (("training", self.labels), ("validation", self.validation_labels)):
            if labels is not None and labels.numel() and int(labels.max()) >= num_classes:
                raise TrainingError(
                    "labels_out_of_range",
                    f"A {name} label is {int(labels.max())}, but the model has "
                    f"{num_classes} classes.",
                )

    def summary(self) -> dict[str, Any]:
        """What a checkpoint records to recognize the data: sizes, shapes and a digest of
        the labels."""
        return {
            "examples": int(self.inputs.shape[0]),
            "input_shape": list(self.inputs.shape[1:]),
            "labels_sha256": hashlib.sha256(
                self.labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
            ).hexdigest(),
            "validation_examples": 0
            if self.validation_inputs is None
            else int(self.validation_inputs.shape[0]),
            "input_range": [float(self.input_range[0]), float(self.input_range[1])],
        }


def _bad(message: str) -> TrainingError:
    return TrainingError("bad_training_data", message)


def _check_split(
    name: str, inputs: torch.Tensor, labels: torch.Tensor, input_range: tuple[float, float]
) -> None:
    if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise _bad(f"The {name} inputs and labels must be tensors.")
    if inputs.dim() != 4 or not inputs.is_floating_point():
        raise _bad(
            f"The {name} inputs must be floating point [N, C, H, W], got {inputs.dtype} "
            f"{list(inputs.shape)}."
        )
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise _bad(f"The {name} labels must be int64 [N], got {labels.dtype} {list(labels.shape)}.")
    if inputs.shape[0] != labels.shape[0]:
        raise _bad(
            f"{inputs.shape[0]} {name} inputs but {labels.shape[0]} labels: they must match."
        )
    if inputs.shape[0] == 0:
        raise _bad(f"The {name} split is empty.")
    if not bool(torch.isfinite(inputs).all()):
        raise _bad(f"The {name} inputs contain NaN or infinite values.")
    low, high = input_range
    if float(inputs.min()) < low or float(inputs.max()) > high:
        raise _bad(
            f"The {name} inputs span [{float(inputs.min()):g}, {float(inputs.max()):g}], "
            f"outside the input range [{low:g}, {high:g}]."
        )
