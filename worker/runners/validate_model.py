"""Model validation: load an upload in the jail and run a real forward pass there.

Every format is validated in the jail (worker.jail), code-carrying ones (TorchScript, pt2)
included; this process only moves the file in and the verdict out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.database import session_scope, utcnow
from service.models import repository as models
from service.settings import get_settings
from service.storage import get_store
from service.tables import Job, Model, ModelStatus
from worker.jail import JailError, run_in_jail
from worker.jail.config import jail_mode, jail_pool, validation_limits
from worker.jail.errors import SANDBOX_VIOLATION
from worker.lease import Lease
from worker.runners.base import jailed_model, lease_stopper


class ValidateModelRunner:
    """Marks the model ``ready`` when it loads and its outputs are ``[N, num_classes]`` and
    finite; ``invalid`` with the loader's (or the jail's) code and message otherwise."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        settings = get_settings()

        def read() -> Model | None:
            with session_scope() as session:
                return models.get_any(session, job.spec["model_id"])

        row = lease.retry(read)
        if row is None:
            raise LookupError(f"model {job.spec['model_id']} is gone")
        lease.report(0.0, "starting", "starting the model's jail", force=True)
        payload = jailed_model(row, settings)
        with get_store().local_file(row.file_sha256) as path:
            result = run_in_jail(
                "validate_model",
                payload,
                {"model": path},
                limits=validation_limits(settings),
                mode=jail_mode(settings),
                on_progress=lease.report,
                should_stop=lease_stopper(lease),
                pool=jail_pool(settings),
            )
        parameters, device = result.get("parameters"), result.get("device")
        if not isinstance(parameters, int) or parameters < 0 or not isinstance(device, str):
            raise JailError(SANDBOX_VIOLATION, "The jail's validation result is malformed.")
        black_box = result.get("black_box", False)
        if not isinstance(black_box, bool):
            raise JailError(SANDBOX_VIOLATION, "The jail's validation result is malformed.")
        return {
            "model_id": row.id,
            "valid": True,
            "parameters": parameters,
            "device": device,
            "black_box": black_box,
        }

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        models.set_status(session, job.spec["model_id"], ModelStatus.READY, None, utcnow())
        if result.get("black_box"):
            models.mark_black_box(session, job.spec["model_id"], utcnow())

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        models.set_status(session, job.spec["model_id"], ModelStatus.INVALID, error, utcnow())
