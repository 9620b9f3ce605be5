"""Dataset uploads and lookups (built-in or uploaded)."""

from __future__ import annotations

from typing import BinaryIO

from sqlalchemy.orm import Session

from service.database import utcnow
from service.datasets import repository
from service.datasets.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX
from service.datasets.reader import DatasetFileError, detect_format, read_dataset, summarize
from service.datasets.schemas import DatasetRead
from service.problems import FieldError, ProblemError, not_found
from service.settings import Settings
from service.storage import ArtifactStore
from service.tables import Dataset, new_id
from service.tenants.service import Principal


def upload_dataset(
    session: Session,
    principal: Principal,
    name: str,
    filename: str | None,
    stream: BinaryIO,
    *,
    store: ArtifactStore,
    settings: Settings,
) -> Dataset:
    """Check an uploaded dataset file, store it and record it."""
    data = stream.read(settings.max_dataset_bytes + 1)
    if len(data) > settings.max_dataset_bytes:
        raise ProblemError(
            413, "too_large", f"dataset files are limited to {settings.max_dataset_bytes} bytes"
        )
    try:
        fmt = detect_format(filename, data[:16])
        x, y = read_dataset(data, fmt, max_bytes=settings.max_dataset_bytes * 4)
    except DatasetFileError as exc:
        raise ProblemError(
            422,
            "invalid_dataset",
            str(exc),
            errors=[FieldError(field=exc.field, reason=exc.reason)],
        ) from None
    summary = summarize(x, y)
    sha256, size = store.put_bytes(data)
    dataset = Dataset(
        id=new_id("d"),
        tenant_id=principal.tenant_id,
        name=name,
        format=fmt,
        num_examples=summary.num_examples,
        example_shape=summary.example_shape,
        num_classes=summary.num_classes,
        value_range=summary.value_range,
        file_sha256=sha256,
        file_size=size,
    )
    repository.add(session, dataset)
    return dataset


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> DatasetRead:
    """A built-in dataset or one of the caller's, or the 404 that hides others'."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        builtin = BUILTIN_DATASETS.get(dataset_id)
        if builtin is None:
            raise not_found("dataset", dataset_id)
        return builtin
    row = repository.get(session, principal.tenant_id, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return DatasetRead.from_row(row)


def delete_dataset(session: Session, principal: Principal, dataset_id: str) -> None:
    """Hide an uploaded dataset; jobs that used it keep their results."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        raise ProblemError(409, "builtin_dataset", "built-in datasets cannot be deleted")
    row = repository.get(session, principal.tenant_id, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    row.deleted_at = utcnow()
