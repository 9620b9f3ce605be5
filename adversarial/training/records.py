"""What a training run reports: one record per epoch, warnings, and the run's summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from adversarial.errors import TrainingError

if TYPE_CHECKING:
    from adversarial.training.checkpoint import Checkpoint


@dataclass(frozen=True)
class EpochRecord:
    """One loop epoch of training.

    Attributes:
        epoch: the loop epoch, from 0. A Free-AT loop epoch replays every minibatch ``m``
            times (``m`` epoch equivalents); every other method's is one pass.
        loss: the method's training objective, averaged over the epoch's examples (for
            Free-AT, over its replays too).
        clean_accuracy: accuracy on the validation examples (None without validation).
        robust_accuracy: accuracy under the validation PGD attack (None without
            validation or without an eps to attack at).
        fgsm_accuracy: accuracy under FGSM at the same eps (the catastrophic-overfitting
            detector compares it with ``robust_accuracy``).
        lr: the learning rate of the epoch's last update.
        seconds: wall time of the epoch's training (validation excluded).
        cpu_seconds: CPU time the training thread used in that time (on a CPU shared with
            other processes, the steadier cost figure; on a GPU it misses the device's work).
        validation_seconds: wall time of the validation after the epoch.
        gradient_computations: per-example backward passes of the epoch's training; see
            :mod:`adversarial.training.counting`.
        validation_gradient_computations: those of the validation attacks.
        updates: optimizer updates in the epoch.
    """

    epoch: int
    loss: float
    clean_accuracy: float | None
    robust_accuracy: float | None
    fgsm_accuracy: float | None
    lr: float
    seconds: float
    cpu_seconds: float
    validation_seconds: float
    gradient_computations: int
    validation_gradient_computations: int
    updates: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EpochRecord:
        """The record :meth:`to_dict` wrote.

        Raises:
            TrainingError: ``bad_checkpoint`` when a field is missing or unknown.
        """
        names = {field.name for field in fields(cls)}
        if set(values) != names:
            raise TrainingError("bad_checkpoint", "An epoch record has missing or extra fields.")
        return cls(**values)


@dataclass(frozen=True)
class TrainingWarning:
    """Something the caller should know about a finished run: a stable ``code``, a message.

    Codes: ``catastrophic_overfitting`` (the run stopped and kept its best weights),
    ``overfitting_check_unavailable`` (the method asked for the check but the run had no
    robust validation to check with).
    """

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready fields."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class BestSoFar:
    """The epoch with the highest validation robust accuracy so far (clean accuracy when
    there is no robust one); the latest epoch wins ties."""

    epoch: int
    metric: float


@dataclass
class TrainingResult:
    """A finished run. The model passed to ``train`` holds the returned weights (in eval
    mode): the final ones, or the best epoch's when the run stopped on catastrophic
    overfitting.

    Attributes:
        records: one per loop epoch run (including epochs before a resume).
        seconds: total training wall time (validation excluded), over ``records``.
        cpu_seconds: total CPU time of the training thread, over ``records``.
        validation_seconds: total validation wall time.
        gradient_computations: total per-example backward passes of training.
        best: the best epoch by validation robust accuracy (None without validation).
        stopped_early: the run stopped before its last epoch (catastrophic overfitting).
        weights_epoch: the epoch whose weights the model holds.
        warnings: what the caller should know (see :class:`TrainingWarning`).
        trainable_parameters: names of the parameters that were trained.
        checkpoint: the final checkpoint (what a resume of this run would start from).
    """

    records: list[EpochRecord]
    seconds: float
    cpu_seconds: float
    validation_seconds: float
    gradient_computations: int
    best: BestSoFar | None
    stopped_early: bool
    weights_epoch: int
    warnings: list[TrainingWarning]
    trainable_parameters: list[str]
    checkpoint: Checkpoint
