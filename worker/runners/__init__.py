"""Job runners by job kind."""

from worker.runners.audit import AuditRunner, AuditShardRunner
from worker.runners.base import Runner
from worker.runners.train import TrainRunner
from worker.runners.transfer import TransferCraftRunner, TransferRunner, TransferScoreRunner
from worker.runners.validate_model import ValidateModelRunner

RUNNERS: dict[str, Runner] = {
    "audit": AuditRunner(),
    "audit_shard": AuditShardRunner(),
    "train": TrainRunner(),
    "transfer": TransferRunner(),
    "transfer_craft": TransferCraftRunner(),
    "transfer_score": TransferScoreRunner(),
    "validate_model": ValidateModelRunner(),
}

__all__ = ["RUNNERS", "Runner"]
