"""Robustness evaluation: clean accuracy, then each attack on the points still correct.

An example already misclassified on clean input counts as non-robust and never costs a
gradient. Each configured attack is reported on its own (raw numbers, so that validity
checks can see a weak or masked attack). Ensembles (the ``autoattack`` preset) run their
components cheapest first on the points every earlier component failed on, and carry an
example fooled at a smaller eps over to the larger ones (its adversarial input lies inside
the larger ball too). The per-example worst case over all attacks of a norm is reported per
eps, and is non-increasing in eps by the same argument.

Every adversarial input is checked before it counts (finite, inside its ball and the input
range; :mod:`adversarial.verification`) and predicted in a fresh forward pass. A prediction
whose logits are not all finite is no prediction: the example counts as misclassified.
Randomness is drawn per example (:class:`~adversarial.randomness.ExampleStreams`, keyed by
the seed and each example's id), so the numbers do not depend on the batch size, an
out-of-memory halving, a shard or the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adversarial.attacks import make_attack
from adversarial.randomness import ExampleStreams
from adversarial.threat import ThreatModel, make_threat_model
from adversarial.verification import verify_adversarial

# progress(fraction in [0, 1], stage, message). A callback may raise to abort the evaluation
# (cancellation): the exception propagates unchanged.
ProgressCallback = Callable[[float, str, str], None]

# Attacks that only query the model (no backward pass): a query costs about a third of a
# gradient step, which decides the order of ensemble components.
FORWARD_ONLY_ATTACKS = frozenset({"square"})

# Ensembles: name -> components (attack name, default params). AutoAttack's standard version
# (Croce & Hein 2020) without FAB-T: APGD-CE, APGD-T (DLR, 9 target classes), Square (5000
# queries). ``params`` of an ensemble config may override ``steps``, ``restarts``,
# ``target_classes`` and ``queries``.
ENSEMBLES: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "autoattack": (
        ("apgd-ce", {"steps": 100, "restarts": 1}),
        ("apgd-t", {"steps": 100, "target_classes": 9, "restarts": 1}),
        ("square", {"queries": 5000, "p_init": 0.8}),
    ),
}
_ENSEMBLE_OVERRIDES = {
    "apgd-ce": ("steps", "restarts"),
    "apgd-t": ("steps", "target_classes", "restarts"),
    "square": ("queries",),
}


@dataclass(frozen=True)
class AttackConfig:
    """One attack at one eps: ``name`` from the attack registry (or an ensemble)."""

    name: str
    norm: str
    eps: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short human-readable name, such as ``pgd linf eps=0.1``."""
        return f"{self.name} {self.norm} eps={self.eps:g}"

    @property
    def family(self) -> tuple[str, str, str]:
        """Configs that differ only in eps (one curve)."""
        return (self.name, self.norm, repr(sorted(self.params.items())))


@dataclass
class ComponentOutcome:
    """One ensemble component: robust accuracy after it (cumulative) and its time;
    ``survivors`` marks the examples still robust after it (``[N]``)."""

    name: str
    robust_accuracy: float
    seconds: float
    survivors: torch.Tensor | None = None


@dataclass
class AttackOutcome:
    """What one attack configuration did to the evaluated examples.

    ``robust`` is the per-example mask (correct under attack). Confidence is the mean softmax
    probability of the predicted class over examples misclassified under attack; perturbation
    norms are over the examples the attack fooled (those it turned from correct to wrong).
    ``fooled_indices``/``fooled_inputs`` hold the adversarial inputs of the fooled examples;
    ``confidences`` and ``norms`` are the per-example values the means come from (what a
    merge of shards needs, :func:`aggregate_outcome`).
    """

    config: AttackConfig
    robust: torch.Tensor
    adversarial_predictions: torch.Tensor
    robust_accuracy: float
    success_rate: float | None
    mean_wrong_confidence: float | None
    mean_perturbation_norm: float | None
    max_perturbation_norm: float | None
    per_class_accuracy: list[float | None]
    confusion: list[list[int]] | None
    seconds: float
    fooled_indices: torch.Tensor
    fooled_inputs: torch.Tensor
    components: list[ComponentOutcome] = field(default_factory=list)
    confidences: torch.Tensor | None = None
    norms: torch.Tensor | None = None


@dataclass
class WorstCase:
    """Per-example worst case over every attack of one norm at eps or smaller."""

    norm: str
    eps: float
    attacks: list[str]
    robust_accuracy: float


@dataclass
class NoiseOutcome:
    """Accuracy under random noise of the same size: the floor every attack must beat."""

    norm: str
    eps: float
    accuracy: float
    correct: torch.Tensor | None = None


@dataclass
class PerSample:
    """Per norm and example: the smallest eps at which any attack fooled it (0 when the clean
    input is already wrong, ``inf`` when none did), that adversarial input and its prediction."""

    norm: str
    fell_at: torch.Tensor
    adversarial_inputs: torch.Tensor
    adversarial_predictions: torch.Tensor
    adversarial_confidences: torch.Tensor


@dataclass
class EvaluationResult:
    """Clean accuracy and every attack's outcome on the same examples."""

    num_examples: int
    clean_accuracy: float
    clean_correct: torch.Tensor
    clean_predictions: torch.Tensor
    clean_confidences: torch.Tensor
    per_class_clean_accuracy: list[float | None]
    outcomes: list[AttackOutcome]
    worst_cases: list[WorstCase]
    noise: list[NoiseOutcome]
    per_sample: list[PerSample]
    seconds: float
    batch_size: int = 0
    final_batch_size: int = 0
    non_finite_predictions: int = 0
    verification_seconds: float = 0.0


def per_class_accuracy(
    correct: torch.Tensor, y: torch.Tensor, num_classes: int
) -> list[float | None]:
    """Accuracy for each class; ``None`` for a class with no examples."""
    result: list[float | None] = []
    for cls in range(num_classes):
        members = y == cls
        count = int(members.sum())
        result.append(int(correct[members].sum()) / count if count else None)
    return result


def confusion_matrix(
    y: torch.Tensor, predictions: torch.Tensor, num_classes: int
) -> list[list[int]]:
    """Counts of (true class, predicted class); examples without a valid prediction (non-finite
    logits, prediction -1) are left out."""
    valid = predictions >= 0
    flat = torch.bincount(
        y[valid] * num_classes + predictions[valid], minlength=num_classes * num_classes
    )
    matrix: list[list[int]] = flat.view(num_classes, num_classes).tolist()
    return matrix


def _nan_mean(values: torch.Tensor) -> float | None:
    """The mean of the finite values, ``None`` when there are none."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


def _mean(mask: torch.Tensor) -> float:
    # Exact k / N in double precision (float32 means print as 0.9888888597...).
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class _Batches:
    """Runs work in batches, halving the batch size when the device runs out of memory."""

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.batch_size = max(1, batch_size)
        self.device = device

    def run(self, count: int, work: Callable[[slice], None]) -> None:
        start = 0
        while start < count:
            part = slice(start, min(start + self.batch_size, count))
            try:
                work(part)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _is_out_of_memory(error) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = part.stop


def initial_batch_size(requested: int | None, example: torch.Tensor, device: torch.device) -> int:
    """The requested batch size, or on a GPU one sized to a quarter of its free memory.

    An attack step keeps a few copies of the batch plus the model's activations; the
    quarter leaves room for those, and the out-of-memory backoff corrects the rest.
    """
    if requested:
        return requested
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        per_example = example.numel() * example.element_size() * 64  # activations, copies
        return int(max(32, min(4096, free // 4 // max(per_example, 1))))
    return 256


class _Progress:
    """Turns units of work done into calls of a progress callback."""

    def __init__(self, callback: ProgressCallback | None, total: float) -> None:
        self.callback = callback
        self.total = max(total, 1.0)
        self.done = 0.0
        self.stage = "clean"
        self.message = ""

    def advance(self, units: float) -> None:
        self.done += units
        if self.callback is not None:
            self.callback(min(self.done / self.total, 1.0), self.stage, self.message)

    def skip_to(self, units_done: float) -> None:
        # Early stopping finishes an attack before its planned steps: jump to its end.
        self.done = max(self.done, units_done)
        self.advance(0)


class _Evaluator:
    """Holds what every attack run shares: model, data, device, batching, progress."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        num_classes: int,
        input_range: tuple[float, float],
        batches: _Batches,
        seed: int,
        tracker: _Progress,
        example_ids: torch.Tensor,
    ) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.num_classes = num_classes
        self.input_range = input_range
        self.batches = batches
        self.device = batches.device
        self.seed = seed
        self.tracker = tracker
        self.example_ids = example_ids
        self.non_finite_predictions = 0
        self.verification_seconds = 0.0
        # Ensemble family -> per example, the smallest eps fooled so far and that input.
        self.carried: dict[tuple[str, str, str], dict[int, tuple[float, torch.Tensor]]] = {}

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and softmax confidences, in batches on the device. A row whose logits
        are not all finite gets prediction -1 (wrong for every label) and confidence NaN."""
        predictions = torch.empty(x.shape[0], dtype=torch.long)
        confidences = torch.empty(x.shape[0])

        def work(part: slice) -> None:
            logits = self.model(x[part].to(self.device)).float()
            finite = torch.isfinite(logits).all(dim=1)
            confidence, predicted = logits.softmax(dim=1).max(dim=1)
            predictions[part] = torch.where(finite, predicted, -1).cpu()
            confidences[part] = torch.where(finite, confidence, torch.nan).cpu()
            self.non_finite_predictions += int((~finite).sum())

        self.batches.run(x.shape[0], work)
        return predictions, confidences

    def attack_points(
        self, name: str, threat: ThreatModel, params: Mapping[str, Any], indices: torch.Tensor
    ) -> torch.Tensor:
        """Adversarial inputs for the examples ``indices`` (CPU), from attack ``name``; each
        example draws from its own stream (seed, example id, attack name)."""
        attack = make_attack(name, self.model, threat, dict(params), on_step=self.tracker.advance)
        result = torch.empty((indices.numel(), *self.x.shape[1:]), dtype=self.x.dtype)

        def work(part: slice) -> None:
            batch = indices[part]
            random = ExampleStreams.for_examples(self.seed, self.example_ids[batch], name)
            x_adv = attack(self.x[batch].to(self.device), self.y[batch].to(self.device), random)
            result[part] = x_adv.cpu()

        self.batches.run(indices.numel(), work)
        return result

    def run(
        self,
        config: AttackConfig,
        attacked: torch.Tensor,
        clean_predictions: torch.Tensor,
        clean_confidences: torch.Tensor,
    ) -> AttackOutcome:
        """Evaluate one config on the clean-correct examples ``attacked``."""
        started = time.perf_counter()
        threat = make_threat_model(config.norm, config.eps, *self.input_range)
        adversarial = self.x.clone()
        components: list[ComponentOutcome] = []
        if config.name in ENSEMBLES:
            components = self._run_ensemble(config, threat, attacked, adversarial)
        elif attacked.numel():
            adversarial[attacked] = self.attack_points(config.name, threat, config.params, attacked)

        # Only attacked points changed: check and predict those afresh; the rest keep their
        # clean prediction.
        adversarial_predictions = clean_predictions.clone()
        confidences = clean_confidences.clone()
        if attacked.numel():
            checking = time.perf_counter()
            verify_adversarial(threat, adversarial[attacked], self.x[attacked], config.label)
            predicted, confidence = self.predict(adversarial[attacked])
            self.verification_seconds += time.perf_counter() - checking
            adversarial_predictions[attacked] = predicted
            confidences[attacked] = confidence
        norms = threat.distance(adversarial, self.x).float()
        attacked_mask = torch.zeros(self.x.shape[0], dtype=torch.bool)
        attacked_mask[attacked] = True
        fooled = attacked_mask & (adversarial_predictions != self.y)
        return aggregate_outcome(
            config,
            y=self.y,
            num_classes=self.num_classes,
            attacked=attacked_mask,
            adversarial_predictions=adversarial_predictions,
            confidences=confidences,
            norms=norms,
            fooled_inputs=adversarial[fooled.nonzero().squeeze(1)],
            components=components,
            seconds=time.perf_counter() - started,
        )

    def _run_ensemble(
        self,
        config: AttackConfig,
        threat: ThreatModel,
        attacked: torch.Tensor,
        adversarial: torch.Tensor,
    ) -> list[ComponentOutcome]:
        """Run an ensemble's components cheapest first, each on the survivors only; writes the
        adversarial inputs it found into ``adversarial``."""
        carried = self.carried.setdefault(config.family, {})
        survivors = []
        for index in attacked.tolist():
            earlier = carried.get(index)
            if earlier is not None and earlier[0] <= config.eps:
                adversarial[index] = earlier[1]
            else:
                survivors.append(index)
        remaining = torch.tensor(survivors, dtype=torch.long)
        components = []
        for name, params in ensemble_components(config, self.num_classes):
            started = time.perf_counter()
            self.tracker.message = f"{config.label}: {name}"
            if remaining.numel():
                found = self.attack_points(name, threat, params, remaining)
                predicted, _ = self.predict(found)
                fooled = predicted != self.y[remaining]
                adversarial[remaining[fooled]] = found[fooled]
                for index, point in zip(remaining[fooled].tolist(), found[fooled], strict=True):
                    carried[index] = (config.eps, point)
                remaining = remaining[~fooled]
            survivors_mask = torch.zeros(self.x.shape[0], dtype=torch.bool)
            survivors_mask[remaining] = True
            components.append(
                ComponentOutcome(
                    name=name,
                    robust_accuracy=remaining.numel() / self.x.shape[0],
                    seconds=time.perf_counter() - started,
                    survivors=survivors_mask,
                )
            )
        return components


def aggregate_outcome(
    config: AttackConfig,
    *,
    y: torch.Tensor,
    num_classes: int,
    attacked: torch.Tensor,
    adversarial_predictions: torch.Tensor,
    confidences: torch.Tensor,
    norms: torch.Tensor,
    fooled_inputs: torch.Tensor,
    components: Sequence[ComponentOutcome],
    seconds: float,
) -> AttackOutcome:
    """An attack's outcome from its per-example arrays (``attacked``: the clean-correct
    mask; the others ``[N]``, ``fooled_inputs`` in example order): the one arithmetic that
    an evaluation and a merge of its shards share, so both give the same numbers."""
    robust = adversarial_predictions == y
    fooled = attacked & ~robust
    wrong = ~robust
    count = y.shape[0]
    return AttackOutcome(
        config=config,
        robust=robust,
        adversarial_predictions=adversarial_predictions,
        robust_accuracy=_mean(robust),
        success_rate=_mean(fooled[attacked]) if attacked.any() else None,
        mean_wrong_confidence=_nan_mean(confidences[wrong]),
        mean_perturbation_norm=float(norms[fooled].mean()) if fooled.any() else None,
        max_perturbation_norm=float(norms[fooled].max()) if fooled.any() else None,
        per_class_accuracy=per_class_accuracy(robust, y, num_classes),
        confusion=(
            confusion_matrix(y, adversarial_predictions, num_classes)
            if num_classes <= 100
            else None
        ),
        seconds=seconds,
        fooled_indices=fooled.nonzero().squeeze(1),
        fooled_inputs=fooled_inputs,
        components=[
            ComponentOutcome(
                name=c.name,
                robust_accuracy=(
                    int(c.survivors.sum()) / count if c.survivors is not None else c.robust_accuracy
                ),
                seconds=c.seconds,
                survivors=c.survivors,
            )
            for c in components
        ],
        confidences=confidences,
        norms=norms,
    )


def ensemble_components(config: AttackConfig, num_classes: int) -> list[tuple[str, dict[str, Any]]]:
    """An ensemble's components with the config's overrides, cheapest first."""
    components = []
    for name, defaults in ENSEMBLES[config.name]:
        params = dict(defaults)
        for key in _ENSEMBLE_OVERRIDES.get(name, ()):
            if key in config.params:
                params[key] = config.params[key]
        if name == "apgd-t":
            if num_classes < 3:
                continue  # the targeted DLR loss needs a third class
            params["target_classes"] = min(int(params["target_classes"]), num_classes - 1)
        components.append((name, params))
    return sorted(components, key=lambda item: _cost(item[0], item[1]))


def _cost(name: str, params: Mapping[str, Any]) -> float:
    """Planned work per example, in gradient-step equivalents."""
    steps = float(params.get("steps", params.get("queries", 1)))
    steps *= float(params.get("restarts", 1)) * float(params.get("target_classes", 1))
    return steps / 3 if name in FORWARD_ONLY_ATTACKS else steps


def planned_steps(config: AttackConfig, num_classes: int) -> int:
    """Steps (gradient steps or queries) a config plans per attacked example."""
    if config.name in ENSEMBLES:
        return sum(
            _planned(name, params) for name, params in ensemble_components(config, num_classes)
        )
    return _planned(config.name, config.params)


def _planned(name: str, params: Mapping[str, Any]) -> int:
    probe = make_threat_model("linf", 0.0)
    return make_attack(name, nn.Identity(), probe, dict(params)).planned_steps()


def noise_baseline(evaluator: _Evaluator, norm: str, eps: float) -> NoiseOutcome:
    """Accuracy under uniformly random directions of size ``eps`` (signs for L-inf), drawn
    per example."""
    x = evaluator.x
    lower, upper = evaluator.input_range
    random = ExampleStreams.for_examples(evaluator.seed, evaluator.example_ids, "noise", norm)
    if norm == "linf":
        noisy = x + eps * random.signs(x.shape[1:], dtype=x.dtype, device="cpu")
    else:
        direction = random.normal(x.shape[1:], dtype=x.dtype, device="cpu")
        direction /= direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        noisy = x + eps * direction
    predictions, _ = evaluator.predict(noisy.clamp(lower, upper))
    correct = predictions == evaluator.y
    return NoiseOutcome(norm=norm, eps=eps, accuracy=_mean(correct), correct=correct)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    configs: Sequence[AttackConfig],
    *,
    num_classes: int,
    input_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: ProgressCallback | None = None,
    example_ids: torch.Tensor | None = None,
) -> EvaluationResult:
    """Measure clean and robust accuracy of ``model`` on ``(x, y)`` under each attack config.

    ``x`` is ``[N, C, H, W]`` inside ``input_range`` on any device, ``y`` ``[N]``. Attacks run
    only on the examples the model classifies correctly on clean input, in batches on
    ``device`` (``batch_size``, or sized to the GPU's free memory, halved on out-of-memory).
    ``example_ids`` (default ``0..N-1``; the dataset indices, for subsets and shards) key each
    example's random stream. Results depend only on the inputs, the ids and ``seed``, not on
    the batch size or the device.
    """
    started = time.perf_counter()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        x = x.detach().cpu()
        y = y.detach().cpu().long()
        batches = _Batches(initial_batch_size(batch_size, x[:1], device), device)
        first_batch_size = batches.batch_size
        tracker = _Progress(progress, 1.0)
        ids = torch.arange(x.shape[0]) if example_ids is None else example_ids.detach().cpu()
        if ids.shape != (x.shape[0],):
            raise ValueError(f"example_ids must have shape [{x.shape[0]}], got {list(ids.shape)}")
        evaluator = _Evaluator(
            model,
            x,
            y,
            num_classes=num_classes,
            input_range=input_range,
            batches=batches,
            seed=seed,
            tracker=tracker,
            example_ids=ids.long(),
        )
        clean_predictions, clean_confidences = evaluator.predict(x)
        clean_correct = clean_predictions == y
        attacked = clean_correct.nonzero().squeeze(1)

        # Progress in "example-step" units, so it moves evenly across attacks.
        plans = [planned_steps(c, num_classes) for c in configs]
        noise_keys = sorted({(c.norm, c.eps) for c in configs})
        tracker.total = max(x.shape[0] * (1 + len(noise_keys)) + sum(plans) * attacked.numel(), 1)
        tracker.advance(x.shape[0])

        outcomes = []
        for config, planned in zip(configs, plans, strict=True):
            tracker.stage = config.name
            tracker.message = config.label
            end_of_attack = tracker.done + planned * attacked.numel()
            outcomes.append(evaluator.run(config, attacked, clean_predictions, clean_confidences))
            tracker.skip_to(end_of_attack)

        tracker.stage, tracker.message = "noise", "random-noise baseline"
        noise = []
        for norm, eps in noise_keys:
            noise.append(noise_baseline(evaluator, norm, eps))
            tracker.advance(x.shape[0])

        return EvaluationResult(
            num_examples=x.shape[0],
            clean_accuracy=_mean(clean_correct),
            clean_correct=clean_correct,
            clean_predictions=clean_predictions,
            clean_confidences=clean_confidences,
            per_class_clean_accuracy=per_class_accuracy(clean_correct, y, num_classes),
            outcomes=outcomes,
            worst_cases=worst_cases(outcomes, clean_correct),
            noise=noise,
            per_sample=per_sample(
                evaluator, outcomes, clean_correct, clean_predictions, clean_confidences
            ),
            seconds=time.perf_counter() - started,
            batch_size=first_batch_size,
            final_batch_size=batches.batch_size,
            non_finite_predictions=evaluator.non_finite_predictions,
            verification_seconds=evaluator.verification_seconds,
        )
    finally:
        model.train(was_training)


def worst_cases(outcomes: Sequence[AttackOutcome], clean_correct: torch.Tensor) -> list[WorstCase]:
    """Per norm and eps: robust only if no attack at that eps or smaller fooled the example."""
    cases = []
    for norm in sorted({o.config.norm for o in outcomes}):
        members = sorted((o for o in outcomes if o.config.norm == norm), key=lambda o: o.config.eps)
        robust = clean_correct.clone()
        labels: list[str] = []
        for eps in sorted({o.config.eps for o in members}):
            for outcome in members:
                if outcome.config.eps == eps:
                    robust &= outcome.robust
                    labels.append(outcome.config.label)
            cases.append(
                WorstCase(norm=norm, eps=eps, attacks=list(labels), robust_accuracy=_mean(robust))
            )
    return cases


def per_sample(
    evaluator: _Evaluator,
    outcomes: Sequence[AttackOutcome],
    clean_correct: torch.Tensor,
    clean_predictions: torch.Tensor,
    clean_confidences: torch.Tensor,
) -> list[PerSample]:
    """For each norm, each example's first fall (smallest eps, over all attacks)."""
    summaries = []
    for norm in sorted({o.config.norm for o in outcomes}):
        fell_at = torch.where(clean_correct, math.inf, 0.0).double()
        inputs = evaluator.x.clone()
        for outcome in outcomes:
            if outcome.config.norm != norm or not outcome.fooled_indices.numel():
                continue
            earlier = outcome.config.eps < fell_at[outcome.fooled_indices]
            indices = outcome.fooled_indices[earlier]
            fell_at[indices] = outcome.config.eps
            inputs[indices] = outcome.fooled_inputs[earlier]
        predictions, confidences = clean_predictions.clone(), clean_confidences.clone()
        changed = torch.isfinite(fell_at) & clean_correct
        if changed.any():
            predictions[changed], confidences[changed] = evaluator.predict(inputs[changed])
        summaries.append(
            PerSample(
                norm=norm,
                fell_at=fell_at,
                adversarial_inputs=inputs,
                adversarial_predictions=predictions,
                adversarial_confidences=confidences,
            )
        )
    return summaries
