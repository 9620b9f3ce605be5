"""The training loop: one loop for every method, which is a strategy over it.

The loop owns what every method shares: the data order and augmentation, the optimizer and
its schedule, the random streams, the per-epoch validation, checkpoints and resume,
catastrophic-overfitting stops, timing and the gradient-computation count. A method
(:mod:`adversarial.training.methods`) decides what happens to one minibatch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from adversarial.errors import TrainingError
from adversarial.threat import ThreatModel, make_threat_model
from adversarial.training.augmentation import AugmentationConfig, augment
from adversarial.training.checkpoint import Checkpoint
from adversarial.training.counting import GradientCounter
from adversarial.training.data import TrainingData
from adversarial.training.methods import (
    METHODS,
    AdversarialConfig,
    Method,
    MethodConfig,
    MethodContext,
    Updater,
    make_method,
)
from adversarial.training.optimizers import OptimizerConfig, build_optimizer
from adversarial.training.overfitting import (
    OverfittingRule,
    RobustnessCheck,
    detect_catastrophic_overfitting,
)
from adversarial.training.records import (
    BestSoFar,
    EpochRecord,
    TrainingResult,
    TrainingWarning,
)
from adversarial.training.rng import RandomStreams, forked_global_rng
from adversarial.training.schedules import Schedule
from adversarial.training.trainable import Trainable, TrainableSelection
from adversarial.training.validation import ValidationConfig, timed_validate

# progress(fraction in [0, 1], stage, message); it may raise to cancel the run, and the
# exception propagates unchanged (the model is left in eval mode, hooks removed).
ProgressCallback = Callable[[float, str, str], None]
# epoch_hook(record, checkpoint) after every epoch: the checkpoint is a snapshot that
# later epochs do not change, ready for checkpoint_to_bytes.
EpochHook = Callable[[EpochRecord, Checkpoint], None]

# Progress calls per epoch, at most: enough for a smooth bar, few enough to cost nothing.
_PROGRESS_CALLS_PER_EPOCH = 50


def train(
    model: nn.Module,
    data: TrainingData,
    method: MethodConfig,
    *,
    schedule: Schedule,
    optimizer: OptimizerConfig,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    trainable: Trainable = "all",
    augmentation: AugmentationConfig | None = None,
    validation: ValidationConfig | None = ValidationConfig(),
    epoch_hook: EpochHook | None = None,
    progress: ProgressCallback | None = None,
    resume: Checkpoint | None = None,
) -> TrainingResult:
    """Train ``model`` in place with ``method`` and return the run's records.

    Args:
        model: the classifier (inputs in ``data.input_range``, logits ``[N, K]``); moved to
            ``device`` and trained in place; left in eval mode.
        data: training examples and, optionally, validation examples.
        method: a method configuration (``NaturalConfig``, ``FGSMConfig``, ``PGDConfig``,
            ``FreeConfig``, ``FastConfig``, ``TradesConfig``, ``VATConfig``; or
            ``method_config(name, **params)``).
        schedule: the learning-rate schedule, stepped per update (see
            :mod:`adversarial.training.schedules`).
        optimizer: ``SGDConfig`` or ``AdamConfig``; its ``lr`` is the schedule's base.
        epochs: the budget in epochs of natural training. Every method runs that many loop
            epochs except Free-AT, which runs ``ceil(epochs / replays)`` (each replays every
            minibatch ``replays`` times).
        batch_size: examples per minibatch; the data is reshuffled every epoch and the last
            minibatch may be smaller.
        seed: every random draw derives from it (see :mod:`adversarial.training.rng`);
            the same arguments and seed give bit-identical results on a CPU.
        device: where to train.
        trainable: ``"all"``, ``"last"`` (the last ``nn.Linear``, or the last module with
            parameters) or an iterable of the model's parameters; the others are frozen.
        augmentation: per-minibatch augmentation, or None.
        validation: how to validate after each epoch, when ``data`` has a validation
            split (default: up to 1,000 examples, PGD-10 and FGSM at the method's eps);
            None skips validation. A method that stops on catastrophic overfitting needs it.
        epoch_hook: called after every epoch with its record and a checkpoint.
        progress: called during epochs; may raise to cancel.
        resume: a checkpoint of this same run (same arguments); training continues after
            its last epoch and ends exactly as the uninterrupted run would.

    Returns:
        The records, totals, best epoch, warnings and final checkpoint
        (:class:`TrainingResult`). The epoch records' ``seconds`` time the training
        only; validation is timed separately.

    Raises:
        TrainingError: ``bad_training_config``, ``bad_training_data``, ``unlabeled_examples``,
            ``labels_out_of_range``, ``bad_model_output``, ``no_trainable_parameters``,
            ``unknown_method``, ``checkpoint_mismatch``, ``bad_checkpoint``,
            ``training_diverged`` (a non-finite loss).
    """
    run = _TrainingRun(
        model,
        data,
        method,
        schedule=schedule,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=torch.device(device),
        trainable=trainable,
        augmentation=augmentation,
        validation=validation,
        epoch_hook=epoch_hook,
        progress=progress,
    )
    return run.execute(resume)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError(
            "bad_training_config", f"{name} must be an integer >= 1, got {value!r}."
        )
    return value


def _as_json(value: object) -> Any:
    # Tuples become lists, as they will after a round trip through a checkpoint's JSON.
    return json.loads(json.dumps(value))


def _settings_json(value: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = _as_json(value)
    return converted


def _config_json(config: Any) -> dict[str, Any]:
    return {"name": getattr(config, "name", type(config).__name__), **_as_json(asdict(config))}


class _TrainingRun:
    """One call of :func:`train`: the set-up objects and the state that checkpoints hold."""

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        method: MethodConfig,
        *,
        schedule: Schedule,
        optimizer: OptimizerConfig,
        epochs: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        trainable: Trainable,
        augmentation: AugmentationConfig | None,
        validation: ValidationConfig | None,
        epoch_hook: EpochHook | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TrainingError("bad_training_config", f"seed must be an integer, got {seed!r}.")
        entry = METHODS.get(getattr(method, "name", ""))
        if entry is None or not isinstance(method, entry[0]):
            raise TrainingError("unknown_method", f"Not a training method config: {method!r}.")
        data.check(allow_unlabeled=not entry[1].needs_labels)
        self.model = model
        self.data = data
        self.config = method
        self.schedule = schedule
        self.optimizer_config = optimizer
        self.seed = seed
        self.device = device
        self.augmentation = augmentation if augmentation and augmentation.enabled else None
        self.validation = validation if data.has_validation else None
        self.epoch_hook = epoch_hook
        self.progress = progress
        self.trainable = trainable

        model.to(device)
        data.check_classes(self._num_classes())
        self.memory_format = _training_memory_format(model, device)
        self.inputs = data.inputs.to(device).to(memory_format=self.memory_format)
        self.labels = data.labels.to(device)
        self.examples = int(self.inputs.shape[0])
        self.batches = math.ceil(self.examples / self.batch_size)
        self.threat = self._training_threat()
        self.validation_inputs = torch.empty(0)
        self.validation_labels = torch.empty(0, dtype=torch.int64)
        if (
            self.validation is not None
            and data.validation_inputs is not None
            and data.validation_labels is not None
        ):
            self.validation_inputs = data.validation_inputs[: self.validation.limit]
            self.validation_labels = data.validation_labels[: self.validation.limit]

    def _num_classes(self) -> int:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(self.data.inputs[:1].to(self.device))
        finally:
            self.model.train(was_training)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
            shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise TrainingError(
                "bad_model_output", f"The model must return logits [N, K], got {shape}."
            )
        return int(logits.shape[1])

    def _training_threat(self) -> ThreatModel | None:
        if not isinstance(self.config, AdversarialConfig):
            return None
        low, high = self.data.input_range
        return make_threat_model(self.config.norm, self.config.eps, low, high)

    def _validation_threat(self) -> ThreatModel | None:
        if self.validation is None:
            return None
        adversarial = self.config if isinstance(self.config, AdversarialConfig) else None
        eps = self.validation.eps if self.validation.eps is not None else None
        if eps is None and adversarial is not None:
            eps = adversarial.eps
        if eps is None:
            return None
        norm = self.validation.norm or (adversarial.norm if adversarial else "linf")
        low, high = self.data.input_range
        try:
            return make_threat_model(norm, eps, low, high)
        except ValueError as error:
            raise TrainingError("bad_training_config", f"validation: {error}.") from None

    def _run_settings(self, method: Method[Any], trainable_names: list[str]) -> dict[str, Any]:
        return _settings_json(
            {
                "method": method.describe(),
                "optimizer": _config_json(self.optimizer_config),
                "schedule": _config_json(self.schedule),
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "seed": self.seed,
                "augmentation": None
                if self.augmentation is None
                else _config_json(self.augmentation),
                "validation": None if self.validation is None else asdict(self.validation),
                "trainable": trainable_names,
                "data": self.data.summary(),
            }
        )

    def execute(self, resume: Checkpoint | None) -> TrainingResult:
        """Run (or finish) the training and return its result."""
        selection = TrainableSelection(self.model, self.trainable)
        counter: GradientCounter | None = None
        _set_memory_format(self.model, self.memory_format)
        try:
            with forked_global_rng(self.device):
                optimizer = build_optimizer(self.optimizer_config, selection.parameters)
                streams = RandomStreams(self.seed, self.device)
                updater = Updater(
                    optimizer,
                    self.schedule,
                    base_lr=self.optimizer_config.lr,
                    updates_per_epoch=self.batches,
                    total_updates=1,
                )
                context = MethodContext(
                    self.model, self.threat, streams.method, updater, self.batch_size
                )
                method = make_method(self.config, context)
                loop_epochs = method.loop_epochs(self.epochs)
                updater.total_updates = loop_epochs * self.batches * method.updates_per_batch
                updater.last_lr = updater.next_lr()
                state = _RunState(self._run_settings(method, selection.names))
                if resume is None:
                    streams.seed_global()
                else:
                    state.restore(resume, self.model, optimizer, updater, streams, method)
                counter = GradientCounter(self.model)
                rule = method.overfitting_rule
                validation_threat = self._validation_threat()
                if (
                    rule is not None
                    and resume is None
                    and (
                        validation_threat is None
                        or self.validation is None
                        or not self.validation.fgsm
                    )
                ):
                    state.warnings.append(
                        TrainingWarning(
                            "overfitting_check_unavailable",
                            f"The {method.name} method stops on catastrophic overfitting, "
                            "but the run has no robust validation (validation examples, an "
                            "eps and FGSM accuracy) to detect it with.",
                        )
                    )
                while state.epochs_done < loop_epochs and not state.stopped_early:
                    epoch = state.epochs_done
                    loss, seconds, cpu_seconds, updates = self._train_epoch(
                        epoch, loop_epochs, method, updater, streams
                    )
                    train_computations = counter.take("train")
                    outcome, validation_seconds, validation_computations = None, 0.0, 0
                    if self.validation is not None:
                        self._report(epoch + 1, loop_epochs, "validate", f"epoch {epoch + 1}")
                        counter.stage = "validation"
                        outcome, validation_seconds = timed_validate(
                            self.model,
                            self.validation_inputs,
                            self.validation_labels,
                            threat=validation_threat,
                            config=self.validation,
                            generator=streams.validation(epoch),
                            device=self.device,
                        )
                        counter.stage = "train"
                        validation_computations = counter.take("validation")
                    record = EpochRecord(
                        epoch=epoch,
                        loss=loss,
                        clean_accuracy=None if outcome is None else outcome.clean_accuracy,
                        robust_accuracy=None if outcome is None else outcome.robust_accuracy,
                        fgsm_accuracy=None if outcome is None else outcome.fgsm_accuracy,
                        lr=updater.last_lr,
                        seconds=seconds,
                        cpu_seconds=cpu_seconds,
                        validation_seconds=validation_seconds,
                        gradient_computations=train_computations,
                        validation_gradient_computations=validation_computations,
                        updates=updates,
                    )
                    state.finish_epoch(record, self.model, keep_best_weights=rule is not None)
                    if rule is not None:
                        state.check_overfitting(rule, self.model)
                    if self.epoch_hook is not None:
                        checkpoint = state.snapshot(self.model, optimizer, updater, streams, method)
                        self.epoch_hook(record, checkpoint)
                final = state.snapshot(self.model, optimizer, updater, streams, method)
            return state.result(final, selection.names)
        finally:
            if counter is not None:
                counter.remove()
            selection.restore()
            _set_memory_format(self.model, torch.contiguous_format)
            self.model.eval()

    def _report(self, done: float, total: int, stage: str, message: str) -> None:
        if self.progress is not None:
            self.progress(min(done / total, 1.0), stage, message)

    def _train_epoch(
        self,
        epoch: int,
        loop_epochs: int,
        method: Method[Any],
        updater: Updater,
        streams: RandomStreams,
    ) -> tuple[float, float, float, int]:
        """One pass over the training data: (mean loss, wall seconds, CPU seconds, updates)."""
        self.model.train()
        updates_before = updater.updates
        every = max(1, self.batches // _PROGRESS_CALLS_PER_EPOCH)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        cpu_started = time.thread_time()
        order = torch.randperm(self.examples, generator=streams.shuffle).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        for batch in range(self.batches):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            inputs, labels = self.inputs[indices], self.labels[indices]
            if self.augmentation is not None:
                inputs = augment(
                    inputs, self.augmentation, streams.augmentation, self.data.input_range
                )
            loss_sum += method.train_batch(inputs, labels) * indices.numel()
            if self.progress is not None and ((batch + 1) % every == 0):
                self._report(
                    epoch + (batch + 1) / self.batches,
                    loop_epochs,
                    "train",
                    f"epoch {epoch + 1}/{loop_epochs}, batch {batch + 1}/{self.batches}",
                )
        loss = float(loss_sum) / self.examples
        seconds = time.perf_counter() - started
        cpu_seconds = time.thread_time() - cpu_started
        if not math.isfinite(loss):
            raise TrainingError(
                "training_diverged",
                f"The training loss became {loss} in epoch {epoch + 1}; lower the learning rate.",
            )
        return loss, seconds, cpu_seconds, updater.updates - updates_before


def _training_memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """Channels-last for convolutional models on a CPU, else the standard layout.

    On a CPU, oneDNN prefers channels-last convolutions, and PyTorch's channels-last
    max-pool kernel is vectorized and branch-free, where the standard one branches on
    every comparison: on perturbed inputs (no longer the clean images' flat background)
    it ran up to 10x slower here, which alone made every adversarial method's passes
    dearer than natural training's. Results are deterministic in either layout.
    """
    if device.type == "cpu" and any(parameter.dim() == 4 for parameter in model.parameters()):
        return torch.channels_last
    return torch.contiguous_format


def _set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out the model's 4-D weights and buffers in ``memory_format``, in place (what
    ``Module.to(memory_format=...)`` does; the tensors keep their identity and values)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                # .to, not .contiguous: with one input channel both layouts are
                # "contiguous", and only .to rewrites the strides oneDNN reads the layout from.
                tensor.data = tensor.data.to(memory_format=memory_format)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


class _RunState:
    """What a checkpoint holds besides the live objects: records, best epoch, stop flag."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.epochs_done = 0
        self.records: list[EpochRecord] = []
        self.best: BestSoFar | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self.weights_epoch = -1
        self.warnings: list[TrainingWarning] = []

    def restore(
        self,
        checkpoint: Checkpoint,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        updater: Updater,
        streams: RandomStreams,
        method: Method[Any],
    ) -> None:
        """Continue from ``checkpoint``, which must come from a run with these settings."""
        if checkpoint.run != self.settings:
            differing = sorted(
                key
                for key in set(checkpoint.run) | set(self.settings)
                if checkpoint.run.get(key) != self.settings.get(key)
            )
            raise TrainingError(
                "checkpoint_mismatch",
                "The checkpoint comes from a run with other settings: "
                f"{', '.join(differing)} differ.",
            )
        try:
            model.load_state_dict(checkpoint.model_state, strict=True)
            optimizer.load_state_dict(checkpoint.optimizer_state)
            streams.load_state(checkpoint.rng_state)
        except (RuntimeError, KeyError, ValueError) as error:
            raise TrainingError("bad_checkpoint", f"The checkpoint does not fit: {error}") from None
        method.load_state(checkpoint.method_state)
        updater.updates = checkpoint.updates
        updater.last_lr = checkpoint.records[-1].lr if checkpoint.records else updater.next_lr()
        self.epochs_done = checkpoint.epochs_done
        self.records = list(checkpoint.records)
        self.best = checkpoint.best
        self.best_weights = (
            None
            if checkpoint.best_weights is None
            else {key: value.clone() for key, value in checkpoint.best_weights.items()}
        )
        self.stopped_early = checkpoint.stopped_early
        self.weights_epoch = checkpoint.weights_epoch
        self.warnings = list(checkpoint.warnings)

    def finish_epoch(
        self, record: EpochRecord, model: nn.Module, *, keep_best_weights: bool
    ) -> None:
        """Add ``record`` and update the best epoch (keeping its weights when asked)."""
        self.records.append(record)
        self.epochs_done = record.epoch + 1
        self.weights_epoch = record.epoch
        metric = record.robust_accuracy
        if metric is None:
            metric = record.clean_accuracy
        if metric is not None and (self.best is None or metric >= self.best.metric):
            self.best = BestSoFar(record.epoch, metric)
            if keep_best_weights:
                self.best_weights = _state_copy(model)

    def check_overfitting(self, rule: OverfittingRule, model: nn.Module) -> None:
        """Stop, keeping the best weights, when the latest epoch collapsed under ``rule``."""
        history = [
            RobustnessCheck(record.robust_accuracy, record.fgsm_accuracy)
            for record in self.records
            if record.robust_accuracy is not None and record.fgsm_accuracy is not None
        ]
        if len(history) != len(self.records):
            return
        collapse = detect_catastrophic_overfitting(history, rule)
        if collapse is None or collapse.check != len(history) - 1:
            return
        self.stopped_early = True
        if self.best_weights is not None and self.best is not None:
            model.load_state_dict(self.best_weights)
            self.weights_epoch = self.best.epoch
        self.warnings.append(
            TrainingWarning(
                "catastrophic_overfitting",
                f"Catastrophic overfitting after epoch {self.records[-1].epoch}: "
                f"{collapse.describe()}. Training stopped; the model keeps the weights of "
                f"epoch {self.weights_epoch}.",
            )
        )

    def snapshot(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        updater: Updater,
        streams: RandomStreams,
        method: Method[Any],
    ) -> Checkpoint:
        """A checkpoint of the run now, unaffected by later training."""
        optimizer_state = optimizer.state_dict()
        return Checkpoint(
            epochs_done=self.epochs_done,
            run=self.settings,
            model_state=_state_copy(model),
            optimizer_state={
                "state": {
                    key: {
                        name: value.detach().clone() if isinstance(value, torch.Tensor) else value
                        for name, value in values.items()
                    }
                    for key, values in optimizer_state["state"].items()
                },
                "param_groups": [dict(group) for group in optimizer_state["param_groups"]],
            },
            updates=updater.updates,
            rng_state=streams.state(),
            method_state=method.state(),
            records=list(self.records),
            best=self.best,
            best_weights=None
            if self.best_weights is None
            else {key: value.clone() for key, value in self.best_weights.items()},
            stopped_early=self.stopped_early,
            weights_epoch=self.weights_epoch,
            warnings=list(self.warnings),
        )

    def result(self, checkpoint: Checkpoint, trainable_names: list[str]) -> TrainingResult:
        """The run's result, from its final checkpoint."""
        return TrainingResult(
            records=list(self.records),
            seconds=sum(record.seconds for record in self.records),
            cpu_seconds=sum(record.cpu_seconds for record in self.records),
            validation_seconds=sum(record.validation_seconds for record in self.records),
            gradient_computations=sum(record.gradient_computations for record in self.records),
            best=self.best,
            stopped_early=self.stopped_early,
            weights_epoch=self.weights_epoch,
            warnings=list(self.warnings),
            trainable_parameters=list(trainable_names),
            checkpoint=checkpoint,
        )
