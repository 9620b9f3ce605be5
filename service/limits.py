"""What every request passes before the application reads a byte of its body.

FastAPI parses a route's body (a multipart upload, a JSON document) before it resolves the
route's dependencies, so authentication in a dependency would come after the body had been
read. :class:`RequestGuard` therefore, in this order:

1. authenticates: a request with an ``Authorization`` header is checked against the key
   table (one short session, in a thread) before its body is read; a request without one that
   carries a body is a 401 at once (no route reads an anonymous body). The principal found is
   left in ``scope["state"]`` for :func:`service.deps.get_principal`;
2. refuses NUL in the path (404, no such object can exist) or the query (422);
3. caps the body per route: ``POST`` uploads (multipart) get their upload cap, everything
   else the JSON cap whatever its Content-Type; a declared ``Content-Length`` over the cap is
   refused before any of the body is read, a chunked body as soon as it passes the cap;
4. checks a body FastAPI will parse as JSON with :func:`load_untrusted_json` (depth before
   parsing, then storable values), then hands the buffered body on.

Refusals are problem+json; those sent while a body is still arriving close the connection so
the server does not read the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.database import session_scope
from service.problems import FieldError, ProblemError, problem_response, unauthenticated
from service.tenants.service import MISSING_KEY, Principal, principal_from_authorization
from service.untrusted_json import UntrustedJsonError, load_untrusted_json

PRINCIPAL_STATE_KEY = "principal"


def _authenticate(authorization: str) -> Principal:
    with session_scope() as session:
        return principal_from_authorization(session, authorization)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path.rstrip("/") or "/"


def _media_type(headers: Mapping[bytes, bytes]) -> str:
    value = headers.get(b"content-type", b"").decode("latin-1")
    return value.split(";", 1)[0].strip().lower()


def _parsed_as_json(media_type: str) -> bool:
    """Whether FastAPI parses a body with this media type as JSON (as its router decides)."""
    if not media_type:
        return True
    main, _, subtype = media_type.partition("/")
    return main == "application" and (subtype == "json" or subtype.endswith("+json"))


class RequestGuard:
    """ASGI middleware: authentication before the body, per-route body caps, JSON checks.

    ``upload_caps`` maps ``(method, path)`` to the byte cap of a multipart upload there;
    ``json_cap`` is every other body's cap; ``public_paths`` (health, metrics, docs) skip
    authentication; ``max_json_depth`` bounds the nesting of JSON bodies.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        upload_caps: Callable[[], Mapping[tuple[str, str], int]],
        json_cap: Callable[[], int],
        max_json_depth: Callable[[], int],
        public_paths: Collection[str],
    ) -> None:
        self.app = app
        self.upload_caps = upload_caps
        self.json_cap = json_cap
        self.max_json_depth = max_json_depth
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = _route_path(scope)
        declared = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (
            declared is not None and declared.strip() not in (b"", b"0")
        )
        is_public = path in self.public_paths
        try:
            if not is_public:
                await self._authenticate(scope, headers, has_body)
            self._refuse_nul(scope)
        except ProblemError as problem:
            await self._answer(problem, scope, receive, send, close=has_body)
            return

        media_type = _media_type(headers)
        upload_cap = self.upload_caps().get((scope["method"], path))
        is_upload = upload_cap is not None and media_type == "multipart/form-data"
        limit = upload_cap if is_upload and upload_cap is not None else self.json_cap()
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._answer(_too_large(limit), scope, receive, send, close=True)
            return
        if has_body and not is_upload and not is_public and _parsed_as_json(media_type):
            await self._check_json_body(scope, receive, send, limit)
            return
        anonymous = not is_public and PRINCIPAL_STATE_KEY not in scope.get("state", {})
        await self._stream_capped(scope, receive, send, limit, anonymous=anonymous)

    async def _authenticate(
        self, scope: Scope, headers: Mapping[bytes, bytes], has_body: bool
    ) -> None:
        authorization = headers.get(b"authorization")
        if authorization is None:
            if has_body:
                # Refused here, not in the route's dependency: FastAPI would read the body
                # (up to the upload cap) before it ran the dependency.
                raise unauthenticated(MISSING_KEY)
            return
        try:
            principal = await run_in_threadpool(_authenticate, authorization.decode("latin-1"))
        except SQLAlchemyError:
            raise ProblemError(
                503, "database_unavailable", "cannot check the API key: database unreachable"
            ) from None
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal

    @staticmethod
    def _refuse_nul(scope: Scope) -> None:
        # Postgres cannot store or compare text holding NUL; no id or filter ever has one.
        if "\x00" in scope["path"]:
            raise ProblemError(404, "not_found", "no such resource")
        query: bytes = scope.get("query_string", b"")
        if b"\x00" in query or b"%00" in query.lower():
            raise ProblemError(
                422,
                "invalid_characters",
                "query parameters must not contain NUL",
                errors=[FieldError(field="query", reason="contains NUL (%00)")],
            )

    async def _check_json_body(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left before sending the body; let the app see that.
                await self.app(scope, _replay(message, receive), send)
                return
            body += message.get("body", b"")
            if len(body) > cap:
                await self._answer(_too_large(cap), scope, receive, send, close=True)
                return
            if not message.get("more_body", False):
                break
        try:
            load_untrusted_json(bytes(body), max_depth=self.max_json_depth())
        except UntrustedJsonError as exc:
            problem = ProblemError(
                422, exc.code, exc.reason, errors=[FieldError(field="body", reason=exc.reason)]
            )
            await self._answer(problem, scope, receive, send, close=False)
            return
        except json.JSONDecodeError:
            pass  # FastAPI answers malformed JSON with its own 422, naming the position
        except UnicodeDecodeError as exc:
            # FastAPI would answer a generic 400: say what is wrong, as for any bad body.
            reason = f"not valid JSON: the body is not UTF-8 (byte {exc.start})"
            problem = ProblemError(
                422, "invalid_json", reason, errors=[FieldError(field="body", reason=reason)]
            )
            await self._answer(problem, scope, receive, send, close=False)
            return
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            problem = ProblemError(
                422, "invalid_json", str(exc), errors=[FieldError(field="body", reason=str(exc))]
            )
            await self._answer(problem, scope, receive, send, close=False)
            return
        request: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay(request, receive), send)

    async def _stream_capped(
        self, scope: Scope, receive: Receive, send: Send, cap: int, *, anonymous: bool
    ) -> None:
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            received += len(chunk)
            problem = None
            if chunk and anonymous:
                # A body the headers did not announce (no Content-Length, no chunking):
                # still nobody reads it without a key.
                problem = unauthenticated(MISSING_KEY)
            elif received > cap:
                problem = _too_large(cap)
            if problem is not None:
                # Answer now and tell the app the client left: whatever the app makes of a
                # half-read body (FastAPI calls it a 400) is never sent.
                refused = True
                await self._answer(problem, scope, receive, send, close=True)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    @staticmethod
    async def _answer(
        problem: ProblemError, scope: Scope, receive: Receive, send: Send, *, close: bool
    ) -> None:
        headers = dict(problem.headers or {})
        if close:
            headers["Connection"] = "close"
        response = problem_response(
            problem.status,
            problem.code,
            problem.detail,
            title=problem.title,
            errors=problem.errors,
            headers=headers,
        )
        await response(scope, receive, send)


def _too_large(cap: int) -> ProblemError:
    return ProblemError(
        413, "too_large", f"request bodies to this endpoint are limited to {cap} bytes"
    )


def _replay(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that yields ``first``, then whatever the server sends next."""
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
