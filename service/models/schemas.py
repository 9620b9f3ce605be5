"""HTTP shapes of models."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from service.architectures import ARCHITECTURES
from service.settings import get_settings
from service.tables import Model

ModelFormat = Literal["safetensors", "pt", "onnx", "torchscript", "pt2"]
# Files that are their own architecture (a graph or a program).
SELF_DESCRIBING_FORMATS = ("onnx", "torchscript", "pt2")


class Normalization(BaseModel):
    """Per-channel ``(x - mean) / std``, applied inside the model so eps is in input space."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float] = Field(min_length=1, max_length=64)
    std: list[float] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have the same length")
        if not all(math.isfinite(v) for v in self.mean + self.std):
            raise ValueError("mean and std must be finite")
        if any(v <= 0 for v in self.std):
            raise ValueError("std must be positive")
        return self


class ArchitectureRef(BaseModel):
    """A built-in architecture and its keyword arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> ArchitectureRef:
        known = ARCHITECTURES.get(self.name)
        if known is None:
            raise ValueError(
                f"unknown architecture {self.name!r}; GET /v1/architectures lists: "
                + ", ".join(sorted(ARCHITECTURES))
            )
        unknown = sorted(set(self.kwargs) - set(known.kwargs))
        if unknown:
            raise ValueError(f"{self.name} takes no argument(s) {', '.join(unknown)}")
        return self


def _limit(info: ValidationInfo, name: str) -> int:
    """A cap from the validation context (``{"max_input_values": ..., ...}``), else settings."""
    context = info.context if isinstance(info.context, dict) else {}
    value = context.get(name, getattr(get_settings(), name))
    return int(value)


class ModelMeta(BaseModel):
    """The ``meta`` part of a model upload.

    ``input_shape``'s C*H*W is capped by ``max_input_values`` and ``num_classes`` by
    ``max_num_classes`` (the validation context's values, else the settings'): a worker
    allocates batches of that size for every attack.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    format: ModelFormat
    input_shape: list[int] = Field(min_length=3, max_length=3, description="[C, H, W]")
    num_classes: int = Field(ge=2)
    input_range: tuple[float, float] = (0.0, 1.0)
    normalization: Normalization | None = None
    architecture: ArchitectureRef | None = None
    black_box: bool = Field(
        False,
        description="Treat this ONNX model as a black box: run in onnxruntime, queried but "
        "never differentiated (transfer targets, score-based attacks). Graphs in the "
        "ai.onnx.ml domain (scikit-learn via skl2onnx) are black boxes whatever this says.",
    )

    @field_validator("input_shape")
    @classmethod
    def _input_size(cls, value: list[int], info: ValidationInfo) -> list[int]:
        if any(d < 1 or d > 4096 for d in value):
            raise ValueError("input_shape dimensions must be between 1 and 4096")
        cap = _limit(info, "max_input_values")
        if math.prod(value) > cap:
            raise ValueError(f"C*H*W is {math.prod(value)}, over the cap of {cap} values per input")
        return value

    @field_validator("num_classes")
    @classmethod
    def _class_count(cls, value: int, info: ValidationInfo) -> int:
        cap = _limit(info, "max_num_classes")
        if value > cap:
            raise ValueError(f"at most {cap} classes")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelMeta:
        lower, upper = self.input_range
        if not (math.isfinite(lower) and math.isfinite(upper)) or lower >= upper:
            raise ValueError("input_range must be two finite numbers [lower, upper], lower < upper")
        if self.normalization and len(self.normalization.mean) not in (1, self.input_shape[0]):
            raise ValueError("normalization needs one mean/std per input channel (or one)")
        if self.format in ("safetensors", "pt") and self.architecture is None:
            raise ValueError(
                f"a {self.format} state_dict needs 'architecture' (GET /v1/architectures)"
            )
        if self.black_box and self.format != "onnx":
            raise ValueError("only an onnx model can be a black box (run in onnxruntime)")
        if self.format in SELF_DESCRIBING_FORMATS and self.architecture is not None:
            raise ValueError(
                f"a {self.format} file carries its own architecture: omit 'architecture'"
            )
        return self


class ModelError(BaseModel):
    """Why a model is invalid."""

    code: str
    message: str


class ModelRead(BaseModel):
    """An uploaded (or trained) model."""

    id: str
    name: str
    version: int = Field(
        description="1, 2, ... per name: uploading (or training) under an existing name makes "
        "its next version."
    )
    format: str
    input_shape: list[int]
    num_classes: int
    input_range: list[float]
    normalization: dict[str, Any] | None
    architecture: dict[str, Any] | None
    black_box: bool = Field(
        description="Queried but never differentiated (an ONNX graph run in onnxruntime): "
        "audits run score-based attacks only; a transfer target, never a source."
    )
    status: str = Field(description="validating | ready | invalid")
    error: ModelError | None
    file_size: int
    file_sha256: str
    validation_job_id: str | None
    source_job_id: str | None = Field(
        None, description="The training job that produced this model (null for uploads)."
    )
    parent_model_id: str | None = Field(
        None, description="The model it was fine-tuned from, if any."
    )
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Model) -> ModelRead:
        """Build from a table row."""
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            format=row.format,
            input_shape=row.input_shape,
            num_classes=row.num_classes,
            input_range=row.input_range,
            normalization=row.normalization,
            architecture=row.architecture,
            black_box=bool(row.black_box),
            status=row.status,
            error=ModelError(**row.error) if row.error else None,
            file_size=row.file_size,
            file_sha256=row.file_sha256,
            validation_job_id=row.validation_job_id,
            source_job_id=row.source_job_id,
            parent_model_id=row.parent_model_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ModelList(BaseModel):
    """A page of models, newest first."""

    items: list[ModelRead]
    next_cursor: str | None
