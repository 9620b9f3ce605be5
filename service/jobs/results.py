"""Result documents that workers write and the API serves, and the robustness gate.

Pure Python (no torch), so the gate's verdict can be tested and recomputed anywhere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.jobs.specs import (
    GATING_WARNINGS,
    WORST_CASE,
    AuditSpec,
    Gate,
    Strength,
    at_point,
    check_matches,
)


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
    kind: Literal["clean", "robust", "worst_case", "validity", "corruption"] = Field(
        description="clean accuracy, one attack's robust accuracy, the per-example worst case "
        "over every attack at an eps, or a validity warning that must not fire."
    )
    metric: str
    threshold: float
    value: float | None = Field(description="The measured value; null if it was not measured.")
    passed: bool
    attack: str | None = Field(None, description="robust and worst_case checks.")
    norm: str | None = None
    eps: float | None = None
    worst_case: float | None = Field(
        None,
        description="For a check of one attack: the worst case over every attack at the same "
        "norm and eps, which no single attack's number should be read without.",
    )
    code: str | None = Field(None, description="validity checks: the warning code.")
    waived: bool = Field(False, description="validity checks: the gate allows this warning.")


class GateResult(BaseModel):
    """The gate's verdict: passed when every check passed."""

    passed: bool
    checks: list[GateCheck]
    waived: list[str] = Field(
        default_factory=list, description="Validity warnings that fired and the gate waived."
    )
    validity_checks: bool = Field(
        True, description="false: the audit ran without validity checks (allow_unchecked)."
    )


class Note(BaseModel):
    """Something every reader of the numbers must know that is not a validity warning."""

    code: str
    message: str


class ArtifactRef(BaseModel):
    """A file the job stored (GET /v1/jobs/{id}/artifacts/{name})."""

    name: str
    sha256: str
    size: int
    content_type: str


class ValidationResult(BaseModel):
    """What a model's validation found (the model's own status says the same)."""

    model_id: str
    valid: bool
    parameters: int | None = None
    device: str | None = None
    black_box: bool = Field(False, description="It runs in onnxruntime, never differentiated.")


class CorruptionAccuracy(BaseModel):
    """Accuracy under one natural corruption at one severity."""

    corruption: str
    severity: int
    parameter: float
    accuracy: float


class AuditShardResult(BaseModel):
    """One part of a sharded audit: its examples and the file its numbers are in."""

    start: int
    stop: int
    part: ArtifactRef
    seconds: float


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
    corruptions: list[CorruptionAccuracy] = Field(default_factory=list)
    corruption_accuracy: float | None = Field(
        None, description="Mean accuracy over the corruptions and severities, when run."
    )
    warnings: list[Warning_] = Field(default_factory=list)
    checks: bool = Field(True, description="Whether the validity checks ran.")
    attack_strength: Strength = Field(
        "strong",
        description="weak: only single-step or few-iteration attacks ran, so every robust "
        "accuracy is an upper bound at best.",
    )
    notes: list[Note] = Field(default_factory=list)
    gate: GateResult | None = None
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    engine_version: str = Field("", description="The engine that made these numbers.")
    batch_size: int | None = Field(
        None, description="Examples per batch at the start (halved on out-of-memory)."
    )
    final_batch_size: int | None = None
    shards: int | None = Field(None, description="The parts it ran in, when sharded.")
    seconds: float
    verification_seconds: float | None = Field(
        None,
        description="Time spent re-checking adversarial examples (ball, range, finiteness) "
        "and predicting them afresh.",
    )


def evaluate_gate(
    gate: Gate,
    clean_accuracy: float,
    attacks: list[AttackResult],
    worst_case: list[WorstCaseResult],
    warnings: list[Warning_],
    *,
    checks_ran: bool,
    corruption_accuracy: float | None = None,
) -> GateResult:
    """Check a gate against measured accuracies and the validity warnings."""
    checks = []
    if gate.min_clean_accuracy is not None:
        checks.append(
            GateCheck(
                name="clean_accuracy",
                kind="clean",
                metric="clean_accuracy",
                threshold=gate.min_clean_accuracy,
                value=clean_accuracy,
                passed=clean_accuracy >= gate.min_clean_accuracy,
            )
        )
    for check in gate.min_robust_accuracy:
        worst = [w for w in worst_case if at_point(check, w.norm, [w.eps])]
        if check.attack == WORST_CASE:
            value = min((w.robust_accuracy for w in worst), default=None)
            norm = worst[0].norm if worst else (check.norm or "?")
            beside = None
        else:
            matches = [a for a in attacks if check_matches(check, a.name, a.norm, [a.eps])]
            # The spec's gate is validated against its attacks, so a missing match is a bug;
            # a gate must never pass on a number it could not find.
            value = min((m.robust_accuracy for m in matches), default=None)
            norm = matches[0].norm if matches else (check.norm or "?")
            beside = min((w.robust_accuracy for w in worst if w.norm == norm), default=None)
        checks.append(
            GateCheck(
                name=check.label(norm),
                kind="worst_case" if check.attack == WORST_CASE else "robust",
                metric="robust_accuracy",
                threshold=check.value,
                value=value,
                passed=value is not None and value >= check.value,
                attack=check.attack,
                norm=norm,
                eps=check.eps,
                worst_case=beside,
            )
        )
    if gate.min_corruption_accuracy is not None:
        checks.append(
            GateCheck(
                name="corruption_accuracy",
                kind="corruption",
                metric="corruption_accuracy",
                threshold=gate.min_corruption_accuracy,
                value=corruption_accuracy,
                passed=corruption_accuracy is not None
                and corruption_accuracy >= gate.min_corruption_accuracy,
            )
        )
    fired = {warning.code for warning in warnings}
    waived = sorted(fired & set(gate.allow_warnings) & set(GATING_WARNINGS))
    if checks_ran:
        for code, what in GATING_WARNINGS.items():
            count = sum(warning.code == code for warning in warnings)
            checks.append(
                GateCheck(
                    name=f"validity:{code}",
                    kind="validity",
                    metric=f"no warning: {what}",
                    threshold=0.0,
                    value=float(count),
                    passed=count == 0 or code in gate.allow_warnings,
                    code=code,
                    waived=count > 0 and code in gate.allow_warnings,
                )
            )
    return GateResult(
        passed=all(c.passed for c in checks) and (checks_ran or gate.allow_unchecked),
        checks=checks,
        waived=waived,
        validity_checks=checks_ran,
    )


def gate_for(
    spec: AuditSpec,
    clean_accuracy: float,
    attacks: list[AttackResult],
    worst_case: list[WorstCaseResult],
    warnings: list[Warning_],
    corruption_accuracy: float | None = None,
) -> GateResult | None:
    """The audit's gate verdict, or ``None`` when the spec has no gate."""
    if spec.gate is None:
        return None
    return evaluate_gate(
        spec.gate,
        clean_accuracy,
        attacks,
        worst_case,
        warnings,
        checks_ran=spec.checks,
        corruption_accuracy=corruption_accuracy,
    )


def audit_notes(spec: AuditSpec, strength: Strength, gate: GateResult | None) -> list[Note]:
    """What the outputs must say beside the numbers: weak attacks, checks off, waivers."""
    notes = []
    if strength == "weak":
        notes.append(
            Note(
                code="weak_attacks",
                message="The numbers come from weak attacks (single steps or a few iterations, "
                "such as the quick preset): every robust accuracy is an upper bound, and a "
                "stronger attack (the autoattack preset) can find more.",
            )
        )
    if spec.black_box:
        notes.append(
            Note(
                code="black_box_model",
                message="The model is a black box (run in onnxruntime, never differentiated): "
                "only score-based attacks ran (Square; a preset keeps only those), and the "
                "gradient checks and the large-eps PGD check were skipped. Robust accuracy "
                "against gradient attacks on a differentiable copy could be lower.",
            )
        )
    if not spec.checks:
        notes.append(
            Note(
                code="checks_disabled",
                message="The validity checks were off ('checks': false): nothing here tells "
                "a robust model from one that masks its gradients.",
            )
        )
    for code in gate.waived if gate else []:
        notes.append(
            Note(
                code="warning_waived",
                message=f"The gate waived the validity warning {code!r} (allow_warnings): the "
                "numbers it casts doubt on still passed.",
            )
        )
    return notes


def sanitized(document: Any, path: str = "") -> tuple[Any, list[str]]:
    """``document`` with every NaN or infinite float replaced by ``None``, and where they
    were (JSON has no NaN; a NaN must never read as a number)."""
    if isinstance(document, float) and not math.isfinite(document):
        return None, [path or "."]
    if isinstance(document, dict):
        cleaned: dict[str, Any] = {}
        found: list[str] = []
        for key, value in document.items():
            cleaned[key], where = sanitized(value, f"{path}.{key}" if path else str(key))
            found += where
        return cleaned, found
    if isinstance(document, list):
        items, found = [], []
        for index, value in enumerate(document):
            item, where = sanitized(value, f"{path}[{index}]")
            items.append(item)
            found += where
        return items, found
    return document, []


class EpochResult(BaseModel):
    """One epoch of training, measured on the validation split."""

    epoch: int
    loss: float | None
    clean_accuracy: float | None
    robust_accuracy: float | None = Field(description="PGD accuracy on the validation split.")
    fgsm_accuracy: float | None = None
    lr: float
    seconds: float = Field(description="Training time (validation excluded).")
    validation_seconds: float = 0.0
    gradient_computations: int = Field(
        description="Forward-backward passes over examples: the cost figure that compares "
        "methods (natural training does one per example per epoch)."
    )


class ModelScores(BaseModel):
    """A model's accuracies on the validation split: what adversarial training buys and
    what it does not (robustness to attacks is not robustness to natural shifts)."""

    role: str = Field(description="trained, or parent (the model it was fine-tuned from).")
    model_id: str | None
    clean_accuracy: float
    corruption_accuracy: float | None = Field(
        description="Mean accuracy under Gaussian noise, blur, rotation and contrast."
    )
    robust_accuracy: float | None = Field(description="PGD-20 accuracy at the method's eps.")


class RegisteredModel(BaseModel):
    """The model a training job registered, as its row describes it."""

    format: str
    architecture: dict[str, Any] | None
    input_shape: list[int]
    num_classes: int
    input_range: list[float]
    normalization: dict[str, Any] | None
    file_sha256: str
    file_size: int


class TrainResult(BaseModel):
    """What a training job produced: the registered model and how it got there."""

    model_id: str = Field(description="The registered model (GET /v1/models/{id}).")
    model: RegisteredModel | None = None
    parent_model_id: str | None = None
    dataset_id: str
    method: str
    epochs: list[EpochResult]
    best_epoch: int | None = None
    stopped_early: bool = False
    resumed_from_epoch: int | None = Field(
        None, description="The checkpoint a later attempt resumed from (a worker died)."
    )
    warnings: list[Warning_] = Field(default_factory=list)
    scores: list[ModelScores] = Field(
        default_factory=list, description="The trained model, and the model it started from."
    )
    gradient_computations: int
    seconds: float
    audit_job_id: str | None = Field(None, description="The audit of the trained model.")
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    engine_version: str = ""


class TransferAttackInfo(BaseModel):
    """The attack every source was crafted with."""

    name: str
    norm: str
    eps: list[float]
    steps: int | None = Field(None, description="Iterations (null for fgsm).")


class TransferSourceInfo(BaseModel):
    """A source: one model, or an ensemble whose logits are averaged."""

    name: str = Field(description="The model's name, or 'ensemble(a+b)'; unique in the result.")
    model_ids: list[str]


class TransferTargetInfo(BaseModel):
    """A target and its accuracy on the clean examples."""

    name: str
    model_id: str
    black_box: bool
    clean_accuracy: float


class CraftedInfo(BaseModel):
    """One crafted set: a source at one eps."""

    source: str
    eps: float
    source_clean_accuracy: float
    source_success_rate: float | None = Field(
        description="White-box: of the examples the source gets right, the fraction it gets "
        "wrong on its own adversarial inputs."
    )
    reused: bool = Field(description="Taken from an earlier job with the same crafted key.")
    artifact: str = Field(description="The crafted set's artifact name (an .npz, no pickle).")


class TransferCellResult(BaseModel):
    """How the examples crafted on a source at one eps fare on one target."""

    source: str
    target: str
    eps: float
    examples: int
    target_clean_correct: int
    target_adversarial_correct: int
    fooled: int = Field(description="Correct when clean, wrong on the adversarial input.")
    agreeing: int = Field(description="Fooled into the class the source predicts.")
    clean_accuracy: float
    accuracy: float = Field(description="Accuracy on the adversarial inputs (raw).")
    error_rate: float | None = Field(
        description="fooled / target_clean_correct: the transfer rate (null: none correct)."
    )
    wrong_class_agreement: float | None = Field(
        description="agreeing / fooled (null: nothing fooled)."
    )
    reused: bool = Field(description="Its crafted set was reused from an earlier job.")


class TransferResult(BaseModel):
    """A transferability matrix: every source x target x eps."""

    kind: Literal["transfer"] = "transfer"
    engine_version: str
    examples: int
    attack: TransferAttackInfo
    seed: int
    sources: list[TransferSourceInfo]
    targets: list[TransferTargetInfo]
    crafted: list[CraftedInfo]
    cells: list[TransferCellResult]
    seconds: float


class TransferCraftResult(BaseModel):
    """Internal: one crafted set, stored as an artifact."""

    source: int
    eps: float
    key: str
    examples: int
    source_clean_accuracy: float
    source_success_rate: float | None
    crafted: ArtifactRef
    seconds: float


class TransferScoreCell(BaseModel):
    """Internal: one target's numbers against one crafted set."""

    source: int
    eps: float
    examples: int
    target_clean_correct: int
    target_adversarial_correct: int
    fooled: int
    agreeing: int
    clean_accuracy: float
    accuracy: float
    error_rate: float | None
    wrong_class_agreement: float | None


class TransferScoreResult(BaseModel):
    """Internal: one target scored against every crafted set."""

    target: int
    clean_accuracy: float
    cells: list[TransferScoreCell]
    seconds: float
