"""Result documents that workers write and the API serves, and the robustness gate.

Pure Python (no torch), so the gate's verdict can be tested and recomputed anywhere.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.jobs.specs import AuditSpec, Gate, same_eps


class ComponentResult(BaseModel):
    """One component of an ensemble attack."""

    name: str
    robust_accuracy: float
    seconds: float


class AttackResult(BaseModel):
    """One attack at one eps."""

    name: str
    norm: str
    eps: float
    params: dict[str, Any] = Field(default_factory=dict)
    robust_accuracy: float = Field(description="Fraction of all examples still correct.")
    success_rate: float | None = Field(
        description="Fraction of clean-correct examples the attack fooled."
    )
    mean_wrong_confidence: float | None = Field(
        description="Mean softmax confidence of the predicted class over misclassified examples."
    )
    mean_perturbation_norm: float | None = Field(
        description="Mean perturbation size (in this norm) over fooled examples."
    )
    max_perturbation_norm: float | None
    per_class_accuracy: list[float | None]
    confusion: list[list[int]] | None = Field(
        None, description="Counts [true class][adversarial prediction] (up to 100 classes)."
    )
    components: list[ComponentResult] = Field(
        default_factory=list,
        description="Ensembles: robust accuracy after each component, cumulative.",
    )
    seconds: float


class Curve(BaseModel):
    """Robust accuracy against eps for one attack (one entry of the spec)."""

    attack: str
    norm: str
    eps: list[float]
    robust_accuracy: list[float]


class NoiseResult(BaseModel):
    """Accuracy under random noise of the same size (sign noise for L-inf)."""

    norm: str
    eps: float
    accuracy: float


class WorstCaseResult(BaseModel):
    """Per-example worst case over every attack at one norm and eps."""

    norm: str
    eps: float
    attacks: list[str]
    robust_accuracy: float


class Warning_(BaseModel):
    """An evaluation validity flag."""

    code: str
    message: str


class GateCheck(BaseModel):
    """One gate condition and whether it held."""

    name: str
    metric: str
    threshold: float
    value: float | None = Field(description="The measured value; null if it was not measured.")
    passed: bool


class GateResult(BaseModel):
    """The gate's verdict: passed when every check passed."""

    passed: bool
    checks: list[GateCheck]


class ArtifactRef(BaseModel):
    """A file the job stored (GET /v1/jobs/{id}/artifacts/{name})."""

    name: str
    sha256: str
    size: int
    content_type: str


class AuditResult(BaseModel):
    """What an audit measured."""

    model_id: str
    dataset_id: str
    split: str
    num_examples: int
    seed: int
    device: str
    clean_accuracy: float
    per_class_clean_accuracy: list[float | None]
    attacks: list[AttackResult]
    curves: list[Curve] = Field(default_factory=list)
    worst_case: list[WorstCaseResult]
    noise_baseline: list[NoiseResult] = Field(default_factory=list)
    large_eps_accuracy: float | None = Field(
        None, description="Accuracy under PGD-20 at L-inf eps = half the input range."
    )
    warnings: list[Warning_] = Field(default_factory=list)
    gate: GateResult | None = None
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    seconds: float


def evaluate_gate(gate: Gate, clean_accuracy: float, attacks: list[AttackResult]) -> GateResult:
    """Check a gate against measured accuracies."""
    checks = []
    if gate.min_clean_accuracy is not None:
        checks.append(
            GateCheck(
                name="clean_accuracy",
                metric="clean_accuracy",
                threshold=gate.min_clean_accuracy,
                value=clean_accuracy,
                passed=clean_accuracy >= gate.min_clean_accuracy,
            )
        )
    for check in gate.min_robust_accuracy:
        matches = [
            attack
            for attack in attacks
            if attack.name == check.attack
            and (check.norm is None or attack.norm == check.norm)
            and same_eps(attack.eps, check.eps)
        ]
        # A spec's gate is validated against its attacks, so a missing match is a bug; a
        # gate must never pass on a number it could not find.
        value = min((m.robust_accuracy for m in matches), default=None)
        norm = matches[0].norm if matches else (check.norm or "?")
        checks.append(
            GateCheck(
                name=f"{check.attack}@{norm}:{check.eps:g}",
                metric="robust_accuracy",
                threshold=check.value,
                value=value,
                passed=value is not None and value >= check.value,
            )
        )
    return GateResult(passed=all(c.passed for c in checks), checks=checks)


def gate_for(
    spec: AuditSpec, clean_accuracy: float, attacks: list[AttackResult]
) -> GateResult | None:
    """The audit's gate verdict, or ``None`` when the spec has no gate."""
    if spec.gate is None:
        return None
    return evaluate_gate(spec.gate, clean_accuracy, attacks)
