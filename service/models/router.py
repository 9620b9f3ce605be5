"""HTTP routes of /v1/models."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from service.deps import PrincipalDep, SessionDep, SettingsDep
from service.models import repository, service
from service.models.schemas import ModelList, ModelMeta, ModelRead
from service.pagination import Cursor, Limit, next_cursor
from service.problems import (
    FieldError,
    ProblemError,
    field_errors,
    invalid,
    problem_responses,
    validation_problem,
)
from service.settings import UPLOAD_FIELD_BYTES, UPLOAD_MAX_FIELDS, Settings
from service.storage import get_store
from service.untrusted_json import UntrustedJsonError, load_untrusted_json

router = APIRouter(prefix="/v1/models", tags=["models"])


def parse_meta(raw: str, settings: Settings) -> ModelMeta:
    """The upload's ``meta`` form field as :class:`ModelMeta`, or a 422 naming the field."""
    try:
        document = load_untrusted_json(raw, max_depth=settings.max_json_depth)
    except UntrustedJsonError as exc:
        raise ProblemError(
            422,
            exc.code,
            f"meta: {exc.reason}",
            errors=[FieldError(field="meta", reason=exc.reason)],
        ) from None
    except json.JSONDecodeError as exc:
        raise invalid("meta", f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    except ValueError as exc:  # an integer too long to convert
        raise invalid("meta", f"not valid JSON ({exc})", code="invalid_json") from None
    context: dict[str, Any] = {
        "max_input_values": settings.max_input_values,
        "max_num_classes": settings.max_num_classes,
    }
    try:
        return ModelMeta.model_validate(document, context=context)
    except ValidationError as exc:
        raise validation_problem(field_errors(exc, prefix="meta")) from None


# One file and a small field or two: Starlette keeps non-file fields in memory (by default
# up to 1,000 of 1 MiB each).
@router.post(
    "",
    status_code=202,
    responses=problem_responses(400, 409),
    form_limits={
        "max_files": 1,
        "max_fields": UPLOAD_MAX_FIELDS,
        "max_part_size": UPLOAD_FIELD_BYTES,
    },
)
def upload_model(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    file: UploadFile,
    meta: Annotated[
        str,
        Form(
            description="JSON: name, format, input_shape, num_classes, "
            "input_range, normalization, architecture."
        ),
    ],
) -> ModelRead:
    """Upload a model file; it is validated by a worker (status 'validating' until then)."""
    model = service.upload_model(
        session,
        principal,
        parse_meta(meta, settings),
        file.file,
        store=get_store(),
        settings=settings,
    )
    return ModelRead.from_row(model)


@router.get("")
def list_models(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    name: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="Only this name's versions."),
    ] = None,
    version: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="Only this version (with or without name)."),
    ] = None,
) -> ModelList:
    """List the tenant's models, newest first (with ``name``: that name's versions)."""
    rows = repository.list_page(
        session, principal.tenant_id, limit=limit, cursor=cursor, name=name, version=version
    )
    return ModelList(
        items=[ModelRead.from_row(r) for r in rows],
        next_cursor=next_cursor([r.id for r in rows], limit),
    )


@router.get("/{model_id}")
def get_model(principal: PrincipalDep, session: SessionDep, model_id: str) -> ModelRead:
    """Get a model, including its validation status and error."""
    return ModelRead.from_row(service.get_model(session, principal, model_id))


_EXTENSIONS = {"onnx": "onnx", "safetensors": "safetensors", "pt": "pt"}


@router.get(
    "/{model_id}/file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_model(
    principal: PrincipalDep, session: SessionDep, model_id: str
) -> StreamingResponse:
    """Download a model's file (an upload as it was sent, or a trained model)."""
    model = service.get_model(session, principal, model_id)
    chunks = get_store().iter_chunks(model.file_sha256)
    name = f"{model.id}.{_EXTENSIONS.get(model.format, 'bin')}"
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Content-Length": str(model.file_size),
        },
    )


@router.delete("/{model_id}", status_code=204)
def delete_model(principal: PrincipalDep, session: SessionDep, model_id: str) -> Response:
    """Delete a model; jobs that used it keep their results."""
    service.delete_model(session, principal, model_id, store=get_store())
    return Response(status_code=204)
