"""Dataset uploads and lookups (built-in or uploaded)."""

from __future__ import annotations

import io
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from sqlalchemy.orm import Session

from service.blobs.service import release_after_commit
from service.database import utcnow
from service.datasets import repository
from service.datasets.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX
from service.datasets.reader import (
    DatasetFileError,
    DatasetLimits,
    detect_format,
    inspect_dataset,
)
from service.datasets.schemas import DatasetRead
from service.problems import FieldError, ProblemError, invalid, not_found
from service.settings import Settings
from service.storage import ArtifactStore
from service.tables import Dataset, new_id
from service.tenants.service import Principal

MAX_NAME_LENGTH = 200


def dataset_name(name: str | None, filename: str | None) -> str:
    """The name to record: ``name`` as given (no control characters), else the file's name
    (control characters dropped, cut to fit), else ``"dataset"``."""
    if name:
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise invalid("name", "must not contain control characters", code="invalid_characters")
        return name
    cleaned = "".join(c for c in filename or "" if unicodedata.category(c) not in ("Cc", "Cs"))
    return cleaned.strip()[:MAX_NAME_LENGTH] or "dataset"


def _too_large(max_bytes: int) -> ProblemError:
    return ProblemError(413, "too_large", f"dataset files are limited to {max_bytes} bytes")


@contextmanager
def _seekable_upload(stream: BinaryIO, max_bytes: int) -> Iterator[BinaryIO]:
    """The upload as a seekable file of at most ``max_bytes``, or the 413. (Starlette spools
    uploads to a seekable file already; anything else is copied to one.)"""
    if stream.seekable():
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        if size > max_bytes:
            raise _too_large(max_bytes)
        yield stream
        return
    with tempfile.TemporaryFile() as copy:
        while chunk := stream.read(1 << 20):
            copy.write(chunk)
            if copy.tell() > max_bytes:
                raise _too_large(max_bytes)
        copy.seek(0)
        yield copy


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
    """Check an uploaded dataset file (streamed: the arrays are never held), store it and
    record it."""
    with _seekable_upload(stream, settings.max_dataset_bytes) as upload:
        try:
            fmt = detect_format(filename, upload.read(16))
            summary = inspect_dataset(upload, fmt, DatasetLimits.from_settings(settings))
        except DatasetFileError as exc:
            raise ProblemError(
                exc.status,
                exc.code,
                str(exc),
                errors=[FieldError(field=exc.field, reason=exc.reason)],
            ) from None
        upload.seek(0)
        sha256, size = store.put_stream(upload)
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


def delete_dataset(
    session: Session, principal: Principal, dataset_id: str, *, store: ArtifactStore
) -> None:
    """Hide an uploaded dataset (jobs that used it keep their results) and, once that
    commits, delete its file unless another row holds the same bytes."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        raise ProblemError(409, "builtin_dataset", "built-in datasets cannot be deleted")
    row = repository.get(session, principal.tenant_id, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    row.deleted_at = utcnow()
    release_after_commit(session, store, row.file_sha256)
