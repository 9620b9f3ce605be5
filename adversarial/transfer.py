"""Transferability: adversarial examples crafted on source models, scored on target models.

Szegedy et al. 2014 and Papernot et al. 2016 found that examples crafted against one model
fool others, across architectures and learning techniques (neural networks, logistic
regression, SVMs, decision trees, nearest neighbours); Liu et al. 2017 and Dong et al. 2018
found that crafting against an ensemble of sources transfers better. A transfer matrix has
one cell per source and target.

The pipeline has two parts, so that a service can run them as separate jobs:

* :func:`craft` runs a white-box attack on a source (one model, or an ensemble whose logits
  are averaged) for **every** example and returns a :class:`CraftedSet`: the adversarial
  inputs, verified, with the source's clean and adversarial predictions. It only depends on
  the source, the examples and their ids, the attack and the seed (never on the batch size,
  a shard or the device: each example draws from its own random stream), so a crafted set
  can be stored (:func:`crafted_to_bytes`) and reused by any later job with the same inputs
  (:func:`crafted_key`).
* :func:`score` runs a target (any classifier, black boxes included) on the clean and the
  adversarial inputs and returns a :class:`TransferCell`.

:func:`transfer_matrix` runs both for every pair in one process; a service that fans the
parts out into child jobs gets the same numbers, cell for cell.

Curves: an attack with several eps is one :class:`~adversarial.evaluation.AttackConfig` per
eps (:func:`attack_curve`), each crafted on its own (a craft job and an artifact per source
and eps) and scored on its own; the cells of a curve are those with the same source, target
and attack family, ordered by eps. Transfer is not monotone in eps by construction (each eps
is an independent attack), unlike the white-box worst case of an audit.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from adversarial.attacks import ATTACKS, make_attack
from adversarial.attacks.base import Attack
from adversarial.errors import EngineInputError
from adversarial.evaluation import (
    AttackConfig,
    ProgressCallback,
    _Batches,
    initial_batch_size,
)
from adversarial.models.blackbox import is_differentiable
from adversarial.randomness import ExampleStreams
from adversarial.threat import ThreatModel, make_threat_model
from adversarial.verification import verify_adversarial

__all__ = [
    "CRAFTED_FORMAT",
    "CraftedSet",
    "EnsembleSource",
    "TransferCell",
    "TransferEntry",
    "TransferMatrix",
    "attack_curve",
    "craft",
    "crafted_from_bytes",
    "crafted_key",
    "crafted_to_bytes",
    "predict",
    "score",
    "score_crafted",
    "source_model",
    "transfer_matrix",
    "verify_crafted",
]

# Written into every artifact and every key: a change of the format changes both.
CRAFTED_FORMAT = "gauntlet.crafted.v1"
_ARRAYS = (
    "example_ids",
    "labels",
    "adversarial_inputs",
    "source_clean_predictions",
    "source_adversarial_predictions",
)


class EnsembleSource(nn.Module):
    """A source made of several models: the mean of their logits.

    This is Dong et al.'s ensemble "in logits" ("Boosting Adversarial Attacks with
    Momentum", CVPR 2018, section 3.2: ``l(x) = sum_k w_k l_k(x)`` with equal weights),
    which they found to transfer better than averaging the members' softmax predictions
    (the fusion of Liu et al., "Delving into Transferable Adversarial Examples and
    Black-box Attacks", ICLR 2017) or their losses. The cross-entropy of the averaged
    logits is what the attack ascends; the ensemble's prediction is their argmax.

    Members must be differentiable and on the same device; the order of members is kept
    (it fixes the order of the float summation, hence the exact bits of the result).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise EngineInputError(
                "bad_ensemble", f"An ensemble needs at least two members, got {len(members)}."
            )
        self.members = nn.ModuleList(members)
        # The ensemble's own flag says eval (nn.Module starts in training mode, and an
        # attack's restore of it would switch every member to training mode); the members'
        # flags are left as they are, so that craft() can restore each one.
        self.training = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The members' logits ``[N, num_classes]``, averaged."""
        logits = [member(inputs) for member in self.members]
        shapes = {tuple(part.shape) for part in logits}
        if len(shapes) != 1:
            raise EngineInputError(
                "bad_ensemble",
                f"The ensemble's members return logits of different shapes: {sorted(shapes)}.",
            )
        return torch.stack(logits).mean(dim=0)


def source_model(sources: nn.Module | Sequence[nn.Module]) -> nn.Module:
    """The model an attack runs on: the one source, or an :class:`EnsembleSource` of
    several. Refuses an empty list and any non-differentiable member (code
    ``black_box_source``)."""
    members = [sources] if isinstance(sources, nn.Module) else list(sources)
    if not members:
        raise EngineInputError("bad_ensemble", "A transfer source needs at least one model.")
    for position, member in enumerate(members):
        if not is_differentiable(member):
            where = "The source" if len(members) == 1 else f"Member {position} of the source"
            raise EngineInputError(
                "black_box_source",
                f"{where} is a black-box model (no input gradient): adversarial examples are "
                "crafted with white-box attacks. Use it as a transfer target instead.",
            )
    return members[0] if len(members) == 1 else EnsembleSource(members)


def attack_curve(
    name: str, norm: str, eps_values: Sequence[float], params: Mapping[str, Any] | None = None
) -> list[AttackConfig]:
    """One :class:`AttackConfig` per eps (in the given order): the crafts of a curve."""
    return [AttackConfig(name, norm, float(eps), dict(params or {})) for eps in eps_values]


@dataclass
class CraftedSet:
    """Adversarial inputs crafted on one source for every example, and what the source
    predicted on them.

    Attributes:
        attack: the attack configuration (one eps).
        seed: the seed of the per-example random streams.
        input_range: ``(low, high)``: the attack stayed inside it.
        example_ids: ``[N]`` int64, the examples' ids in their dataset (keys of the streams).
        labels: ``[N]`` int64 true labels.
        adversarial_inputs: ``[N, C, H, W]`` on the CPU, each inside its ball and the range.
        source_clean_predictions: ``[N]`` int64, the source's predictions on clean inputs
            (-1 where its logits were not finite).
        source_adversarial_predictions: ``[N]`` int64, on the adversarial inputs.
        seconds: time spent crafting and predicting.
    """

    attack: AttackConfig
    seed: int
    input_range: tuple[float, float]
    example_ids: torch.Tensor
    labels: torch.Tensor
    adversarial_inputs: torch.Tensor
    source_clean_predictions: torch.Tensor
    source_adversarial_predictions: torch.Tensor
    seconds: float = 0.0

    @property
    def num_examples(self) -> int:
        """How many examples the set holds."""
        return int(self.example_ids.numel())

    @property
    def source_clean_accuracy(self) -> float:
        """The source's accuracy on the clean inputs."""
        return _fraction(self.source_clean_predictions == self.labels)

    @property
    def source_success_rate(self) -> float | None:
        """Among the examples the source gets right when clean, the fraction it gets wrong
        on the adversarial inputs: the white-box success rate (``None`` with none right)."""
        correct = self.source_clean_predictions == self.labels
        if not correct.any():
            return None
        return _fraction(self.source_adversarial_predictions[correct] != self.labels[correct])


@dataclass
class TransferCell:
    """How adversarial inputs crafted on a source fare on one target.

    Attributes:
        examples: how many examples were scored.
        target_clean_correct: examples the target classifies correctly when clean.
        target_adversarial_correct: examples it classifies correctly on the adversarial
            inputs.
        fooled: examples correct when clean and wrong on the adversarial input.
        agreeing: fooled examples whose wrong prediction is the source's prediction on the
            same adversarial input.
        clean_accuracy: ``target_clean_correct / examples``.
        accuracy: ``target_adversarial_correct / examples`` (raw, over every example).
        error_rate: ``fooled / target_clean_correct`` (``None`` when the target gets no
            example right): the transfer rate.
        wrong_class_agreement: ``agreeing / fooled`` (``None`` when nothing was fooled).
        target_clean_predictions, target_adversarial_predictions: ``[N]`` int64 (-1 where
            the target's scores were not finite, which counts as wrong).
        non_finite_predictions: rows with non-finite scores, clean and adversarial.
        seconds: time spent.
    """

    examples: int
    target_clean_correct: int
    target_adversarial_correct: int
    fooled: int
    agreeing: int
    clean_accuracy: float
    accuracy: float
    error_rate: float | None
    wrong_class_agreement: float | None
    target_clean_predictions: torch.Tensor
    target_adversarial_predictions: torch.Tensor
    non_finite_predictions: int = 0
    seconds: float = 0.0


@dataclass
class TransferEntry:
    """One cell of a matrix: the source's and target's names and the attack."""

    source: str
    target: str
    attack: AttackConfig
    cell: TransferCell


@dataclass
class TransferMatrix:
    """Every source x target x attack cell, and the crafted sets (per source, one per
    attack in order)."""

    sources: list[str]
    targets: list[str]
    attacks: list[AttackConfig]
    entries: list[TransferEntry]
    crafted: dict[str, list[CraftedSet]] = field(default_factory=dict)
    seconds: float = 0.0

    def cell(self, source: str, target: str, attack: int = 0) -> TransferCell:
        """The cell of ``source`` and ``target`` for ``attacks[attack]``."""
        config = self.attacks[attack]
        for entry in self.entries:
            if entry.source == source and entry.target == target and entry.attack == config:
                return entry.cell
        raise KeyError((source, target, attack))


def _fraction(mask: torch.Tensor) -> float:
    # Exact k / N in double precision, as the evaluation reports it.
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own mode back (an attack only
    restores the top module's, which would force one mode on an ensemble's members)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int]:
    """``model``'s predictions ``[N]`` (int64, CPU) on ``x`` and how many rows had
    non-finite scores; such a row's prediction is -1, wrong for every label.

    Runs in batches on ``device`` (where the model must be), in eval mode, without
    gradients; halves the batch on out-of-memory. Black-box models work too.
    """
    device = torch.device(device)
    x = x.detach().cpu()
    batches = _Batches(initial_batch_size(batch_size, x[:1], device), device)
    predictions = torch.empty(x.shape[0], dtype=torch.long)
    non_finite = 0

    def work(part: slice) -> None:
        nonlocal non_finite
        scores = model(x[part].to(device)).float()
        finite = torch.isfinite(scores).all(dim=1)
        predictions[part] = torch.where(finite, scores.argmax(dim=1), -1).cpu()
        non_finite += int((~finite).sum())

    with _eval_mode(model), torch.inference_mode():
        batches.run(x.shape[0], work)
    return predictions, non_finite


def _example_ids(example_ids: torch.Tensor | None, count: int) -> torch.Tensor:
    ids = torch.arange(count) if example_ids is None else example_ids.detach().cpu().long()
    if ids.shape != (count,):
        raise EngineInputError(
            "bad_example_ids", f"example_ids must have shape [{count}], got {list(ids.shape)}."
        )
    if torch.unique(ids).numel() != count:
        raise EngineInputError("bad_example_ids", "example_ids must be distinct.")
    return ids


def _check_examples(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or y.shape != (x.shape[0],):
        raise EngineInputError(
            "bad_examples",
            f"Inputs must be [N, ...] with labels [N]; got {list(x.shape)} and {list(y.shape)}.",
        )
    if not x.is_floating_point():
        raise EngineInputError("bad_examples", f"Inputs must be floating point, got {x.dtype}.")


def _threat_and_attack(
    attack: AttackConfig, model: nn.Module, input_range: tuple[float, float], on_step: Any
) -> tuple[ThreatModel, Attack]:
    if attack.name not in ATTACKS:
        known = ", ".join(sorted(ATTACKS))
        raise EngineInputError(
            "unknown_attack",
            f"Unknown attack {attack.name!r} for crafting; known attacks: {known}.",
        )
    try:
        threat = make_threat_model(attack.norm, attack.eps, *input_range)
        return threat, make_attack(attack.name, model, threat, dict(attack.params), on_step=on_step)
    except (TypeError, ValueError) as error:
        raise EngineInputError("bad_attack", f"{attack.label}: {error}") from error


def _check_input_range(model: nn.Module, input_range: tuple[float, float], role: str) -> None:
    """Refuse a model whose declared input range is not the one the inputs live in."""
    for module in model.modules():
        declared = getattr(module, "input_range", None)
        if declared is not None and tuple(float(v) for v in declared) != tuple(input_range):
            raise EngineInputError(
                "input_range_mismatch",
                f"The {role} declares input_range {list(declared)}, the adversarial inputs "
                f"live in {list(input_range)}: eps would not mean the same thing.",
            )


def craft(
    sources: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig,
    *,
    seed: int = 0,
    example_ids: torch.Tensor | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> CraftedSet:
    """Craft adversarial inputs on ``sources`` for every example of ``(x, y)``.

    ``sources`` is one model or a list: one model is the source itself, several are an
    :class:`EnsembleSource` (their logits averaged). Every model must be differentiable
    (a black box raises :class:`EngineInputError` ``black_box_source``) and on ``device``.
    ``attack`` is one configuration (one eps) of a registered gradient attack (the transfer
    spec offers ``fgsm``, ``pgd`` and ``mifgsm``), untargeted by default.

    Every example is attacked, also those the source misclassifies on clean input: transfer
    is about the target, and an example the source gets wrong may still be one the target
    gets right. The attack treats them like any other (it ascends the loss of the true
    label); with ``early_stop`` (PGD's and MI-FGSM's default) an example the source already
    misclassifies stops at its first iterate (the random start for PGD, the clean input for
    MI-FGSM), and every example stops at the first iterate that fools the source, which
    makes weaker transfer examples than running all steps (``early_stop: False``), as
    transfer studies do. The attack's parameters are used as given either way.

    Each example draws from its own random stream, keyed by ``(seed, example id, attack
    name)`` exactly as :func:`adversarial.evaluation.evaluate` keys it, so an example's
    adversarial input does not depend on the batch size, a shard or the device, and on a
    single source it is the input ``evaluate`` finds for it with the same attack and seed.
    ``example_ids`` default to ``0..N-1``; pass the dataset indices for subsets.

    Every adversarial input is checked (finite, inside its ball and ``input_range``;
    :func:`adversarial.verification.verify_adversarial`), then the source predicts the clean
    and adversarial inputs in fresh forward passes. ``progress(fraction, stage, message)``
    may raise to cancel. The sources' train/eval modes are restored.
    """
    started = time.perf_counter()
    device = torch.device(device)
    _check_examples(x, y)
    x = x.detach().cpu()
    y = y.detach().cpu().long()
    ids = _example_ids(example_ids, x.shape[0])
    model = source_model(sources)
    _check_input_range(model, input_range, "source")
    count = x.shape[0]

    done = 0.0
    total = 1.0

    def advance(units: float) -> None:
        nonlocal done
        done += units
        if progress is not None:
            progress(min(done / total, 1.0), "craft", attack.label)

    threat, attacker = _threat_and_attack(attack, model, input_range, advance)
    total = max(float(count * (attacker.planned_steps() + 2)), 1.0)
    batches = _Batches(initial_batch_size(batch_size, x[:1], device), device)
    adversarial = torch.empty_like(x)

    def work(part: slice) -> None:
        random = ExampleStreams.for_examples(seed, ids[part], attack.name)
        found = attacker(x[part].to(device), y[part].to(device), random)
        adversarial[part] = found.cpu()

    with _eval_mode(model):
        batches.run(count, work)
        verify_adversarial(threat, adversarial, x, attack.label)
        # The progress plan assumed every planned step: early stopping ends sooner.
        done = float(count * attacker.planned_steps())
        clean_predictions, _ = predict(model, x, batch_size=batches.batch_size, device=device)
        advance(count)
        adversarial_predictions, _ = predict(
            model, adversarial, batch_size=batches.batch_size, device=device
        )
        advance(count)
    return CraftedSet(
        attack=attack,
        seed=int(seed),
        input_range=(float(input_range[0]), float(input_range[1])),
        example_ids=ids,
        labels=y,
        adversarial_inputs=adversarial,
        source_clean_predictions=clean_predictions,
        source_adversarial_predictions=adversarial_predictions,
        seconds=time.perf_counter() - started,
    )


def score(
    target: nn.Module,
    x_clean: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    source_adversarial_predictions: torch.Tensor,
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    target_clean_predictions: torch.Tensor | None = None,
) -> TransferCell:
    """Score adversarial inputs crafted on a source against ``target`` (any classifier on
    ``device``, black boxes included).

    ``x_clean`` and ``x_adv`` are ``[N, ...]``, ``y`` and ``source_adversarial_predictions``
    ``[N]``. ``error_rate`` is measured over the examples the *target* gets right when clean
    (whatever the source did on them), ``accuracy`` over all examples, and
    ``wrong_class_agreement`` over the fooled examples (see :class:`TransferCell`).
    ``target_clean_predictions`` (from :func:`predict`) saves the clean pass when one target
    is scored against several sources. The target's train/eval modes are restored.
    """
    started = time.perf_counter()
    _check_examples(x_clean, y)
    if x_adv.shape != x_clean.shape:
        raise EngineInputError(
            "bad_examples",
            f"Adversarial inputs {list(x_adv.shape)} and clean inputs {list(x_clean.shape)} "
            "differ in shape.",
        )
    count = x_clean.shape[0]
    if source_adversarial_predictions.shape != (count,):
        raise EngineInputError(
            "bad_examples",
            f"source_adversarial_predictions must have shape [{count}], got "
            f"{list(source_adversarial_predictions.shape)}.",
        )
    y = y.detach().cpu().long()
    source_predictions = source_adversarial_predictions.detach().cpu().long()
    non_finite = 0
    if target_clean_predictions is None:
        clean_predictions, non_finite = predict(
            target, x_clean, batch_size=batch_size, device=device
        )
    else:
        clean_predictions = target_clean_predictions.detach().cpu().long()
        if clean_predictions.shape != (count,):
            raise EngineInputError(
                "bad_examples",
                f"target_clean_predictions must have shape [{count}], got "
                f"{list(clean_predictions.shape)}.",
            )
    adversarial_predictions, adversarial_non_finite = predict(
        target, x_adv, batch_size=batch_size, device=device
    )
    clean_correct = clean_predictions == y
    adversarial_correct = adversarial_predictions == y
    fooled = clean_correct & ~adversarial_correct
    # A row without a prediction (-1) agrees with nothing, not even another such row.
    agreeing = fooled & (adversarial_predictions == source_predictions) & (source_predictions >= 0)
    clean_count = int(clean_correct.sum())
    fooled_count = int(fooled.sum())
    agreeing_count = int(agreeing.sum())
    return TransferCell(
        examples=count,
        target_clean_correct=clean_count,
        target_adversarial_correct=int(adversarial_correct.sum()),
        fooled=fooled_count,
        agreeing=agreeing_count,
        clean_accuracy=_fraction(clean_correct),
        accuracy=_fraction(adversarial_correct),
        error_rate=fooled_count / clean_count if clean_count else None,
        wrong_class_agreement=agreeing_count / fooled_count if fooled_count else None,
        target_clean_predictions=clean_predictions,
        target_adversarial_predictions=adversarial_predictions,
        non_finite_predictions=non_finite + adversarial_non_finite,
        seconds=time.perf_counter() - started,
    )


def verify_crafted(
    crafted: CraftedSet,
    x_clean: torch.Tensor,
    y: torch.Tensor,
    example_ids: torch.Tensor | None = None,
) -> None:
    """Check that a (stored, reused) crafted set belongs to these examples and obeys its
    attack: same ids (default ``0..N-1``) and labels in the same order, every adversarial
    input inside its ball and range.

    Raises:
        EngineInputError: ``crafted_mismatch`` (other examples, labels or shapes).
        EngineCheckError: an input outside its ball or range, or not finite.
    """
    ids = _example_ids(example_ids, x_clean.shape[0])
    if not torch.equal(crafted.example_ids, ids) or not torch.equal(
        crafted.labels, y.detach().cpu().long()
    ):
        raise EngineInputError(
            "crafted_mismatch",
            "The crafted set holds other examples (ids or labels differ) than those scored.",
        )
    if crafted.adversarial_inputs.shape != x_clean.shape:
        raise EngineInputError(
            "crafted_mismatch",
            f"The crafted inputs have shape {list(crafted.adversarial_inputs.shape)}, the "
            f"examples {list(x_clean.shape)}.",
        )
    threat = make_threat_model(crafted.attack.norm, crafted.attack.eps, *crafted.input_range)
    verify_adversarial(
        threat, crafted.adversarial_inputs, x_clean.detach().cpu(), crafted.attack.label
    )


def score_crafted(
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    crafted_sets: Sequence[CraftedSet],
    *,
    example_ids: torch.Tensor | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[float, list[TransferCell]]:
    """Score one target against several (stored) crafted sets of the same examples: the
    target's clean predictions once, then :func:`score` for each set, after checking that
    the set belongs to these examples and obeys its attack (:func:`verify_crafted`).

    Returns the target's clean accuracy and one cell per set, in order; the cells equal
    those :func:`transfer_matrix` gives for the same target and sets.
    """
    _check_examples(x, y)
    for crafted in crafted_sets:
        verify_crafted(crafted, x, y, example_ids)
    clean_predictions, _ = predict(target, x, batch_size=batch_size, device=device)
    clean_accuracy = _fraction(clean_predictions == y.detach().cpu().long())
    cells = []
    for index, crafted in enumerate(crafted_sets):
        cells.append(
            score(
                target,
                x,
                crafted.adversarial_inputs,
                y,
                crafted.source_adversarial_predictions,
                batch_size=batch_size,
                device=device,
                target_clean_predictions=clean_predictions,
            )
        )
        if progress is not None:
            progress((index + 1) / len(crafted_sets), "score", crafted.attack.label)
    return clean_accuracy, cells


def _scaled(progress: ProgressCallback | None, start: float, span: float) -> ProgressCallback:
    def report(fraction: float, stage: str, message: str) -> None:
        if progress is not None:
            progress(min(start + span * fraction, 1.0), stage, message)

    return report


def transfer_matrix(
    sources: Mapping[str, nn.Module | Sequence[nn.Module]],
    targets: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | Sequence[AttackConfig],
    *,
    seed: int = 0,
    example_ids: torch.Tensor | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> TransferMatrix:
    """Craft on every source (name -> model or list of models) for every attack config
    (several eps: a curve), and score every crafted set on every target (name -> model), in
    one process. For tests, notebooks and benchmarks; a service running :func:`craft` and
    :func:`score` as separate jobs gets the same cells.

    Entries are ordered by source, attack, then target.
    """
    started = time.perf_counter()
    attacks = [attack] if isinstance(attack, AttackConfig) else list(attack)
    if not attacks:
        raise EngineInputError("bad_attack", "A transfer needs at least one attack config.")
    if not sources or not targets:
        raise EngineInputError("bad_transfer", "A transfer needs at least one source and target.")
    # Fail on a black-box source before any work is spent on the others.
    for members in sources.values():
        source_model(members)
    for name, target in targets.items():
        _check_input_range(target, input_range, f"target {name!r}")

    # Each (source, attack) pair is one unit of progress: 90% crafting, 10% scoring.
    units = len(sources) * len(attacks)
    clean_predictions: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        clean_predictions[name], _ = predict(target, x, batch_size=batch_size, device=device)

    entries: list[TransferEntry] = []
    crafted: dict[str, list[CraftedSet]] = {}
    step = 0
    for source_name, members in sources.items():
        crafted[source_name] = []
        for config in attacks:
            crafted_set = craft(
                members,
                x,
                y,
                config,
                seed=seed,
                example_ids=example_ids,
                input_range=input_range,
                batch_size=batch_size,
                device=device,
                progress=_scaled(progress, step / units, 0.9 / units),
            )
            crafted[source_name].append(crafted_set)
            for target_name, target in targets.items():
                cell = score(
                    target,
                    x,
                    crafted_set.adversarial_inputs,
                    y,
                    crafted_set.source_adversarial_predictions,
                    batch_size=batch_size,
                    device=device,
                    target_clean_predictions=clean_predictions[target_name],
                )
                entries.append(TransferEntry(source_name, target_name, config, cell))
            step += 1
            if progress is not None:
                progress(step / units, "score", f"{source_name}: {config.label}")
    return TransferMatrix(
        sources=list(sources),
        targets=list(targets),
        attacks=attacks,
        entries=entries,
        crafted=crafted,
        seconds=time.perf_counter() - started,
    )


def _attack_document(attack: AttackConfig) -> dict[str, Any]:
    return {
        "name": attack.name,
        "norm": attack.norm,
        "eps": float(attack.eps),
        "params": dict(attack.params),
    }


def _canonical_json(document: Any) -> str:
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EngineInputError(
            "bad_attack", f"Attack parameters must be plain JSON values: {error}"
        ) from error


def crafted_key(
    source_digests: Sequence[str],
    data_digest: str,
    attack: AttackConfig,
    seed: int,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    engine_version: str = "",
) -> str:
    """A stable key (64 hex digits) for a crafted set: two crafts with equal keys give the
    same adversarial inputs, so a stored set can be reused.

    ``source_digests``: one digest per source model, in ensemble order (the order fixes the
    float summation of the averaged logits); each must cover the model file *and* what
    changes the model's function (normalization, input range). ``data_digest`` must identify
    the exact examples in order and their ids (dataset content, split, limit or indices).
    ``engine_version`` (the service's) retires sets crafted by an older engine. The batch
    size and device are not part of the key: they do not change the result. Params are
    compared as given (``{"steps": 10}`` and ``{}`` are different keys even where 10 is the
    default).
    """
    document = {
        "format": CRAFTED_FORMAT,
        "sources": [str(digest) for digest in source_digests],
        "data": str(data_digest),
        "attack": _attack_document(attack),
        "seed": int(seed),
        "input_range": [float(input_range[0]), float(input_range[1])],
        "engine_version": str(engine_version),
    }
    return hashlib.sha256(_canonical_json(document).encode()).hexdigest()


def crafted_to_bytes(crafted: CraftedSet) -> bytes:
    """The artifact of a crafted set: an uncompressed ``.npz`` (readable with
    ``numpy.load(..., allow_pickle=False)``) holding

    * ``example_ids`` int64 ``[N]``, ``labels`` int64 ``[N]``,
    * ``adversarial_inputs`` (the inputs' float dtype) ``[N, C, H, W]``,
    * ``source_clean_predictions``, ``source_adversarial_predictions`` int64 ``[N]``,
    * ``meta``: uint8 bytes of a UTF-8 JSON object ``{"format": "gauntlet.crafted.v1",
      "attack": {"name", "norm", "eps", "params"}, "seed", "input_range", "seconds"}``.
    """
    meta = {
        "format": CRAFTED_FORMAT,
        "attack": _attack_document(crafted.attack),
        "seed": int(crafted.seed),
        "input_range": [float(crafted.input_range[0]), float(crafted.input_range[1])],
        "seconds": float(crafted.seconds),
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        example_ids=crafted.example_ids.numpy().astype(np.int64),
        labels=crafted.labels.numpy().astype(np.int64),
        adversarial_inputs=crafted.adversarial_inputs.numpy(),
        source_clean_predictions=crafted.source_clean_predictions.numpy().astype(np.int64),
        source_adversarial_predictions=(
            crafted.source_adversarial_predictions.numpy().astype(np.int64)
        ),
        meta=np.frombuffer(_canonical_json(meta).encode(), dtype=np.uint8),
    )
    return buffer.getvalue()


def _invalid(message: str) -> EngineInputError:
    return EngineInputError("crafted_invalid", f"Not a crafted-set artifact: {message}")


def crafted_from_bytes(data: bytes) -> CraftedSet:
    """Read an artifact written by :func:`crafted_to_bytes`; never unpickles.

    Raises:
        EngineInputError: ``crafted_invalid`` (not such an artifact, another format version,
            compressed or oversized entries, inconsistent arrays).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as error:
        raise _invalid(f"not a zip file ({error}).") from error
    names = sorted(info.filename for info in infos)
    expected = sorted(f"{name}.npy" for name in (*_ARRAYS, "meta"))
    if names != expected:
        raise _invalid(f"entries {names}, expected {expected}.")
    # np.savez stores entries: a deflated entry (a decompression bomb) is not ours.
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos) or sum(
        info.file_size for info in infos
    ) > len(data):
        raise _invalid("compressed or oversized entries.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in (*_ARRAYS, "meta")}
        meta = json.loads(arrays["meta"].tobytes().decode())
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise _invalid(f"{error}.") from error
    if not isinstance(meta, dict) or meta.get("format") != CRAFTED_FORMAT:
        raise _invalid(f"format {meta.get('format') if isinstance(meta, dict) else None!r}.")
    try:
        attack_meta = meta["attack"]
        attack = AttackConfig(
            str(attack_meta["name"]),
            str(attack_meta["norm"]),
            float(attack_meta["eps"]),
            dict(attack_meta["params"]),
        )
        seed = int(meta["seed"])
        low, high = (float(bound) for bound in meta["input_range"])
        seconds = float(meta.get("seconds", 0.0))
    except (KeyError, TypeError, ValueError) as error:
        raise _invalid(f"bad meta ({error}).") from error
    inputs = arrays["adversarial_inputs"]
    count = inputs.shape[0] if inputs.ndim >= 2 else -1
    for name in (
        "example_ids",
        "labels",
        "source_clean_predictions",
        "source_adversarial_predictions",
    ):
        if arrays[name].dtype != np.int64 or arrays[name].shape != (count,):
            raise _invalid(f"{name} is {arrays[name].dtype} {list(arrays[name].shape)}.")
    if inputs.dtype not in (np.float16, np.float32, np.float64) or count < 0:
        raise _invalid(f"adversarial_inputs is {inputs.dtype} {list(inputs.shape)}.")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise _invalid(f"input_range [{low}, {high}].")
    return CraftedSet(
        attack=attack,
        seed=seed,
        input_range=(low, high),
        example_ids=torch.from_numpy(arrays["example_ids"].copy()),
        labels=torch.from_numpy(arrays["labels"].copy()),
        adversarial_inputs=torch.from_numpy(inputs.copy()),
        source_clean_predictions=torch.from_numpy(arrays["source_clean_predictions"].copy()),
        source_adversarial_predictions=torch.from_numpy(
            arrays["source_adversarial_predictions"].copy()
        ),
        seconds=seconds,
    )
