"""Sharded audits: the same numbers as one audit, from parts run on separate workers.

An example's outcome depends only on the example, its id and the seed (per-example random
streams; :mod:`adversarial.randomness`), never on which other examples share its run. So
an audit of N examples can run as parts on contiguous ranges of them (:func:`audit_part`),
each saved as bytes (:func:`part_to_bytes`), and merged (:func:`merged_audit`): the merge
concatenates the per-example arrays in example order and recomputes every number with the
arithmetic :func:`adversarial.evaluation.evaluate` uses (:func:`aggregate_outcome`), then
runs the model-level checks (on the first examples, as the whole audit does) and the
result checks on the merged evaluation. The outcome equals :func:`adversarial.audit.audit`
on all the examples.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adversarial.audit import AuditConfig, AuditOutcome, per_sample_arrays
from adversarial.checks import large_eps_check, model_checks, result_checks
from adversarial.corruptions import corruption_accuracy
from adversarial.errors import EngineCheckError
from adversarial.evaluation import (
    AttackConfig,
    ComponentOutcome,
    EvaluationResult,
    NoiseOutcome,
    PerSample,
    ProgressCallback,
    _mean,
    aggregate_outcome,
    evaluate,
    per_class_accuracy,
    worst_cases,
)
from adversarial.models.blackbox import is_differentiable

_FORMAT = "gauntlet.audit-part.v1"


def audit_part(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AuditConfig,
    *,
    example_ids: torch.Tensor,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Every attack of ``config`` on one shard's examples (no model-level checks: the merge
    runs those on the whole)."""
    return evaluate(
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
        example_ids=example_ids,
    )


def part_to_bytes(part: EvaluationResult, example_ids: torch.Tensor) -> bytes:
    """A part as an ``.npz`` (no pickle): per-example arrays and a JSON header."""
    arrays: dict[str, np.ndarray] = {
        "example_ids": example_ids.long().numpy(),
        "clean_predictions": part.clean_predictions.numpy(),
        "clean_confidences": part.clean_confidences.numpy(),
    }
    outcomes = []
    for k, outcome in enumerate(part.outcomes):
        assert outcome.confidences is not None
        assert outcome.norms is not None
        arrays[f"o{k}_predictions"] = outcome.adversarial_predictions.numpy()
        arrays[f"o{k}_confidences"] = outcome.confidences.numpy()
        arrays[f"o{k}_norms"] = outcome.norms.numpy()
        arrays[f"o{k}_fooled_inputs"] = outcome.fooled_inputs.numpy()
        for j, component in enumerate(outcome.components):
            assert component.survivors is not None
            arrays[f"o{k}_c{j}_survivors"] = component.survivors.numpy()
        outcomes.append(
            {
                "name": outcome.config.name,
                "norm": outcome.config.norm,
                "eps": outcome.config.eps,
                "params": dict(outcome.config.params),
                "seconds": outcome.seconds,
                "components": [{"name": c.name, "seconds": c.seconds} for c in outcome.components],
            }
        )
    for j, noise in enumerate(part.noise):
        assert noise.correct is not None
        arrays[f"n{j}_correct"] = noise.correct.numpy()
    for summary in part.per_sample:
        prefix = f"s_{summary.norm}"
        arrays[f"{prefix}_fell_at"] = summary.fell_at.numpy()
        arrays[f"{prefix}_inputs"] = summary.adversarial_inputs.numpy()
        arrays[f"{prefix}_predictions"] = summary.adversarial_predictions.numpy()
        arrays[f"{prefix}_confidences"] = summary.adversarial_confidences.numpy()
    header = {
        "format": _FORMAT,
        "outcomes": outcomes,
        "noise": [{"norm": n.norm, "eps": n.eps} for n in part.noise],
        "norms": [s.norm for s in part.per_sample],
        "seconds": part.seconds,
        "batch_size": part.batch_size,
        "final_batch_size": part.final_batch_size,
        "non_finite_predictions": part.non_finite_predictions,
        "verification_seconds": part.verification_seconds,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def part_from_bytes(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header and arrays of :func:`part_to_bytes`'s output."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: torch.from_numpy(archive[name].copy()) for name in archive.files}
        header = json.loads(bytes(arrays.pop("header").numpy()).decode())
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as error:
        raise EngineCheckError(f"an audit part cannot be read: {error}") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise EngineCheckError("not an audit part")
    return header, arrays


def merge_parts(parts: Sequence[bytes], y: torch.Tensor, num_classes: int) -> EvaluationResult:
    """One evaluation from parts given in example order, ``y`` the labels of all of them."""
    decoded = [part_from_bytes(data) for data in parts]
    if not decoded:
        raise EngineCheckError("no audit parts to merge")
    headers = [header for header, _ in decoded]
    first = headers[0]

    def cat(name: str) -> torch.Tensor:
        return torch.cat([arrays[name] for _, arrays in decoded])

    for header in headers[1:]:
        if [o["name"] for o in header["outcomes"]] != [o["name"] for o in first["outcomes"]]:
            raise EngineCheckError("audit parts of different attacks")
    clean_predictions = cat("clean_predictions")
    clean_confidences = cat("clean_confidences")
    if clean_predictions.shape != y.shape:
        raise EngineCheckError(
            f"the parts hold {clean_predictions.shape[0]} examples, the labels {y.shape[0]}"
        )
    clean_correct = clean_predictions == y
    outcomes = []
    for k, described in enumerate(first["outcomes"]):
        components = [
            ComponentOutcome(
                name=component["name"],
                robust_accuracy=0.0,
                seconds=sum(h["outcomes"][k]["components"][j]["seconds"] for h in headers),
                survivors=cat(f"o{k}_c{j}_survivors"),
            )
            for j, component in enumerate(described["components"])
        ]
        outcomes.append(
            aggregate_outcome(
                AttackConfig(
                    described["name"], described["norm"], described["eps"], described["params"]
                ),
                y=y,
                num_classes=num_classes,
                attacked=clean_correct,
                adversarial_predictions=cat(f"o{k}_predictions"),
                confidences=cat(f"o{k}_confidences"),
                norms=cat(f"o{k}_norms"),
                fooled_inputs=cat(f"o{k}_fooled_inputs"),
                components=components,
                seconds=sum(h["outcomes"][k]["seconds"] for h in headers),
            )
        )
    noise = []
    for j, described in enumerate(first["noise"]):
        correct = cat(f"n{j}_correct")
        noise.append(
            NoiseOutcome(
                norm=described["norm"], eps=described["eps"], accuracy=_mean(correct),
                correct=correct,
            )
        )  # fmt: skip
    per_sample = [
        PerSample(
            norm=norm,
            fell_at=cat(f"s_{norm}_fell_at"),
            adversarial_inputs=cat(f"s_{norm}_inputs"),
            adversarial_predictions=cat(f"s_{norm}_predictions"),
            adversarial_confidences=cat(f"s_{norm}_confidences"),
        )
        for norm in first["norms"]
    ]
    return EvaluationResult(
        num_examples=int(y.shape[0]),
        clean_accuracy=_mean(clean_correct),
        clean_correct=clean_correct,
        clean_predictions=clean_predictions,
        clean_confidences=clean_confidences,
        per_class_clean_accuracy=per_class_accuracy(clean_correct, y, num_classes),
        outcomes=outcomes,
        worst_cases=worst_cases(outcomes, clean_correct),
        noise=noise,
        per_sample=per_sample,
        seconds=sum(h["seconds"] for h in headers),
        batch_size=int(first["batch_size"]),
        final_batch_size=min(int(h["final_batch_size"]) for h in headers),
        non_finite_predictions=sum(int(h["non_finite_predictions"]) for h in headers),
        verification_seconds=sum(float(h["verification_seconds"]) for h in headers),
    )


def merged_audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AuditConfig,
    parts: Sequence[bytes],
    *,
    example_ids: torch.Tensor,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> AuditOutcome:
    """The audit of ``(x, y)`` from its parts (in example order): what
    :func:`adversarial.audit.audit` gives on the whole, number for number."""
    started = time.perf_counter()
    device = torch.device(device)
    ids = example_ids.detach().cpu().long()
    report = progress or (lambda *_: None)
    findings = []
    if config.checks:
        report(0.0, "checks", "checking the model's outputs and gradients")
        findings += model_checks(model, x, y, device=device)
    evaluation = merge_parts(parts, y, config.num_classes)
    if not torch.equal(torch.cat([part_from_bytes(p)[1]["example_ids"] for p in parts]), ids):
        raise EngineCheckError("the audit parts are not the examples being merged, in order")
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
        corruptions = corruption_accuracy(
            model, x, y, seed=config.seed, device=device, input_range=config.input_range,
            batch_size=config.batch_size or 256,
        )  # fmt: skip
    return AuditOutcome(
        evaluation=evaluation,
        findings=findings,
        large_eps_accuracy=large_eps_accuracy,
        per_sample=per_sample_arrays(evaluation, ids.numpy(), x.numpy(), y.numpy()),
        seconds=time.perf_counter() - started + evaluation.seconds,
        corruptions=corruptions,
    )


def shard_ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges covering ``count`` examples, sizes
    differing by at most one (empty ranges dropped)."""
    size, extra = divmod(count, max(shards, 1))
    ranges, start = [], 0
    for index in range(max(shards, 1)):
        stop = start + size + (1 if index < extra else 0)
        if stop > start:
            ranges.append((start, stop))
        start = stop
    return ranges
