"""The transfer job's spec: adversarial examples crafted on sources, scored on targets.

Pure pydantic, like the audit spec. A source is one model or an ensemble (a list of model
ids whose logits are averaged); every target is scored against every source at every eps.
The parts (``transfer_craft``: one source at one eps; ``transfer_score``: one target against
every crafted set) are internal kinds the transfer job makes itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.jobs.specs import Norm, same_eps

ModelId = Annotated[str, Field(min_length=1, max_length=80)]
Ensemble = Annotated[list[ModelId], Field(min_length=1, max_length=8)]
TransferEps = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
TRANSFER_ATTACKS = ("fgsm", "pgd", "mifgsm")
# Transfer studies run every step: stopping at the first iterate that fools the source
# makes weaker transfer examples (adversarial.transfer.craft).
DEFAULT_STEPS = 10


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransferAttack(_Strict):
    """The white-box attack run on every source (one craft per eps)."""

    name: Literal["fgsm", "pgd", "mifgsm"] = "pgd"
    norm: Norm = "linf"
    eps: TransferEps | list[TransferEps] = Field(
        0.1, description="One radius, or several (a curve: one craft per source and eps)."
    )
    steps: int | None = Field(
        None, ge=1, le=1000, description="pgd and mifgsm (default 10); fgsm is one step."
    )
    step_size: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Default: the attack's (from eps, steps)."
    )
    early_stop: bool = Field(
        False,
        description="Stop an example at the first iterate that fools the source (weaker "
        "transfer); false runs every step, as transfer studies do.",
    )

    def radii(self) -> list[float]:
        """The eps values, in the order given."""
        return [float(self.eps)] if isinstance(self.eps, float | int) else list(self.eps)

    def resolved_steps(self) -> int | None:
        """The iterations (``None`` for fgsm)."""
        return None if self.name == "fgsm" else (self.steps or DEFAULT_STEPS)

    def params(self) -> dict[str, Any]:
        """Keyword arguments of the engine's attack (part of the crafted key: as resolved)."""
        if self.name == "fgsm":
            return {}
        params: dict[str, Any] = {"steps": self.resolved_steps(), "early_stop": self.early_stop}
        if self.step_size is not None:
            params["step_size"] = self.step_size
        return params

    def gradient_cost(self) -> int:
        """Gradient evaluations per example, source member and eps."""
        return self.resolved_steps() or 1

    @field_validator("eps")
    @classmethod
    def _distinct(cls, eps: float | list[float]) -> float | list[float]:
        if isinstance(eps, list):
            if not 1 <= len(eps) <= 16:
                raise ValueError("give 1 to 16 eps values")
            for index, value in enumerate(eps):
                if any(same_eps(value, other) for other in eps[:index]):
                    raise ValueError(f"eps {value:g} is listed twice")
        return eps

    @model_validator(mode="after")
    def _fgsm_has_no_steps(self) -> TransferAttack:
        if self.name == "fgsm" and (self.steps is not None or self.step_size is not None):
            raise ValueError("fgsm is one step of size eps: leave out steps and step_size")
        return self


class TransferSpec(_Strict):
    """Craft adversarial examples on each source and measure how they fool each target."""

    kind: Literal["transfer"]
    sources: list[ModelId | Ensemble] = Field(
        min_length=1,
        max_length=8,
        description="Each a model id, or a list of ids: an ensemble (their logits averaged).",
    )
    targets: list[ModelId] = Field(
        min_length=1, max_length=16, description="Models to score; black boxes included."
    )
    dataset_id: str = Field("builtin:digits", min_length=1, max_length=80)
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(
        None, ge=1, description="At most this many examples (a seeded random subset)."
    )
    attack: TransferAttack = Field(default_factory=TransferAttack)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    batch_size: int | None = Field(None, ge=1, le=65_536)

    def source_members(self) -> list[list[str]]:
        """Every source as its list of model ids (one for a single model)."""
        return [[source] if isinstance(source, str) else list(source) for source in self.sources]

    def named_models(self) -> list[tuple[str, str]]:
        """``(field, model id)`` for every model the job names, sources first."""
        fields = []
        for index, source in enumerate(self.sources):
            if isinstance(source, str):
                fields.append((f"sources[{index}]", source))
            else:
                fields += [(f"sources[{index}][{i}]", m) for i, m in enumerate(source)]
        fields += [(f"targets[{index}]", target) for index, target in enumerate(self.targets)]
        return fields

    def gradient_evaluations(self, num_examples: int) -> int:
        """Planned gradient evaluations: every example, source member and eps."""
        members = sum(len(source) for source in self.source_members())
        return num_examples * members * len(self.attack.radii()) * self.attack.gradient_cost()

    def result_cells(self) -> int:
        """Cells of the matrix: sources x targets x eps."""
        return len(self.sources) * len(self.targets) * len(self.attack.radii())

    @field_validator("sources")
    @classmethod
    def _distinct_sources(cls, sources: list[str | list[str]]) -> list[str | list[str]]:
        seen: dict[tuple[str, ...], int] = {}
        for index, source in enumerate(sources):
            members = [source] if isinstance(source, str) else list(source)
            if len(set(members)) != len(members):
                raise ValueError(f"sources[{index}]: an ensemble lists a model twice")
            key = tuple(members)
            if key in seen:
                raise ValueError(f"sources[{index}] repeats sources[{seen[key]}]")
            seen[key] = index
        return sources

    @field_validator("targets")
    @classmethod
    def _distinct_targets(cls, targets: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for index, target in enumerate(targets):
            if target in seen:
                raise ValueError(f"targets[{index}] repeats targets[{seen[target]}]")
            seen[target] = index
        return targets


class TransferCraftSpec(_Strict):
    """Internal: craft on one source at one eps, for every example of the transfer."""

    kind: Literal["transfer_craft"]
    transfer: TransferSpec
    source: int = Field(ge=0, description="Index into transfer.sources.")
    eps: float
    key: str = Field(description="The crafted set's key (adversarial.transfer.crafted_key).")


class CraftedRef(_Strict):
    """A crafted set a score part reads: which source and eps, its key and stored file, and
    what the source did on it."""

    source: int = Field(ge=0)
    eps: float
    key: str
    sha256: str
    size: int = Field(ge=0)
    examples: int = Field(ge=0)
    source_clean_accuracy: float
    source_success_rate: float | None
    reused: bool = Field(description="Stored by an earlier job under the same key.")


class TransferScoreSpec(_Strict):
    """Internal: score one target against every crafted set of the transfer."""

    kind: Literal["transfer_score"]
    transfer: TransferSpec
    target: int = Field(ge=0, description="Index into transfer.targets.")
    crafted: list[CraftedRef]
