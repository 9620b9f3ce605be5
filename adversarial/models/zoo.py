"""Built-in architectures that state_dict uploads (safetensors, ``.pt``) are loaded into.

A state_dict is data only; the code that gives it meaning comes from here, so users pick an
architecture by name and its keyword arguments. Module attribute names are part of the
contract: they are the state_dict keys users save, and must not change.

Kwargs are user input: before a network is built its parameter count and activation size are
computed from them analytically and checked against :class:`ZooLimits`, so that
``{"hidden": [35000, 35000]}`` is refused in microseconds instead of allocating 4.8 GB.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from adversarial.errors import ModelFormatError, ModelTooLargeError

InputShape = tuple[int, int, int]


@dataclass(frozen=True)
class ZooLimits:
    """How large a built-in architecture may be built; both fields are positive integers.

    Attributes:
        max_parameters: learnable parameters. 50 million is 200 MB of float32, more than any
            upload the default 256 MB cap lets through, four times PreAct ResNet-18.
        max_activation_elements_per_example: the outputs of every layer (convolutions,
            linear layers, activations, pooling, normalisation, residual sums) for one
            example: what a training step keeps for its backward pass. 8 million is 32 MB of
            float32: a small_cnn on 3x224x224 inputs needs 5.4M, PreAct ResNet-18 on CIFAR 2.0M.
    """

    max_parameters: int = 50_000_000
    max_activation_elements_per_example: int = 8_000_000

    def __post_init__(self) -> None:
        for name in ("max_parameters", "max_activation_elements_per_example"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ZooLimits.{name} must be a positive int, not {value!r}")


@dataclass(frozen=True)
class ArchitectureCost:
    """The size of a network, computed from its kwargs without building it."""

    parameters: int
    activation_elements_per_example: int


@dataclass(frozen=True)
class Architecture:
    """A named, buildable classifier architecture.

    Attributes:
        name: registry key, as users write it in ``architecture.name``.
        description: one line for ``GET /v1/architectures``.
        input_shapes: the supported ``(C, H, W)``; None means the builder accepts a family of
            shapes and checks them itself (see the description).
        kwargs: the keyword arguments the architecture takes, with their JSON defaults (read
            only; ``build`` copies what it uses).
        factory: ``factory(input_shape, num_classes, **kwargs)`` with all kwargs given,
            already checked by name; it checks their values.
        cost: ``cost(input_shape, num_classes, **kwargs)`` with the same arguments: the
            network's :class:`ArchitectureCost`, computed without building it (it checks the
            kwargs' values too).
    """

    name: str
    description: str
    input_shapes: tuple[InputShape, ...] | None
    kwargs: Mapping[str, Any]
    factory: Callable[..., nn.Module]
    cost: Callable[..., ArchitectureCost]

    def build(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        limits: ZooLimits | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        """Build a freshly initialised network for ``input_shape`` and ``num_classes``.

        Its size is checked against ``limits`` (default :class:`ZooLimits`) first.

        Raises:
            ModelFormatError: ``bad_architecture_kwargs`` for unknown or ill-typed kwargs,
                ``input_shape_mismatch`` for an unsupported input shape, ``bad_num_classes``.
            ModelTooLargeError: ``model_too_large`` when the parameters or the activations
                would exceed ``limits`` (the message names the kwargs that set the size).
        """
        shape, all_kwargs = self._checked(input_shape, num_classes, kwargs)
        self._check_size(shape, num_classes, all_kwargs, ZooLimits() if limits is None else limits)
        return self.factory(shape, num_classes, **all_kwargs)

    def size(self, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> ArchitectureCost:
        """The :class:`ArchitectureCost` of the network :meth:`build` would make, not building it.

        Raises:
            ModelFormatError: as :meth:`build`, for arguments it would refuse.
        """
        shape, all_kwargs = self._checked(input_shape, num_classes, kwargs)
        return self.cost(shape, num_classes, **all_kwargs)

    def _checked(
        self, input_shape: Sequence[int], num_classes: int, kwargs: Mapping[str, Any]
    ) -> tuple[InputShape, dict[str, Any]]:
        shape = _checked_shape(input_shape)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ModelFormatError(
                "bad_num_classes", f"num_classes must be a positive integer, got {num_classes!r}."
            )
        unknown = sorted(set(kwargs) - set(self.kwargs))
        if unknown:
            accepted = ", ".join(sorted(self.kwargs)) or "none"
            raise ModelFormatError(
                "bad_architecture_kwargs",
                f"Architecture {self.name!r} does not take {', '.join(map(repr, unknown))}; "
                f"accepted kwargs: {accepted}.",
            )
        if self.input_shapes is not None and shape not in self.input_shapes:
            supported = ", ".join(str(list(option)) for option in self.input_shapes)
            raise ModelFormatError(
                "input_shape_mismatch",
                f"Architecture {self.name!r} supports input shapes {supported}, not {list(shape)}.",
            )
        return shape, {**self.kwargs, **kwargs}

    def _check_size(
        self,
        shape: InputShape,
        num_classes: int,
        kwargs: dict[str, Any],
        limits: ZooLimits,
    ) -> None:
        cost = self.cost(shape, num_classes, **kwargs)
        settings = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        what = (
            f"Architecture {self.name!r}"
            + (f" with {settings}" if settings else "")
            + f" for input {list(shape)} and {num_classes} classes"
        )
        checks = (
            ("max_parameters", cost.parameters, "parameters"),
            (
                "max_activation_elements_per_example",
                cost.activation_elements_per_example,
                "activation elements per example",
            ),
        )
        for limit, value, unit in checks:
            maximum = getattr(limits, limit)
            if value > maximum:
                fields = ", ".join(kwargs) or "num_classes"
                raise ModelTooLargeError(
                    f"{what} would have {value:,} {unit}; the limit is {maximum:,} "
                    f"(ZooLimits.{limit}). Make {fields} smaller.",
                    limit=limit,
                    value=value,
                    maximum=maximum,
                )

    def describe(self) -> dict[str, Any]:
        """JSON-ready listing entry: name, description, input_shapes, kwargs defaults."""
        return {
            "name": self.name,
            "description": self.description,
            "input_shapes": None
            if self.input_shapes is None
            else [list(shape) for shape in self.input_shapes],
            "kwargs": copy.deepcopy(dict(self.kwargs)),
        }


def build_architecture(
    name: str,
    kwargs: Mapping[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    *,
    limits: ZooLimits | None = None,
) -> nn.Module:
    """Build the built-in architecture ``name`` with ``kwargs`` (defaults fill the rest).

    The network's size is checked against ``limits`` (default :class:`ZooLimits`) before it
    is built.

    Raises:
        ModelFormatError: ``unknown_architecture`` (the message lists the known ones),
            ``bad_architecture_kwargs``, ``input_shape_mismatch`` or ``bad_num_classes``.
        ModelTooLargeError: ``model_too_large`` (see :meth:`Architecture.build`).
    """
    architecture = ARCHITECTURES.get(name)
    if architecture is None:
        raise ModelFormatError(
            "unknown_architecture",
            f"Unknown architecture {name!r}; known architectures: {', '.join(ARCHITECTURES)}.",
        )
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise ModelFormatError(
            "bad_architecture_kwargs", "Architecture kwargs must be an object with string keys."
        )
    return architecture.build(input_shape, num_classes, limits=limits, **kwargs)


# --- mlp ---------------------------------------------------------------------------------


class MLP(nn.Module):
    """Flatten, then Linear + ReLU per hidden width, then a Linear to the logits.

    With no hidden layers it is multinomial logistic regression (the "shallow softmax" of
    Goodfellow et al. 2015). State_dict keys: ``layers.{0,2,4,...}.{weight,bias}``.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, hidden: Sequence[int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        widths = [channels * height * width, *hidden]
        layers: list[nn.Module] = []
        for in_features, out_features in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(in_features, out_features), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, C, H, W]``."""
        logits: torch.Tensor = self.layers(inputs.flatten(1))
        return logits


def _build_mlp(input_shape: InputShape, num_classes: int, *, hidden: Any) -> nn.Module:
    return MLP(input_shape, num_classes, _positive_ints("mlp", "hidden", hidden, allow_empty=True))


def _mlp_cost(input_shape: InputShape, num_classes: int, *, hidden: Any) -> ArchitectureCost:
    widths = [math.prod(input_shape), *_positive_ints("mlp", "hidden", hidden, allow_empty=True)]
    widths.append(num_classes)
    parameters = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    # Each hidden Linear and its ReLU, then the logits.
    return ArchitectureCost(parameters, 2 * sum(widths[1:-1]) + num_classes)


# --- small_cnn ---------------------------------------------------------------------------


_SMALL_CNN_HIDDEN = 128


class SmallCNN(nn.Module):
    """One conv 3x3 + ReLU + max-pool 2 block per ``channels`` entry, then Linear(128)-ReLU-Linear.

    Sized for 8x8 digits and 28x28 MNIST; it trains on the digits in seconds on a CPU.
    State_dict keys: ``features.{0,3,6,...}`` (convolutions), ``classifier.{0,2}``.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, channels: Sequence[int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * height * width, _SMALL_CNN_HIDDEN),
            nn.ReLU(),
            nn.Linear(_SMALL_CNN_HIDDEN, num_classes),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, C, H, W]``."""
        logits: torch.Tensor = self.classifier(self.features(inputs).flatten(1))
        return logits


def _build_small_cnn(input_shape: InputShape, num_classes: int, *, channels: Any) -> nn.Module:
    channels = _positive_ints("small_cnn", "channels", channels, allow_empty=False)
    _, height, width = input_shape
    # Each block halves H and W; the last block must still see at least one pixel.
    smallest = max(8, 2 ** len(channels))
    if min(height, width) < smallest:
        raise ModelFormatError(
            "input_shape_mismatch",
            f"small_cnn with {len(channels)} conv blocks needs H and W of at least {smallest}, "
            f"not {list(input_shape)}.",
        )
    return SmallCNN(input_shape, num_classes, channels)


def _small_cnn_cost(
    input_shape: InputShape, num_classes: int, *, channels: Any
) -> ArchitectureCost:
    in_channels, height, width = input_shape
    parameters = activations = 0
    for out_channels in _positive_ints("small_cnn", "channels", channels, allow_empty=False):
        parameters += in_channels * out_channels * 9 + out_channels
        # conv and ReLU at full size, then the pooled map.
        activations += 2 * out_channels * height * width
        in_channels, height, width = out_channels, height // 2, width // 2
        activations += in_channels * height * width
    features = in_channels * height * width
    parameters += features * _SMALL_CNN_HIDDEN + _SMALL_CNN_HIDDEN
    parameters += _SMALL_CNN_HIDDEN * num_classes + num_classes
    return ArchitectureCost(parameters, activations + 2 * _SMALL_CNN_HIDDEN + num_classes)


# --- lenet5 ------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with the usual modern choices: ReLU and max pooling.

    conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84, fc ``num_classes``. 28x28 inputs get
    padding 2 on the first convolution so both sizes reach the 16x5x5 feature map.
    State_dict keys: ``conv1``, ``conv2``, ``fc1``, ``fc2``, ``fc3``.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        in_channels, height, _ = input_shape
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2 if height == 28 else 0)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, C, H, W]``."""
        features = functional.max_pool2d(functional.relu(self.conv1(inputs)), 2)
        features = functional.max_pool2d(functional.relu(self.conv2(features)), 2)
        hidden = functional.relu(self.fc1(features.flatten(1)))
        logits: torch.Tensor = self.fc3(functional.relu(self.fc2(hidden)))
        return logits


def _build_lenet5(input_shape: InputShape, num_classes: int) -> nn.Module:
    return LeNet5(input_shape, num_classes)


def _lenet5_cost(input_shape: InputShape, num_classes: int) -> ArchitectureCost:
    # Both supported sizes reach a 6@28x28 first map (28x28 with padding 2, 32x32 without).
    parameters = input_shape[0] * 6 * 25 + 6 + 6 * 16 * 25 + 16
    parameters += 400 * 120 + 120 + 120 * 84 + 84 + 84 * num_classes + num_classes
    first = 6 * 28 * 28 * 2 + 6 * 14 * 14  # conv, ReLU, pool
    second = 16 * 10 * 10 * 2 + 16 * 5 * 5
    return ArchitectureCost(parameters, first + second + 2 * 120 + 2 * 84 + num_classes)


# --- preact_resnet18 ---------------------------------------------------------------------


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    BN-ReLU-conv twice; the projection shortcut (when the shape changes) takes the
    pre-activated input, as in the reference implementation.
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The block's output, same batch size, ``planes`` channels."""
        activated = functional.relu(self.bn1(inputs))
        shortcut: torch.Tensor = inputs if self.shortcut is None else self.shortcut(activated)
        out: torch.Tensor = self.conv1(activated)
        out = self.conv2(functional.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 for 32x32 images, as used by Wong et al. 2020 ("Fast is better than
    free") and Rice et al. 2020.

    State_dict keys follow locuslab/fast_adversarial (``conv1``, ``layer1``..``layer4`` of
    PreActBlocks with ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``shortcut.0``, then ``bn``
    and ``linear``), so its checkpoints load unchanged. Normalization goes in the wrapper.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for inputs ``[N, C, 32, 32]``."""
        out = self.conv1(inputs)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = functional.relu(self.bn(out))
        out = functional.avg_pool2d(out, 4)
        logits: torch.Tensor = self.linear(out.flatten(1))
        return logits


def _build_preact_resnet18(input_shape: InputShape, num_classes: int) -> nn.Module:
    return PreActResNet18(input_shape, num_classes)


def _preact_resnet18_cost(input_shape: InputShape, num_classes: int) -> ArchitectureCost:
    in_channels, height, width = input_shape
    parameters = in_channels * 64 * 9
    activations = 64 * height * width
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block_stride in (stride, 1):
            area_in = height * width
            height, width = -(-height // block_stride), -(-width // block_stride)
            area = height * width
            parameters += 2 * in_planes + in_planes * planes * 9 + 2 * planes + planes * planes * 9
            # bn1 and ReLU at the input size; conv1, bn2, ReLU, conv2 and the sum at the output.
            activations += 2 * in_planes * area_in + 5 * planes * area
            if block_stride != 1 or in_planes != planes:
                parameters += in_planes * planes
                activations += planes * area
            in_planes = planes
    parameters += 2 * 512 + 512 * num_classes + num_classes
    pooled = 512 * (height // 4) * (width // 4)
    return ArchitectureCost(
        parameters, activations + 2 * 512 * height * width + pooled + num_classes
    )


# --- helpers and registry ----------------------------------------------------------------


def _checked_shape(input_shape: Sequence[int]) -> InputShape:
    """``input_shape`` as a ``(C, H, W)`` tuple of positive ints, or an input_shape_mismatch."""
    values = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if len(values) != 3 or not all(
        isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in values
    ):
        raise ModelFormatError(
            "input_shape_mismatch",
            f"input_shape must be [C, H, W] with positive integers, got {input_shape!r}.",
        )
    return (values[0], values[1], values[2])


def _positive_ints(architecture: str, name: str, value: Any, *, allow_empty: bool) -> list[int]:
    """``value`` as a list of positive ints, or a bad_architecture_kwargs error."""
    if (
        not isinstance(value, (list, tuple))
        or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        or any(item < 1 for item in value)
        or (not value and not allow_empty)
    ):
        expected = "a list of positive integers" + ("" if allow_empty else " (not empty)")
        raise ModelFormatError(
            "bad_architecture_kwargs",
            f"{architecture}: {name} must be {expected}, got {value!r}.",
        )
    return list(value)


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(
            name="mlp",
            description="Fully connected network: flatten, Linear+ReLU per hidden width, "
            "Linear. hidden=[] is logistic regression. Any input shape.",
            input_shapes=None,
            kwargs=MappingProxyType({"hidden": [256, 128]}),
            factory=_build_mlp,
            cost=_mlp_cost,
        ),
        Architecture(
            name="small_cnn",
            description="Small CNN: per channel count a conv 3x3 + ReLU + max-pool 2 block, "
            "then Linear(128)+ReLU+Linear. Any C x H x W with H, W >= 8 "
            "(and >= 2**len(channels)), e.g. [1, 8, 8] digits or [1, 28, 28] MNIST.",
            input_shapes=None,
            kwargs=MappingProxyType({"channels": [32, 64]}),
            factory=_build_small_cnn,
            cost=_small_cnn_cost,
        ),
        Architecture(
            name="lenet5",
            description="LeNet-5 with ReLU and max pooling (conv 6@5x5, conv 16@5x5, "
            "fc 120, 84); padding 2 on the first conv for 28x28 inputs.",
            input_shapes=((1, 28, 28), (1, 32, 32), (3, 32, 32)),
            kwargs=MappingProxyType({}),
            factory=_build_lenet5,
            cost=_lenet5_cost,
        ),
        Architecture(
            name="preact_resnet18",
            description="PreAct ResNet-18 for CIFAR-sized images, as in Wong et al. 2020 "
            "(locuslab/fast_adversarial state_dict keys).",
            input_shapes=((3, 32, 32),),
            kwargs=MappingProxyType({}),
            factory=_build_preact_resnet18,
            cost=_preact_resnet18_cost,
        ),
    )
}
