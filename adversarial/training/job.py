"""A training job as one engine function: split the data, train, score, and export.

:func:`run_training` is what a jail runs for a ``train`` job: it takes a built model (a
zoo architecture, or an uploaded model to fine-tune), the examples and a JSON-able
:class:`TrainingPlan`, calls :func:`adversarial.training.train` with a checkpoint after
every epoch, and measures the model before and after on the held-out validation split:
clean accuracy, mean corruption accuracy and PGD-20 accuracy, which together show what
adversarial training buys and what it does not. It knows nothing of jobs or files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from adversarial.attacks import make_attack
from adversarial.corruptions import corruption_accuracy
from adversarial.errors import TrainingError
from adversarial.models.onnx import OnnxGraphModule
from adversarial.randomness import ExampleStreams
from adversarial.threat import make_threat_model
from adversarial.training.augmentation import AugmentationConfig
from adversarial.training.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes
from adversarial.training.data import TrainingData
from adversarial.training.loop import ProgressCallback, train
from adversarial.training.methods import method_config
from adversarial.training.optimizers import AdamConfig, OptimizerConfig, SGDConfig
from adversarial.training.records import EpochRecord
from adversarial.training.schedules import (
    ConstantSchedule,
    CosineSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    Schedule,
)
from adversarial.training.trainable import Trainable
from adversarial.training.validation import ValidationConfig

# The scores' robust accuracy: PGD-20 (random start) at the method's eps.
SCORE_PGD_STEPS = 20
# Natural training has no eps of its own: its robustness is measured at this L-inf eps as a
# fraction of the input range, so that a natural model's scores sit beside a robust one's.
NATURAL_SCORE_EPS_FRACTION = 0.1

CheckpointHook = Callable[[bytes, int], None]


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a train job asks of the engine, as plain data.

    ``method``, ``optimizer`` and ``schedule`` are ``{"name": ..., **parameters}`` documents;
    ``trainable`` is ``"all"`` or ``"last"``; ``validation`` holds ``fraction``, ``limit`` and
    ``pgd_steps``; ``augmentation`` the augmentation's fields or None.
    """

    method: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    schedule: Mapping[str, Any]
    epochs: int
    batch_size: int
    seed: int = 0
    trainable: str = "all"
    augmentation: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] = field(
        default_factory=lambda: {"fraction": 0.1, "limit": 1000, "pgd_steps": 10}
    )
    input_range: tuple[float, float] = (0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON; :meth:`from_json` reads it back."""
        document = asdict(self)
        document["input_range"] = list(self.input_range)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> TrainingPlan:
        """A plan from :meth:`to_json`'s output."""
        low, high = document.get("input_range", (0.0, 1.0))
        return cls(
            method=dict(document["method"]),
            optimizer=dict(document["optimizer"]),
            schedule=dict(document["schedule"]),
            epochs=int(document["epochs"]),
            batch_size=int(document["batch_size"]),
            seed=int(document.get("seed", 0)),
            trainable=str(document.get("trainable", "all")),
            augmentation=None
            if document.get("augmentation") is None
            else dict(document["augmentation"]),
            validation=dict(document.get("validation") or {}),
            input_range=(float(low), float(high)),
        )


@dataclass
class ModelScore:
    """Validation accuracies of one model: clean, under corruptions, under PGD-20."""

    role: str  # "trained" or "parent"
    clean_accuracy: float
    corruption_accuracy: float | None
    robust_accuracy: float | None


@dataclass
class TrainingOutcome:
    """What a training job measured (the model passed in holds the trained weights)."""

    records: list[EpochRecord]
    best_epoch: int | None
    stopped_early: bool
    weights_epoch: int
    warnings: list[dict[str, str]]
    gradient_computations: int
    seconds: float
    scores: list[ModelScore]
    resumed_from_epoch: int | None
    trainable_parameters: list[str]
    validation_examples: int


def _optimizer(document: Mapping[str, Any]) -> OptimizerConfig:
    params = {key: value for key, value in document.items() if key != "name"}
    if document.get("name") == "sgd":
        return SGDConfig(**params)
    if document.get("name") == "adam":
        return AdamConfig(**params)
    raise TrainingError("bad_training_config", f"Unknown optimizer {document.get('name')!r}.")


def _schedule(document: Mapping[str, Any]) -> Schedule:
    name = document.get("name")
    if name == "constant":
        return ConstantSchedule()
    if name == "multistep":
        return MultiStepSchedule(
            milestones=tuple(float(m) for m in document.get("milestones", (0.5, 0.75))),
            gamma=float(document.get("gamma", 0.1)),
        )
    if name == "cosine":
        return CosineSchedule(final_fraction=float(document.get("final_fraction", 0.0)))
    if name == "one_cycle":
        return OneCycleSchedule(peak_fraction=float(document.get("peak_fraction", 0.4)))
    raise TrainingError("bad_training_config", f"Unknown schedule {name!r}.")


def split_validation(
    x: torch.Tensor, y: torch.Tensor, *, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_valid, y_valid)``: a seeded ``fraction`` held out (at least one
    example, and only labeled ones: validation needs labels)."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    labeled = order[y[order] >= 0]
    count = min(max(1, round(fraction * x.shape[0])), max(labeled.numel() - 1, 0))
    if count < 1 or x.shape[0] - count < 1:
        raise TrainingError("bad_training_data", "Too few labeled examples to hold out any.")
    held_out = labeled[:count].sort().values
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[held_out] = False
    return x[keep], y[keep], x[held_out], y[held_out]


def trainable_parameters(model: nn.Module, which: str) -> Trainable:
    """What to train: ``"all"`` or ``"last"``; for an interpreted ONNX graph, its
    initializers become parameters (all of them, or the last layer's)."""
    graphs = [module for module in model.modules() if isinstance(module, OnnxGraphModule)]
    if not graphs:
        if which not in ("all", "last"):
            raise TrainingError("bad_training_config", f"trainable must be all or last: {which}")
        return "all" if which == "all" else "last"
    (graph,) = graphs
    names = graph.last_layer_initializers() if which == "last" else None
    return graph.make_trainable(names)


def score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    role: str,
    eps: float,
    norm: str,
    input_range: tuple[float, float],
    seed: int,
    device: torch.device,
) -> ModelScore:
    """Clean, mean corruption and PGD-20 accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    try:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            clean = float((model(x).argmax(dim=1) == y).float().mean())
        corruptions = None
        if x.dim() == 4:
            report = corruption_accuracy(
                model, x.cpu(), y.cpu(), seed=seed, device=device, input_range=input_range
            )
            corruptions = report.mean_accuracy
        threat = make_threat_model(norm, eps, *input_range)
        attack = make_attack("pgd", model, threat, {"steps": SCORE_PGD_STEPS})
        streams = ExampleStreams.for_examples(seed, torch.arange(x.shape[0]), "score")
        x_adv = attack(x, y, streams)
        with torch.no_grad():
            robust = float((model(x_adv).argmax(dim=1) == y).float().mean())
        return ModelScore(role, clean, corruptions, robust)
    finally:
        model.train(was_training)


def run_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: TrainingPlan,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    on_checkpoint: CheckpointHook | None = None,
    resume: bytes | None = None,
    score_parent: bool = False,
) -> TrainingOutcome:
    """Train ``model`` in place on ``(x, y)`` as ``plan`` says; see the module docstring.

    ``on_checkpoint(bytes, epoch)`` gets every epoch's checkpoint (pickle-free bytes); with
    ``resume`` (such bytes from an earlier attempt of the same job) training continues after
    that epoch and ends exactly as an uninterrupted run. ``score_parent`` also scores the
    model as it came in (a fine-tuned model's parent).

    Raises:
        TrainingError: the loop's codes (``bad_training_config``, ``bad_training_data``,
            ``training_diverged``, ``checkpoint_mismatch``, ...).
    """
    started = time.perf_counter()
    device = torch.device(device)
    model.to(device)
    validation = dict(plan.validation)
    x_train, y_train, x_valid, y_valid = split_validation(
        x, y, fraction=float(validation.get("fraction", 0.1)), seed=plan.seed
    )
    limit = int(validation.get("limit", 1000))
    x_valid, y_valid = x_valid[:limit], y_valid[:limit]
    method_document = dict(plan.method)
    name = str(method_document.pop("name"))
    method = method_config(name, **method_document)
    low, high = plan.input_range
    eps = float(method_document.get("eps", NATURAL_SCORE_EPS_FRACTION * (high - low)))
    norm = str(method_document.get("norm", "linf"))

    scores: list[ModelScore] = []
    if score_parent:
        scores.append(
            score(model, x_valid, y_valid, role="parent", eps=eps, norm=norm,
                  input_range=plan.input_range, seed=plan.seed, device=device)
        )  # fmt: skip

    def hook(record: EpochRecord, checkpoint: Checkpoint) -> None:
        if on_checkpoint is not None:
            on_checkpoint(checkpoint_to_bytes(checkpoint), record.epoch)

    resumed = checkpoint_from_bytes(resume) if resume is not None else None
    result = train(
        model,
        TrainingData(
            inputs=x_train,
            labels=y_train,
            validation_inputs=x_valid,
            validation_labels=y_valid,
            input_range=plan.input_range,
        ),
        method,
        schedule=_schedule(plan.schedule),
        optimizer=_optimizer(plan.optimizer),
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        seed=plan.seed,
        device=device,
        trainable=trainable_parameters(model, plan.trainable),
        augmentation=_augmentation(plan.augmentation),
        validation=ValidationConfig(
            limit=None, pgd_steps=int(validation.get("pgd_steps", 10)), eps=eps, norm=norm
        ),
        epoch_hook=hook,
        progress=progress,
        resume=resumed,
    )
    scores.append(
        score(model, x_valid, y_valid, role="trained", eps=eps, norm=norm,
              input_range=plan.input_range, seed=plan.seed, device=device)
    )  # fmt: skip
    return TrainingOutcome(
        records=result.records,
        best_epoch=None if result.best is None else result.best.epoch,
        stopped_early=result.stopped_early,
        weights_epoch=result.weights_epoch,
        warnings=[{"code": w.code, "message": w.message} for w in result.warnings],
        gradient_computations=result.gradient_computations,
        seconds=time.perf_counter() - started,
        scores=scores,
        resumed_from_epoch=None if resumed is None else resumed.epochs_done,
        trainable_parameters=result.trainable_parameters,
        validation_examples=int(x_valid.shape[0]),
    )


def _augmentation(document: Mapping[str, Any] | None) -> AugmentationConfig | None:
    if not document:
        return None
    return AugmentationConfig(
        crop_padding=int(document.get("crop_padding", 0)),
        horizontal_flip=bool(document.get("horizontal_flip", False)),
        rotation_degrees=float(document.get("rotation_degrees", 0.0)),
    )


def outcome_document(outcome: TrainingOutcome) -> dict[str, Any]:
    """The outcome as JSON (what a jail sends back)."""
    return {
        "epochs": [
            {
                "epoch": r.epoch,
                "loss": r.loss,
                "clean_accuracy": r.clean_accuracy,
                "robust_accuracy": r.robust_accuracy,
                "fgsm_accuracy": r.fgsm_accuracy,
                "lr": r.lr,
                "seconds": round(r.seconds, 4),
                "validation_seconds": round(r.validation_seconds, 4),
                "gradient_computations": r.gradient_computations,
            }
            for r in outcome.records
        ],
        "best_epoch": outcome.best_epoch,
        "stopped_early": outcome.stopped_early,
        "weights_epoch": outcome.weights_epoch,
        "warnings": outcome.warnings,
        "gradient_computations": outcome.gradient_computations,
        "seconds": round(outcome.seconds, 4),
        "scores": [asdict(s) for s in outcome.scores],
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "trainable_parameters": outcome.trainable_parameters,
        "validation_examples": outcome.validation_examples,
    }
