"""Model validation: load an upload through the safe loaders and run a real forward pass."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from adversarial.models.loading import check_model
from service.database import session_scope, utcnow
from service.models import repository as models
from service.settings import get_settings
from service.storage import get_store
from service.tables import Job, Model, ModelStatus
from worker.lease import Lease
from worker.loading import load_user_model, model_spec, select_device


class ValidateModelRunner:
    """Marks the model ``ready`` when it loads and its outputs are ``[N, num_classes]`` and
    finite; ``invalid`` with the loader's code and message otherwise."""

    def run(self, job: Job, lease: Lease) -> dict[str, Any]:
        settings = get_settings()

        def read() -> Model | None:
            with session_scope() as session:
                return models.get_any(session, job.spec["model_id"])

        row = lease.retry(read)
        if row is None:
            raise LookupError(f"model {job.spec['model_id']} is gone")
        lease.report(0.1, "loading", f"loading {row.format} model", force=True)
        model = load_user_model(row, get_store(), settings)
        device = select_device(settings.worker_device)
        model.to(device)
        lease.report(0.6, "checking", "running a forward pass", force=True)
        check_model(model, model_spec(row), device=device)
        parameters = sum(p.numel() for p in model.parameters())
        return {"model_id": row.id, "valid": True, "parameters": parameters, "device": str(device)}

    def on_success(self, session: Session, job: Job, result: dict[str, Any]) -> None:
        models.set_status(session, job.spec["model_id"], ModelStatus.READY, None, utcnow())

    def on_failure(self, session: Session, job: Job, error: dict[str, Any]) -> None:
        models.set_status(session, job.spec["model_id"], ModelStatus.INVALID, error, utcnow())
