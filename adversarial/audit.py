"""The audit pipeline as one engine function: model checks, every attack, result checks,
the large-eps check and the per-example export.

It knows nothing of jobs, databases or files: a worker (or a jail process, or a notebook)
hands it a model, the examples and an :class:`AuditConfig`, and reads an
:class:`AuditOutcome`. Progress goes to a callback, which may raise to cancel.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from adversarial.checks import Finding, large_eps_check, model_checks, result_checks
from adversarial.corruptions import CorruptionReport, corruption_accuracy
from adversarial.evaluation import AttackConfig, EvaluationResult, ProgressCallback, evaluate
from adversarial.models.blackbox import is_differentiable


@dataclass(frozen=True)
class AuditConfig:
    """What to measure: attack configurations (one per attack and eps, in report order),
    the model's classes and input range, the seed, the batch size (``None``: automatic) and
    whether to run the validity checks."""

    attacks: Sequence[AttackConfig]
    num_classes: int
    input_range: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    batch_size: int | None = None
    checks: bool = True
    corruptions: bool = False

    def to_json(self) -> dict[str, Any]:
        """The config as JSON (a jail's payload); :meth:`from_json` reads it back."""
        return {
            "attacks": [
                {"name": a.name, "norm": a.norm, "eps": a.eps, "params": dict(a.params)}
                for a in self.attacks
            ],
            "num_classes": self.num_classes,
            "input_range": list(self.input_range),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "checks": self.checks,
            "corruptions": self.corruptions,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> AuditConfig:
        """A config from :meth:`to_json`'s output."""
        low, high = document["input_range"]
        return cls(
            attacks=[
                AttackConfig(
                    name=str(a["name"]),
                    norm=str(a["norm"]),
                    eps=float(a["eps"]),
                    params=dict(a.get("params") or {}),
                )
                for a in document["attacks"]
            ],
            num_classes=int(document["num_classes"]),
            input_range=(float(low), float(high)),
            seed=int(document["seed"]),
            batch_size=None if document.get("batch_size") is None else int(document["batch_size"]),
            checks=bool(document.get("checks", True)),
            corruptions=bool(document.get("corruptions", False)),
        )


@dataclass
class AuditOutcome:
    """What an audit measured, before it becomes a result document."""

    evaluation: EvaluationResult
    findings: list[Finding]
    large_eps_accuracy: float | None
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    corruptions: CorruptionReport | None = None
    seconds: float = 0.0


def _noop(fraction: float, stage: str, message: str) -> None:
    return None


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AuditConfig,
    *,
    device: torch.device | str = "cpu",
    example_ids: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
) -> AuditOutcome:
    """Audit ``model`` on ``(x, y)``: clean accuracy, each configured attack, and (with
    ``config.checks``) the validity checks, including PGD-20 at half the input range.

    ``example_ids`` are the examples' indices in their dataset (default ``0..N-1``): they key
    the per-example random streams, so a subset or a shard of a dataset gives each example
    the numbers it gets in the whole. The per-sample export holds ``indices``,
    ``clean_inputs``, ``labels``, ``clean_predictions``, ``clean_confidences`` and, per norm,
    ``fell_at_<norm>``, ``adversarial_<norm>``, ``predictions_<norm>`` and
    ``confidences_<norm>`` (see :func:`per_sample_arrays`).
    """
    started = time.perf_counter()
    report = progress or _noop
    device = torch.device(device)
    ids = torch.arange(x.shape[0]) if example_ids is None else example_ids.detach().cpu().long()
    findings: list[Finding] = []
    if config.checks:
        report(0.0, "checks", "checking the model's outputs and gradients")
        findings += model_checks(model, x, y, device=device)

    evaluation = evaluate(
        model,
        x,
        y,
        config.attacks,
        num_classes=config.num_classes,
        input_range=config.input_range,
        batch_size=config.batch_size,
        device=device,
        seed=config.seed,
        progress=progress,
        example_ids=ids,
    )
    large_eps_accuracy = None
    if config.checks:
        report(1.0, "checks", "checking the attacks' results")
        findings += result_checks(evaluation)
        correct = evaluation.clean_correct
        if correct.any() and is_differentiable(model):  # PGD needs gradients
            large_eps_accuracy, large_eps_findings = large_eps_check(
                model,
                x[correct],
                y[correct],
                input_range=config.input_range,
                device=device,
                seed=config.seed,
                example_ids=ids[correct],
            )
            findings += large_eps_findings
    corruptions = None
    if config.corruptions:
        report(1.0, "corruptions", "accuracy under natural corruptions")
        corruptions = corruption_accuracy(
            model,
            x,
            y,
            seed=config.seed,
            device=device,
            input_range=config.input_range,
            batch_size=config.batch_size or 256,
        )
    return AuditOutcome(
        evaluation=evaluation,
        findings=findings,
        large_eps_accuracy=large_eps_accuracy,
        corruptions=corruptions,
        per_sample=per_sample_arrays(evaluation, ids.numpy(), x.numpy(), y.numpy()),
        seconds=time.perf_counter() - started,
    )


def per_sample_arrays(
    evaluation: EvaluationResult, indices: np.ndarray, x: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """The per-example export: dataset indices, clean inputs, labels, clean predictions and,
    per norm, the smallest eps at which each example fell, that adversarial input and its
    prediction (-1: the model's logits there were not finite)."""
    arrays: dict[str, np.ndarray] = {
        "indices": indices.astype(np.int64),
        "clean_inputs": x.astype(np.float32),
        "labels": y.astype(np.int64),
        "clean_predictions": evaluation.clean_predictions.numpy(),
        "clean_confidences": evaluation.clean_confidences.numpy(),
    }
    for summary in evaluation.per_sample:
        arrays[f"fell_at_{summary.norm}"] = summary.fell_at.numpy()
        arrays[f"adversarial_{summary.norm}"] = summary.adversarial_inputs.numpy()
        arrays[f"predictions_{summary.norm}"] = summary.adversarial_predictions.numpy()
        arrays[f"confidences_{summary.norm}"] = summary.adversarial_confidences.numpy()
    return arrays


def outcome_document(outcome: AuditOutcome) -> dict[str, Any]:
    """The measured numbers as JSON: the result document's engine part (the service adds
    the request's identity, the gate's verdict and notes). Ensemble components are
    cumulative; attacks are in config order; curves group configs that differ only in eps.
    """
    evaluation = outcome.evaluation
    curves: dict[tuple[str, str, str], dict[str, Any]] = {}
    for attack in evaluation.outcomes:
        curve = curves.setdefault(
            attack.config.family,
            {
                "attack": attack.config.name,
                "norm": attack.config.norm,
                "eps": [],
                "robust_accuracy": [],
            },
        )
        curve["eps"].append(attack.config.eps)
        curve["robust_accuracy"].append(attack.robust_accuracy)
    return {
        "num_examples": evaluation.num_examples,
        "clean_accuracy": evaluation.clean_accuracy,
        "per_class_clean_accuracy": evaluation.per_class_clean_accuracy,
        "attacks": [
            {
                "name": o.config.name,
                "norm": o.config.norm,
                "eps": o.config.eps,
                "params": dict(o.config.params),
                "robust_accuracy": o.robust_accuracy,
                "success_rate": o.success_rate,
                "mean_wrong_confidence": o.mean_wrong_confidence,
                "mean_perturbation_norm": o.mean_perturbation_norm,
                "max_perturbation_norm": o.max_perturbation_norm,
                "per_class_accuracy": o.per_class_accuracy,
                "confusion": o.confusion,
                "components": [
                    {
                        "name": c.name,
                        "robust_accuracy": c.robust_accuracy,
                        "seconds": round(c.seconds, 4),
                    }
                    for c in o.components
                ],
                "seconds": round(o.seconds, 4),
            }
            for o in evaluation.outcomes
        ],
        "curves": list(curves.values()),
        "worst_case": [
            {
                "norm": w.norm,
                "eps": w.eps,
                "attacks": w.attacks,
                "robust_accuracy": w.robust_accuracy,
            }
            for w in evaluation.worst_cases
        ],
        "noise_baseline": [
            {"norm": n.norm, "eps": n.eps, "accuracy": n.accuracy} for n in evaluation.noise
        ],
        "large_eps_accuracy": outcome.large_eps_accuracy,
        "corruptions": [
            {
                "corruption": r.corruption,
                "severity": r.severity,
                "parameter": r.parameter,
                "accuracy": r.accuracy,
            }
            for r in (outcome.corruptions.results if outcome.corruptions else [])
        ],
        "corruption_accuracy": outcome.corruptions.mean_accuracy if outcome.corruptions else None,
        "warnings": [{"code": f.code, "message": f.message} for f in outcome.findings],
        "batch_size": evaluation.batch_size,
        "final_batch_size": evaluation.final_batch_size,
        "verification_seconds": round(evaluation.verification_seconds, 4),
        "seconds": round(outcome.seconds, 4),
    }
