"""What the engine offers clients: the attack presets and the engine's version.

The presets are defined once, in ``service.jobs.specs``; clients send a preset's name or
read this list, and never keep a copy of their own.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import PrincipalDep
from service.engine import engine_version, package_version
from service.jobs.specs import (
    DEFAULT_EPS,
    DEFAULT_PRESET,
    GATING_WARNINGS,
    INFORMATIONAL_WARNINGS,
    PRESETS,
    PresetInfo,
)

router = APIRouter(prefix="/v1", tags=["engine"])


class VersionRead(BaseModel):
    """Which server and engine answer: results record the engine version that made them."""

    version: str
    engine_version: str = Field(
        description="Package version + a digest of the engine's code and the attacks' "
        "defaults; a verdict is only replayed by the engine that made it."
    )


class WarningCodeRead(BaseModel):
    """A validity warning an audit can raise."""

    code: str
    description: str
    fails_gate: bool = Field(description="Whether it fails a gate unless the gate waives it.")


class PresetList(BaseModel):
    """The presets, the default one, and the default eps per norm."""

    items: list[PresetInfo]
    default: str
    default_eps: dict[str, list[float]]
    warnings: list[WarningCodeRead]
    engine_version: str


@router.get("/version")
def get_version(_principal: PrincipalDep) -> VersionRead:
    """The server's and the engine's versions."""
    return VersionRead(version=package_version(), engine_version=engine_version())


@router.get("/presets")
def list_presets(_principal: PrincipalDep) -> PresetList:
    """The attack presets an audit can name, and the validity warnings that gate it."""
    return PresetList(
        items=list(PRESETS.values()),
        default=DEFAULT_PRESET,
        default_eps=DEFAULT_EPS,
        warnings=[
            WarningCodeRead(code=code, description=what, fails_gate=True)
            for code, what in GATING_WARNINGS.items()
        ]
        + [
            WarningCodeRead(code=code, description=what, fails_gate=False)
            for code, what in INFORMATIONAL_WARNINGS.items()
        ],
        engine_version=engine_version(),
    )
