"""Robust training: one loop, the methods as strategies over it, checkpoints that resume.

The entry point is :func:`train`; see its docstring for the arguments. Methods:
``natural``, ``fgsm`` (Goodfellow et al. 2015), ``pgd`` (Madry et al. 2018), ``free``
(Shafahi et al. 2019), ``fast`` (Wong et al. 2020), ``trades`` (Zhang et al. 2019) and
``vat`` (Miyato et al. 2018).
"""

from adversarial.models.export import export_onnx
from adversarial.training.augmentation import AugmentationConfig, augment
from adversarial.training.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes
from adversarial.training.counting import GradientCounter
from adversarial.training.data import UNLABELED, TrainingData
from adversarial.training.loop import EpochHook, ProgressCallback, train
from adversarial.training.methods import (
    METHODS,
    AdversarialConfig,
    AnyMethodConfig,
    FastConfig,
    FGSMConfig,
    FreeConfig,
    Method,
    MethodConfig,
    NaturalConfig,
    PGDConfig,
    TradesConfig,
    VATConfig,
    method_config,
)
from adversarial.training.optimizers import AdamConfig, OptimizerConfig, SGDConfig
from adversarial.training.overfitting import (
    Collapse,
    OverfittingRule,
    RobustnessCheck,
    detect_catastrophic_overfitting,
)
from adversarial.training.recommended import RecommendedSettings, recommended_settings
from adversarial.training.records import BestSoFar, EpochRecord, TrainingResult, TrainingWarning
from adversarial.training.rng import derive_seed, seeded_initialization
from adversarial.training.schedules import (
    ConstantSchedule,
    CosineSchedule,
    MultiStepSchedule,
    OneCycleSchedule,
    Schedule,
    learning_rate,
)
from adversarial.training.trainable import Trainable, last_layer
from adversarial.training.validation import ValidationConfig

__all__ = [
    "METHODS",
    "UNLABELED",
    "AdamConfig",
    "AdversarialConfig",
    "AnyMethodConfig",
    "AugmentationConfig",
    "BestSoFar",
    "Checkpoint",
    "Collapse",
    "ConstantSchedule",
    "CosineSchedule",
    "EpochHook",
    "EpochRecord",
    "FGSMConfig",
    "FastConfig",
    "FreeConfig",
    "GradientCounter",
    "Method",
    "MethodConfig",
    "MultiStepSchedule",
    "NaturalConfig",
    "OneCycleSchedule",
    "OptimizerConfig",
    "OverfittingRule",
    "PGDConfig",
    "RecommendedSettings",
    "ProgressCallback",
    "RobustnessCheck",
    "SGDConfig",
    "Schedule",
    "TradesConfig",
    "Trainable",
    "TrainingData",
    "TrainingResult",
    "TrainingWarning",
    "VATConfig",
    "ValidationConfig",
    "augment",
    "checkpoint_from_bytes",
    "checkpoint_to_bytes",
    "derive_seed",
    "detect_catastrophic_overfitting",
    "export_onnx",
    "last_layer",
    "learning_rate",
    "method_config",
    "recommended_settings",
    "seeded_initialization",
    "train",
]
