"""The request guard: the key is checked before a body is read, caps are per route, JSON bodies
are bounded in depth and hold only what the database can store.

Body-reading claims are checked by driving the ASGI app directly with a ``receive`` that
counts the bytes the application pulled.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

PROBLEM = "application/problem+json"
HALF_A_GIGABYTE = 500_000_000
MULTIPART = "multipart/form-data; boundary=x"


class CountingBody:
    """An ASGI ``receive`` that offers ``total`` zero bytes in 64 KiB chunks and counts how
    many the application pulled."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        if self.pulled >= self.total:
            return {"type": "http.disconnect"}
        size = min(self.chunk, self.total - self.pulled)
        self.pulled += size
        return {"type": "http.request", "body": bytes(size), "more_body": self.pulled < self.total}


def call_app(
    method: str, path: str, headers: dict[str, str], body: CountingBody, query: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Run one request through a fresh app; ``(status, headers, body)`` of its answer."""
    app = create_app()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, body, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], response_headers, content


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/jobs"), ("POST", "/v1/models"), ("POST", "/v1/datasets"), ("GET", "/v1/models")],
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer gk_not-a-key", "Basic dXNlcjpwYXNz", "Bearer "]
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_unauthenticated_body_is_refused_before_a_byte_is_read(
    settings, make_tenant, method: str, path: str, authorization: str | None, framing: str
) -> None:
    make_tenant()  # a key exists; the request's is not it
    headers = {"Content-Type": MULTIPART}
    if authorization is not None:
        headers["Authorization"] = authorization
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(HALF_A_GIGABYTE)
    body = CountingBody(HALF_A_GIGABYTE)
    status, response_headers, content = call_app(method, path, headers, body)
    assert status == 401
    assert response_headers["content-type"] == PROBLEM
    assert response_headers["www-authenticate"] == "Bearer"
    assert response_headers["connection"] == "close"
    assert json.loads(content)["code"] == "unauthenticated"
    assert body.pulled == 0


def test_multipart_to_a_json_route_gets_the_json_cap(settings, make_tenant) -> None:
    """The upload cap belongs to the upload routes only, whatever the Content-Type says."""
    tenant = make_tenant()
    headers = {**tenant.headers, "Content-Type": MULTIPART}
    declared = CountingBody(HALF_A_GIGABYTE)
    status, _, content = call_app(
        "POST", "/v1/jobs", {**headers, "Content-Length": str(HALF_A_GIGABYTE)}, declared
    )
    assert status == 413
    assert json.loads(content)["code"] == "too_large"
    assert declared.pulled == 0
    chunked = CountingBody(HALF_A_GIGABYTE)
    status, _, _ = call_app(
        "POST", "/v1/jobs", {**headers, "Transfer-Encoding": "chunked"}, chunked
    )
    assert status == 413
    assert chunked.pulled <= settings.max_json_bytes + chunked.chunk


@pytest.mark.parametrize(
    ("path", "cap_setting"),
    [("/v1/models", "max_model_request_bytes"), ("/v1/datasets", "max_dataset_request_bytes")],
)
def test_upload_caps_are_per_route(settings, make_tenant, monkeypatch, path, cap_setting) -> None:
    monkeypatch.setattr(settings, "max_model_bytes", 2**20)
    monkeypatch.setattr(settings, "max_dataset_bytes", 8 * 2**20)
    cap = getattr(settings, cap_setting)
    tenant = make_tenant()
    headers = {**tenant.headers, "Content-Type": MULTIPART}
    over = CountingBody(cap + 1)
    status, _, _ = call_app("POST", path, {**headers, "Content-Length": str(cap + 1)}, over)
    assert status == 413
    assert over.pulled == 0
    # Just under the cap the guard lets the body through (the form itself is nonsense).
    under = CountingBody(cap)
    status, _, _ = call_app("POST", path, {**headers, "Content-Length": str(cap)}, under)
    assert status != 413
    assert under.pulled > 0


def test_a_json_upload_to_an_upload_route_gets_the_json_cap(
    client: TestClient, make_tenant, settings
) -> None:
    tenant = make_tenant()
    body = b" " * (settings.max_json_bytes + 1)
    response = client.post(
        "/v1/models", headers={**tenant.headers, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


@pytest.mark.parametrize("content_type", ["application/json", None, "application/merge+json"])
def test_deeply_nested_json_body_is_422(
    client: TestClient, make_tenant, content_type: str | None
) -> None:
    tenant = make_tenant()
    headers = dict(tenant.headers)
    if content_type:
        headers["Content-Type"] = content_type
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/v1/jobs", headers=headers, content=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["code"] == "json_too_deep"
    assert problem["errors"] == [{"field": "body", "reason": problem["detail"]}]


def test_json_at_the_depth_limit_is_parsed(client: TestClient, make_tenant, settings) -> None:
    """32 levels pass the guard (and reach the route's own validation)."""
    tenant = make_tenant()
    depth = settings.max_json_depth
    body = '{"kind": "audit", "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    response = client.post(
        "/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('{"kind": "audit", "seed": NaN}', "json_non_finite"),
        ('{"kind": "audit", "seed": -Infinity}', "json_non_finite"),
        ('{"kind": "audit", "seed": 1e400}', "json_non_finite"),
        ('{"kind": "audit", "model_id": "m_\\u0000"}', "invalid_characters"),
        ('{"kind": "audit", "model_id": "\\ud800"}', "invalid_characters"),
        ('{"kind": "audit", "seed": ' + "9" * 5000 + "}", "invalid_json"),
    ],
)
def test_json_the_database_cannot_store_is_422(
    client: TestClient, make_tenant, body: str, code: str
) -> None:
    tenant = make_tenant()
    response = client.post(
        "/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_malformed_json_keeps_fastapis_answer(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.post(
        "/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"}, content="{"
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    "path", ["/v1/models/m_%00", "/v1/jobs/j_%00", "/v1/datasets/d_%00", "/v1/jobs/%00/report"]
)
def test_nul_in_the_path_is_404(client: TestClient, make_tenant, path: str) -> None:
    response = client.get(path, headers=make_tenant().headers)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("query", ["cursor=%00", "status=queued%00", "model_id=m_%00"])
def test_nul_in_the_query_is_422(client: TestClient, make_tenant, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=make_tenant().headers)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_characters"


def test_public_paths_ignore_a_bad_key(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": "Bearer nope"}).status_code == 200
    assert client.get("/openapi.json", headers={"Authorization": "Bearer nope"}).status_code == 200


def test_a_valid_key_is_checked_once_and_reaches_the_route(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.get("/v1/models", headers=tenant.headers)
    assert response.status_code == 200
    revoked = client.get("/v1/models", headers={"Authorization": f"Bearer {tenant.key}x"})
    assert revoked.status_code == 401
    assert revoked.json()["detail"] == "unknown or revoked API key"


def test_too_many_form_fields_is_a_problem_not_a_crash(client: TestClient, make_tenant) -> None:
    tenant = make_tenant()
    response = client.post(
        "/v1/datasets",
        headers=tenant.headers,
        files={"file": ("d.npz", b"x")},
        data={"name": "a", "b": "1", "c": "2"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
