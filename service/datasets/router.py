"""HTTP routes of /v1/datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response, UploadFile

from service.datasets import repository, service
from service.datasets.builtin import BUILTIN_DATASETS
from service.datasets.schemas import DatasetList, DatasetRead
from service.deps import PrincipalDep, SessionDep, SettingsDep
from service.pagination import Cursor, Limit, next_cursor
from service.problems import problem_responses
from service.settings import UPLOAD_FIELD_BYTES, UPLOAD_MAX_FIELDS
from service.storage import get_store

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


# One file and a small field or two: Starlette keeps non-file fields in memory (by default
# up to 1,000 of 1 MiB each).
@router.post(
    "",
    status_code=201,
    responses=problem_responses(400),
    form_limits={
        "max_files": 1,
        "max_fields": UPLOAD_MAX_FIELDS,
        "max_part_size": UPLOAD_FIELD_BYTES,
    },
)
def upload_dataset(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    file: UploadFile,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a dataset: an .npz or .safetensors file with arrays 'x' [N,C,H,W] and 'y' [N]."""
    dataset = service.upload_dataset(
        session,
        principal,
        service.dataset_name(name, file.filename),
        file.filename,
        file.file,
        store=get_store(),
        settings=settings,
    )
    return DatasetRead.from_row(dataset)


@router.get("")
def list_datasets(
    principal: PrincipalDep, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> DatasetList:
    """List the built-in datasets (first page only) and the tenant's uploads, newest first."""
    rows = repository.list_page(session, principal.tenant_id, limit=limit, cursor=cursor)
    builtins = [] if cursor else list(BUILTIN_DATASETS.values())
    return DatasetList(
        items=builtins + [DatasetRead.from_row(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )


@router.get("/{dataset_id}")
def get_dataset(principal: PrincipalDep, session: SessionDep, dataset_id: str) -> DatasetRead:
    """Get a dataset (an uploaded one or ``builtin:<name>``)."""
    return service.get_dataset(session, principal, dataset_id)


@router.delete("/{dataset_id}", status_code=204, responses=problem_responses(409))
def delete_dataset(principal: PrincipalDep, session: SessionDep, dataset_id: str) -> Response:
    """Delete an uploaded dataset; jobs that used it keep their results."""
    service.delete_dataset(session, principal, dataset_id, store=get_store())
    return Response(status_code=204)
