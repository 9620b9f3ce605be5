"""Which parameters a run trains: all of them, the last layer, or an explicit list.

Frozen parameters get ``requires_grad = False`` (so no gradient is computed for them) and
are not given to the optimizer (so weight decay and momentum never touch them). A frozen
module that keeps running statistics (batch norm) is held in eval mode during training:
otherwise fine-tuning "only the last layer" would still change the frozen part's buffers.
Everything is undone by :meth:`TrainableSelection.restore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from adversarial.errors import TrainingError

Trainable = Literal["all", "last"] | Iterable[nn.Parameter]


def last_layer(model: nn.Module) -> nn.Module:
    """The module that ``trainable="last"`` trains.

    The last ``nn.Linear`` in registration order (``model.modules()``), which is the
    classifier head of every zoo architecture; without one, the last module that owns
    parameters directly.

    Raises:
        TrainingError: ``no_trainable_parameters`` when the model has no parameters.
    """
    modules = list(model.modules())
    for module in reversed(modules):
        if isinstance(module, nn.Linear):
            return module
    for module in reversed(modules):
        if any(True for _ in module.parameters(recurse=False)):
            return module
    raise TrainingError("no_trainable_parameters", "The model has no parameters to train.")


def _force_eval(module: nn.Module, _inputs: tuple[object, ...]) -> None:
    # A forward pre-hook: attacks and the loop call model.train(), which would switch a
    # frozen batch norm back to updating its running statistics.
    module.training = False


class TrainableSelection:
    """The trainable parameters of a run, with the model's previous state to restore."""

    def __init__(self, model: nn.Module, trainable: Trainable) -> None:
        named = list(model.named_parameters())
        chosen = self._choose(model, trainable, named)
        if not chosen:
            raise TrainingError("no_trainable_parameters", "No parameter would be trained.")
        chosen_ids = {id(parameter) for parameter in chosen}
        self.parameters: list[nn.Parameter] = [p for _, p in named if id(p) in chosen_ids]
        self.names: list[str] = [name for name, p in named if id(p) in chosen_ids]
        self.all_trainable = len(self.parameters) == len(named)
        self._saved_flags = [(parameter, parameter.requires_grad) for _, parameter in named]
        for _, parameter in named:
            parameter.requires_grad_(id(parameter) in chosen_ids)
        self._hooks: list[RemovableHandle] = []
        if not self.all_trainable:
            for module in model.modules():
                own = list(module.parameters(recurse=False))
                if any(True for _ in module.buffers(recurse=False)) and not any(
                    id(parameter) in chosen_ids for parameter in own
                ):
                    self._hooks.append(module.register_forward_pre_hook(_force_eval))

    @staticmethod
    def _choose(
        model: nn.Module, trainable: Trainable, named: list[tuple[str, nn.Parameter]]
    ) -> list[nn.Parameter]:
        if isinstance(trainable, str):
            if trainable == "all":
                return [parameter for _, parameter in named]
            if trainable == "last":
                return list(last_layer(model).parameters())
            raise TrainingError(
                "bad_training_config",
                f"trainable must be 'all', 'last' or a list of parameters, not {trainable!r}.",
            )
        owned = {id(parameter) for _, parameter in named}
        chosen = list(trainable)
        for parameter in chosen:
            if not isinstance(parameter, torch.Tensor) or id(parameter) not in owned:
                raise TrainingError(
                    "bad_training_config", "trainable lists a tensor that is not the model's."
                )
            if not parameter.is_floating_point():
                raise TrainingError(
                    "bad_training_config", "trainable lists a tensor that is not floating point."
                )
        return chosen

    def restore(self) -> None:
        """Put back every parameter's ``requires_grad`` and remove the eval-mode hooks."""
        for parameter, flag in self._saved_flags:
            parameter.requires_grad_(flag)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
