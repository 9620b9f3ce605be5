"""Errors as ``application/problem+json`` (RFC 9457), never a stack trace.

Every problem carries ``type``, ``title``, ``status``, ``detail`` and a stable ``code``;
validation problems add ``errors``: a list of ``{field, reason}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    """One invalid field: where it is and why it was refused."""

    field: str
    reason: str


class Problem(BaseModel):
    """The body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors = list(errors) if errors is not None else None
        self.headers = headers


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# Problem codes of the errors Starlette and FastAPI raise themselves.
_HTTP_CODES = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}


def not_found(kind: str, object_id: str) -> ProblemError:
    """The 404 for a missing object, identical whether it is absent or another tenant's."""
    return ProblemError(404, "not_found", f"{kind} {object_id!r} not found")


def unauthenticated(detail: str) -> ProblemError:
    """The 401 for a missing, malformed, unknown or revoked API key (with the challenge)."""
    return ProblemError(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


def invalid(field: str, reason: str, *, code: str = "invalid_request") -> ProblemError:
    """A 422 about one field."""
    return ProblemError(
        422, code, f"{field}: {reason}", errors=[FieldError(field=field, reason=reason)]
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route answers besides the app-wide
    ones (``responses=problem_responses(409)``); :func:`problem_openapi` gives them their
    media type."""
    return {
        status: {"model": Problem, "description": _TITLES[status], "content": {PROBLEM_JSON: {}}}
        for status in statuses
    }


def problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a generated OpenAPI document so problem responses are documented as they are
    sent: ``application/problem+json`` with the :class:`Problem` schema, and nothing else
    (FastAPI files a response model under the route's own media type: JSON, HTML, bytes)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_JSON in content:
                    response["content"] = {
                        PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
                    }
    return schema


# The methods a 405's ``Allow`` may name (every one a route here could declare).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers (for a 405's ``Allow``).

    Starlette's router stops at the first route whose path matches, so its ``Allow`` names
    only that route's methods, not those of the path's other routes (GET and DELETE of
    ``/v1/models/{id}`` are two routes).
    """
    allowed = []
    for method in _METHODS:
        # A bare scope: only the path and the method decide a match.
        scope = {
            "type": "http",
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "method": method,
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body = Problem(
        title=title or _TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        code=code,
        errors=list(errors) if errors is not None else None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def field_path(location: Sequence[Any]) -> str:
    """``("body", "attacks", 0, "eps")`` -> ``attacks[0].eps`` (the request part dropped)."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header", "form"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def field_errors(
    exc: ValidationError | RequestValidationError, prefix: str = ""
) -> list[FieldError]:
    """Pydantic errors as ``{field, reason}`` items, ``prefix`` prepended to each field."""
    errors = []
    body = getattr(exc, "body", None)
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        # A body that is one of several kinds (a job spec) is validated as that kind; the
        # kind is the body's own "kind", not a field the user wrote: leave it out.
        if (
            len(loc) > 1
            and loc[0] == "body"
            and isinstance(body, dict)
            and loc[1] == body.get("kind")
        ):
            loc = ("body", *loc[2:])
        path = field_path(loc)
        if prefix:
            path = prefix if path == "body" else f"{prefix}.{path}"
        message = str(error.get("msg", "invalid"))
        # Pydantic's "Value error, ..." prefix says nothing to a user.
        message = message.removeprefix("Value error, ")
        errors.append(FieldError(field=path, reason=message))
    return errors


def validation_problem(errors: list[FieldError]) -> ProblemError:
    """A 422 listing every invalid field."""
    summary = "; ".join(f"{e.field}: {e.reason}" for e in errors[:5])
    return ProblemError(422, "validation_error", summary or "invalid request", errors=errors)


def install_handlers(app: FastAPI) -> None:
    """Answer every error as problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = validation_problem(field_errors(exc))
        return problem_response(422, problem.code, problem.detail, errors=problem.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        errors = None
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        if exc.status_code == 400:
            # FastAPI's only 400s: a body it could not parse (a malformed multipart form,
            # too many fields or files in one).
            errors = [FieldError(field="body", reason=str(exc.detail))]
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code, code, str(exc.detail), errors=errors, headers=headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal_error", "an internal error occurred")
