"""The built-in architecture zoo, as the API describes it.

The API process loads no torch, so this is a static description of
``adversarial.models.zoo``; a test fails when the two disagree.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import PrincipalDep


# The pydantic mypy plugin's __init__(**kwargs) clashes with the field named kwargs.
class ArchitectureRead(BaseModel):  # type: ignore[no-redef]
    """A built-in architecture that state_dict uploads (safetensors, pt) can name."""

    name: str
    description: str
    input_shapes: list[list[int]] | None = Field(
        description="Supported [C, H, W]; null means any shape."
    )
    kwargs: dict[str, Any] = Field(description="Keyword arguments and their defaults.")


ARCHITECTURES: dict[str, ArchitectureRead] = {
    a.name: a
    for a in [
        ArchitectureRead(
            name="mlp",
            description="Fully connected network: flatten, Linear+ReLU per hidden width, Linear. "
            "hidden=[] is logistic regression. Any input shape.",
            input_shapes=None,
            kwargs={"hidden": [256, 128]},
        ),
        ArchitectureRead(
            name="small_cnn",
            description="Small CNN: per channel count a conv 3x3 + ReLU + max-pool 2 block, then "
            "Linear(128)+ReLU+Linear. Any C x H x W with H, W >= 8 (and >= 2**len(channels)), "
            "e.g. [1, 8, 8] digits or [1, 28, 28] MNIST.",
            input_shapes=None,
            kwargs={"channels": [32, 64]},
        ),
        ArchitectureRead(
            name="lenet5",
            description="LeNet-5 with ReLU and max pooling (conv 6@5x5, conv 16@5x5, fc 120, 84); "
            "padding 2 on the first conv for 28x28 inputs.",
            input_shapes=[[1, 28, 28], [1, 32, 32], [3, 32, 32]],
            kwargs={},
        ),
        ArchitectureRead(
            name="preact_resnet18",
            description="PreAct ResNet-18 for CIFAR-sized images, as in Wong et al. 2020 "
            "(locuslab/fast_adversarial state_dict keys).",
            input_shapes=[[3, 32, 32]],
            kwargs={},
        ),
    ]
}

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("")
def list_architectures(_principal: PrincipalDep) -> list[ArchitectureRead]:
    """List the built-in architectures a state_dict upload can name."""
    return list(ARCHITECTURES.values())
