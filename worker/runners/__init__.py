"""Job runners by job kind."""

from worker.runners.audit import AuditRunner
from worker.runners.base import Runner
from worker.runners.validate_model import ValidateModelRunner

RUNNERS: dict[str, Runner] = {
    "audit": AuditRunner(),
    "validate_model": ValidateModelRunner(),
}

__all__ = ["RUNNERS", "Runner"]
