"""Loading untrusted model uploads as data, and checking them against their declared shapes.

Accepted formats (DESIGN.md, "Model formats"):

- ``safetensors``: a state_dict, loaded into a built-in architecture (data only).
- ``pt``: a ``torch.save`` zip of a state_dict; the zip is checked first
  (:func:`adversarial.models.archive.check_torch_zip`), then read with
  ``torch.load(..., weights_only=True)``, which refuses pickled code and whole modules.
- ``onnx``: any graph, converted by :mod:`adversarial.models.onnx`.
- ``torchscript`` (``torch.jit.save``) and ``pt2`` (``torch.export.save``): these carry code
  that runs when they are loaded or called, so they load only when the caller passes
  ``allow_code=True``, which only the jail's child process does (``worker.jail``: no
  credentials, no network, resource limits). Everywhere else they are refused.

Pickled whole models are refused with a message that says how to export a state_dict or
ONNX instead. Outside ``allow_code=True`` nothing here ever unpickles without
``weights_only=True``.
"""

from __future__ import annotations

import inspect
import io
import math
import pickle
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adversarial.errors import ModelFormatError
from adversarial.models.archive import EXPORT_ADVICE, ArchiveKind, check_torch_zip
from adversarial.models.wrapper import InputSpaceModel
from adversarial.models.zoo import ZooLimits, build_architecture

if TYPE_CHECKING:  # the ONNX package is imported only when an ONNX file is loaded
    from adversarial.models.onnx import OnnxLimits

DATA_FORMATS = ("safetensors", "pt", "onnx")
# Formats whose files carry code: loaded only with allow_code=True (inside the jail).
CODE_FORMATS = ("torchscript", "pt2")
MODEL_FORMATS = DATA_FORMATS + CODE_FORMATS
STATE_DICT_FORMATS = ("safetensors", "pt")
DEFAULT_MAX_BYTES = 512 * 2**20
# Declared sizes beyond these are refused before anything is built: C*H*W of one example
# (4,194,304 values: 16 MB of float32, e.g. 3x1182x1182) and the width of the logits (the API
# accepts at most 100,000 classes too).
MAX_INPUT_ELEMENTS = 2**22
MAX_NUM_CLASSES = 100_000

# Keys under which training scripts commonly nest the state_dict in a checkpoint.
_STATE_DICT_WRAPPER_KEYS = ("state_dict", "model_state_dict")
# How many keys a mismatch message names before summarizing the rest.
_KEYS_SHOWN = 8
_GLOBAL_PATTERN = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


@dataclass(frozen=True)
class ModelSpec:
    """What an upload claims to be: its format and the input/output it declares.

    Lists are accepted where tuples are documented (JSON gives lists) and stored as tuples.
    ``input_shape`` may hold at most :data:`MAX_INPUT_ELEMENTS` values and ``num_classes`` is
    at most :data:`MAX_NUM_CLASSES`: larger declarations are refused before anything is built.

    Attributes:
        format: ``"safetensors"``, ``"pt"``, ``"onnx"``, ``"torchscript"`` or ``"pt2"``.
        input_shape: ``(C, H, W)`` of one example.
        num_classes: width of the logits (at least 2).
        input_range: ``(low, high)`` bounds of valid inputs; attacks stay inside them.
        normalization: ``(mean, std)`` per channel (or one value for all), applied inside the
            wrapped model; None for a model that takes raw inputs.
        architecture: built-in architecture name; required for state_dict formats and
            refused for ONNX, TorchScript and pt2 (the file is the architecture).
        architecture_kwargs: keyword arguments for the architecture.
    """

    format: str
    input_shape: tuple[int, int, int]
    num_classes: int
    input_range: tuple[float, float] = (0.0, 1.0)
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    architecture: str | None = None
    architecture_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape
        ):
            raise ModelFormatError(
                "bad_input_shape",
                f"input_shape must be [C, H, W] with positive integers, got {self.input_shape!r}.",
            )
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ModelFormatError(
                "bad_input_shape",
                f"input_shape {list(shape)} has {math.prod(shape):,} values per example; at "
                f"most {MAX_INPUT_ELEMENTS:,} (C*H*W) are accepted.",
            )
        object.__setattr__(self, "input_shape", shape)
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or not 2 <= self.num_classes <= MAX_NUM_CLASSES
        ):
            raise ModelFormatError(
                "bad_num_classes",
                f"num_classes must be an integer from 2 to {MAX_NUM_CLASSES:,}, got "
                f"{self.num_classes!r}.",
            )
        try:
            low, high = (float(bound) for bound in self.input_range)
        except (TypeError, ValueError):
            low, high = math.nan, math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ModelFormatError(
                "bad_input_range",
                f"input_range must be [low, high] with finite low < high, got {self.input_range}.",
            )
        object.__setattr__(self, "input_range", (low, high))
        if self.normalization is not None:
            try:
                mean, std = (
                    tuple(float(value) for value in values) for values in self.normalization
                )
            except (TypeError, ValueError) as error:
                raise ModelFormatError(
                    "bad_normalization",
                    "normalization must be {mean: [...], std: [...]} with one number per channel.",
                ) from error
            object.__setattr__(self, "normalization", (mean, std))

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON object (for a job payload); :meth:`from_json` reads it back."""
        return {
            "format": self.format,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "input_range": list(self.input_range),
            "normalization": (
                None
                if self.normalization is None
                else {"mean": list(self.normalization[0]), "std": list(self.normalization[1])}
            ),
            "architecture": self.architecture,
            "architecture_kwargs": dict(self.architecture_kwargs),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ModelSpec:
        """A spec from :meth:`to_json`'s output.

        Raises:
            ModelFormatError: ``bad_spec`` for a document of the wrong shape, and the codes
                of the constructor's checks.
        """
        try:
            normalization = document.get("normalization")
            return cls(
                format=str(document["format"]),
                input_shape=tuple(document["input_shape"]),
                num_classes=document["num_classes"],
                input_range=tuple(document.get("input_range", (0.0, 1.0))),
                normalization=(
                    None
                    if normalization is None
                    else (tuple(normalization["mean"]), tuple(normalization["std"]))
                ),
                architecture=document.get("architecture"),
                architecture_kwargs=dict(document.get("architecture_kwargs") or {}),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ModelFormatError("bad_spec", f"A model spec is malformed: {error!r}") from error


def load_model(
    data: bytes,
    spec: ModelSpec,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    onnx_limits: OnnxLimits | None = None,
    zoo_limits: ZooLimits | None = None,
    allow_code: bool = False,
) -> InputSpaceModel:
    """Load an uploaded model and wrap it in its declared input space.

    ``onnx_limits`` and ``zoo_limits`` are the resource budgets of an ONNX graph and of a
    built-in architecture (their defaults when None).

    Returns the :class:`InputSpaceModel` in eval mode on the CPU. It has not run yet: call
    :func:`check_model` before trusting the declared shapes.

    Data formats (``safetensors``, ``pt``, ``onnx``) are read as data. ``torchscript`` and
    ``pt2`` run the file's code when loaded and called: they are refused unless
    ``allow_code`` is true, which only the jail's child process passes (``worker.jail``);
    nothing else may pass it. For ``onnx``, ``torchscript`` and ``pt2`` an
    ``architecture`` is refused (``architecture_not_applicable``) rather than ignored, so a
    user who thinks it matters learns that it does not.

    Raises:
        ModelFormatError: ``too_large``, ``unknown_format``, ``architecture_required``,
            ``architecture_not_applicable``, ``safetensors_invalid``, ``not_a_state_dict``,
            ``state_dict_mismatch``, ``pickled_model_refused``, ``pickle_refused``,
            ``pt_invalid``, ``torchscript_refused`` and ``pt2_refused`` (a code format
            without ``allow_code``), ``torchscript_invalid``, ``pt2_invalid``, any code of
            :func:`check_torch_zip` and of :func:`adversarial.models.zoo.build_architecture`,
            and those of ``load_onnx``.
        ModelTooLargeError: ``model_too_large``, from the zoo's or the ONNX loader's budgets.
    """
    if len(data) > max_bytes:
        raise ModelFormatError(
            "too_large", f"The model file is {len(data)} bytes; the limit is {max_bytes}."
        )
    if spec.format not in MODEL_FORMATS:
        raise ModelFormatError(
            "unknown_format",
            f"Unknown model format {spec.format!r}; accepted: {', '.join(MODEL_FORMATS)}.",
        )
    network: nn.Module
    if spec.format == "onnx":
        network = _load_onnx(data, spec, max_bytes=max_bytes, limits=onnx_limits)
    elif spec.format in CODE_FORMATS:
        network = _load_code_format(data, spec, max_bytes=max_bytes, allow_code=allow_code)
    else:
        if spec.architecture is None:
            raise ModelFormatError(
                "architecture_required",
                f"A {spec.format} file holds weights only; name the built-in architecture "
                "they belong to (GET /v1/architectures lists them).",
            )
        if spec.format == "safetensors":
            state_dict = _read_safetensors(data)
        else:
            state_dict = _read_torch_state_dict(data, max_bytes=max_bytes)
        network = build_architecture(
            spec.architecture,
            spec.architecture_kwargs,
            spec.input_shape,
            spec.num_classes,
            limits=zoo_limits,
        )
        _load_state_dict(network, state_dict, spec.architecture)
    model = InputSpaceModel(
        network,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        input_range=spec.input_range,
        normalization=spec.normalization,
    )
    return model.to("cpu").eval()


def check_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    seed: int = 0,
) -> None:
    """Run real forward passes (one example, then ``batch_size``) and check the output
    against the declared spec.

    A batch is seeded uniform samples inside ``spec.input_range`` with
    shape ``spec.input_shape``, created on ``device`` (where ``model`` must already be).
    The model runs in eval mode without gradients; its train/eval mode is restored.

    Raises:
        ModelFormatError: ``forward_failed`` (the forward raised; its message is included),
            ``bad_output_shape`` (not a tensor ``[batch_size, num_classes]``),
            ``bad_output_dtype`` (not floating-point logits) or ``non_finite_output``.
    """
    # One example first: a model that blows up does so on the smallest batch it can, and a
    # second, larger batch shows the batch dimension really is free.
    for size in sorted({1, batch_size}):
        _check_forward(model, spec, device=device, batch_size=size, seed=seed)


def _check_forward(
    model: nn.Module, spec: ModelSpec, *, device: torch.device | str, batch_size: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    low, high = spec.input_range
    inputs = low + (high - low) * torch.rand((batch_size, *spec.input_shape), generator=generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(inputs.to(device))
    except Exception as error:  # any failure of user code is a verdict on it
        raise ModelFormatError(
            "forward_failed",
            f"A forward pass on a batch of shape {[batch_size, *spec.input_shape]} failed: "
            f"{type(error).__name__}: {_shortened(str(error))}",
        ) from error
    finally:
        model.train(was_training)
    expected = [batch_size, spec.num_classes]
    if not isinstance(outputs, torch.Tensor):
        raise ModelFormatError(
            "bad_output_shape",
            f"The model returned {type(outputs).__name__}, expected a tensor of shape {expected}.",
        )
    if list(outputs.shape) != expected:
        raise ModelFormatError(
            "bad_output_shape",
            f"The model returned shape {list(outputs.shape)} for {batch_size} inputs, expected "
            f"{expected} ([batch, num_classes] with num_classes={spec.num_classes}).",
        )
    if not outputs.is_floating_point():
        raise ModelFormatError(
            "bad_output_dtype",
            f"The model returned {outputs.dtype} values; expected floating-point logits.",
        )
    if not bool(torch.isfinite(outputs).all()):
        raise ModelFormatError(
            "non_finite_output", "The model returned NaN or infinite values for valid inputs."
        )


def _load_onnx(
    data: bytes, spec: ModelSpec, *, max_bytes: int, limits: OnnxLimits | None
) -> nn.Module:
    if spec.architecture is not None:
        raise ModelFormatError(
            "architecture_not_applicable",
            "An ONNX file carries its own graph; leave out the architecture.",
        )
    # Imported here so the state_dict formats work without the ONNX converter.
    from adversarial.models.onnx import load_onnx

    return load_onnx(data, max_bytes=max_bytes, limits=limits, input_shape=spec.input_shape)


class ExportedProgramModule(nn.Module):
    """A ``torch.export`` program as an ``nn.Module`` that attacks can put in eval mode.

    An exported program's train/eval behaviour (dropout, batch norm) was fixed when it was
    exported, and its module refuses ``train()`` and ``eval()``; here they only set the
    flag, so wrappers that switch modes (every attack does) work. Gradients flow through
    the graph as through any module.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The program's output for ``inputs``."""
        outputs: torch.Tensor = self.graph(inputs)
        return outputs

    def train(self, mode: bool = True) -> ExportedProgramModule:
        """Record the mode without passing it to the exported graph (which refuses it)."""
        self.training = mode
        return self


def _load_code_format(
    data: bytes, spec: ModelSpec, *, max_bytes: int, allow_code: bool
) -> nn.Module:
    """TorchScript or a ``torch.export`` package: only with ``allow_code`` (in the jail)."""
    label = "TorchScript" if spec.format == "torchscript" else "A torch.export .pt2 package"
    if not allow_code:
        raise ModelFormatError(
            f"{spec.format}_refused",
            f"{label} carries code that runs when it is loaded; it is only loaded inside the "
            "sandboxed jail, never here. " + EXPORT_ADVICE,
        )
    if spec.architecture is not None:
        raise ModelFormatError(
            "architecture_not_applicable",
            f"{label} file carries its own architecture; leave out the architecture.",
        )
    # The structure checks of every torch archive still apply (stored entries, sane names,
    # a bounded total), and the archive must be the kind the upload declared.
    kind: ArchiveKind = "torchscript" if spec.format == "torchscript" else "pt2"
    check_torch_zip(data, max_total_bytes=max_bytes, expected=kind)
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates TorchScript; uploads of it are still accepted.
            warnings.simplefilter("ignore", DeprecationWarning)
            if spec.format == "torchscript":
                network: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
                    io.BytesIO(data), map_location="cpu"
                )
            else:
                program = torch.export.load(io.BytesIO(data))
                network = ExportedProgramModule(program.module())
    except MemoryError:
        raise
    except Exception as error:  # any failure of the file's loader is a verdict on the file
        raise ModelFormatError(
            f"{spec.format}_invalid",
            f"torch could not load the {label.removeprefix('A ')}: {type(error).__name__}: "
            f"{_shortened(str(error))}",
        ) from error
    return network


def _read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as parse_safetensors

    try:
        return dict(parse_safetensors(data))
    except Exception as error:  # the parser's error types vary by version
        raise ModelFormatError(
            "safetensors_invalid",
            f"The file is not a valid safetensors file: {_shortened(str(error))}",
        ) from error


def _read_torch_state_dict(data: bytes, *, max_bytes: int) -> dict[str, torch.Tensor]:
    check_torch_zip(data, max_total_bytes=max_bytes)
    try:
        # weights_only=True is the security boundary: it only rebuilds tensors and plain
        # containers. mmap=False because a global torch config could turn mmap on.
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        raise _refusal(str(error)) from error
    except Exception as error:  # torch raises many types for a broken file
        raise ModelFormatError(
            "pt_invalid", f"torch could not read the file: {_shortened(str(error))}"
        ) from error
    return _as_state_dict(loaded)


def _refusal(message: str) -> ModelFormatError:
    """Turn torch's weights-only refusal into a pickled-model or pickle refusal."""
    match = _GLOBAL_PATTERN.search(message)
    if match is None:
        return ModelFormatError(
            "pickle_refused",
            "The file holds pickled Python objects beyond tensors and plain containers, "
            "which are not loaded. " + EXPORT_ADVICE,
        )
    dotted_name = match.group(1)
    if _names_model_class(dotted_name):
        return ModelFormatError(
            "pickled_model_refused",
            f"The file is a pickled whole model (it holds a {dotted_name} object, as "
            "torch.save(model) writes); pickled whole models carry code and are not loaded. "
            + EXPORT_ADVICE,
        )
    return ModelFormatError(
        "pickle_refused",
        f"The file holds a pickled Python object ({dotted_name}); only tensors and plain "
        "containers are loaded. " + EXPORT_ADVICE,
    )


def _names_model_class(dotted_name: str) -> bool:
    """Whether a pickled global is a model class (an nn.Module or a user's own class).

    Never imports anything: importing a module named by an upload would run its code. A
    name in an already imported module is looked up statically; a name we cannot resolve
    (the uploader's own code) counts as a class when it is capitalised, as classes are.
    """
    parts = dotted_name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        value: Any = module
        try:
            for attribute in parts[split:]:
                value = inspect.getattr_static(value, attribute)
        except AttributeError:
            break
        return isinstance(value, type) and issubclass(value, nn.Module)
    return parts[0] != "torch" and parts[-1][:1].isupper()


def _as_state_dict(loaded: object) -> dict[str, torch.Tensor]:
    """A flat ``str -> Tensor`` mapping, unwrapping ``{"state_dict": ...}`` checkpoints."""
    if isinstance(loaded, Mapping) and not _is_flat_state_dict(loaded):
        for key in _STATE_DICT_WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not _is_flat_state_dict(loaded):
        raise ModelFormatError(
            "not_a_state_dict",
            "The file does not hold a state_dict (a flat mapping of parameter names to "
            f"tensors), nor one under {' or '.join(map(repr, _STATE_DICT_WRAPPER_KEYS))}. "
            + EXPORT_ADVICE,
        )
    state_dict = dict(loaded)
    # DataParallel / DistributedDataParallel prefix every key; the weights are the same.
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _is_flat_state_dict(candidate: Mapping[Any, Any]) -> bool:
    return bool(candidate) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in candidate.items()
    )


def _load_state_dict(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], architecture: str
) -> None:
    """``load_state_dict(strict=True)`` with a short, readable mismatch message."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: file {list(state_dict[key].shape)}, model {list(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} ({len(items)}): {_listed(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise ModelFormatError(
            "state_dict_mismatch",
            f"The weights do not fit architecture {architecture!r} with these kwargs and "
            f"shapes: {'; '.join(problems)}.",
        )
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ModelFormatError(
            "state_dict_mismatch",
            f"The weights do not fit architecture {architecture!r}: {_shortened(str(error))}",
        ) from error


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_KEYS_SHOWN])
    hidden = len(items) - _KEYS_SHOWN
    return shown + (f" and {hidden} more" if hidden > 0 else "")


def _shortened(message: str, limit: int = 500) -> str:
    """One line of at most about ``limit`` characters: its start and its end, where
    TorchScript and torch.export put the actual error after their traceback."""
    message = " ".join(message.split())
    if len(message) <= limit:
        return message
    head = limit // 3
    return message[:head] + " ... " + message[-(limit - head - 5) :]
