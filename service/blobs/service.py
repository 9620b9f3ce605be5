"""Deleting the bytes of deleted rows.

Models, datasets and job artifacts share the content-addressed store: two rows with the same
bytes hold one blob. When a model or dataset is deleted, its blob goes too unless another row
still references it. The check and the delete run after the deleting transaction committed,
in a transaction of their own, so a rollback never loses bytes a row needs.

A queued or running job of a deleted model or dataset still holds its bytes (workers load
them); its final write releases them (:func:`release_inputs_after_commit`).
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from service.blobs import repository
from service.database import after_commit, session_scope
from service.storage import ArtifactStore

logger = logging.getLogger(__name__)


def delete_if_unreferenced(store: ArtifactStore, sha256: str) -> bool:
    """Delete the blob ``sha256`` unless a row references it; whether it was deleted."""
    with session_scope() as session:
        if repository.is_referenced(session, sha256):
            return False
    store.delete(sha256)
    return True


def release_after_commit(session: Session, store: ArtifactStore, sha256: str) -> None:
    """Once ``session`` commits, delete the blob ``sha256`` if no row references it then.

    A store that fails here leaves an orphaned blob (logged), never a failed request: the
    row is already gone.
    """

    def release() -> None:
        try:
            delete_if_unreferenced(store, sha256)
        except Exception:
            logger.exception("could not delete the unreferenced blob %s", sha256)

    after_commit(session, release)


def release_inputs_after_commit(session: Session, store: ArtifactStore, job_id: str) -> None:
    """Once ``session`` (a job's final write) commits, delete the blobs of the deleted model
    and dataset the job used, unless another row references them."""
    for sha256 in sorted(repository.deleted_inputs(session, job_id)):
        release_after_commit(session, store, sha256)
