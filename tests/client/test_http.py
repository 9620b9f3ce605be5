"""The retrying HTTP client, against httpx.MockTransport and a closed local port."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest

from gauntlet_client.http import (
    ApiError,
    ConnectionDropped,
    GauntletClient,
    RetryPolicy,
    ServerUnreachable,
    parse_retry_after,
)

SERVER = "http://gauntlet.test"


class Clock:
    """A fake monotonic clock that ``sleep`` advances."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    clock: Clock,
    *,
    attempts: int = 5,
    deadline: float | None = None,
) -> GauntletClient:
    return GauntletClient(
        SERVER,
        "gk_test",
        retry=RetryPolicy(attempts=attempts, base_delay=0.5, max_delay=30),
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
        draw=lambda: 1.0,  # the top of each jitter range
        deadline=deadline,
    )


def scripted(*answers: httpx.Response | Exception) -> tuple[Callable, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler, seen


def ok(body: dict | None = None) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {"ok": True})


def test_sends_the_key_and_parses_json() -> None:
    handler, seen = scripted(ok({"items": []}))
    with make_client(handler, Clock()) as client:
        assert client.get_json("/v1/models") == {"items": []}
    assert seen[0].headers["Authorization"] == "Bearer gk_test"
    assert seen[0].headers["User-Agent"].startswith("gauntlet-cli/")


def test_429_honours_retry_after() -> None:
    clock = Clock()
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "3"}, json={"code": "rate_limited"}), ok()
    )
    with make_client(handler, clock) as client:
        assert client.get_json("/v1/jobs") == {"ok": True}
    assert clock.sleeps == [3.0]
    assert len(seen) == 2


def test_503_502_504_back_off_exponentially() -> None:
    clock = Clock()
    handler, seen = scripted(httpx.Response(503), httpx.Response(502), httpx.Response(504), ok())
    with make_client(handler, clock) as client:
        client.get_json("/v1/jobs")
    assert clock.sleeps == [0.5, 1.0, 2.0]  # base * 2**n, the top of [d/2, d]
    assert len(seen) == 4


def test_backoff_draws_from_the_upper_half_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    assert policy.backoff(0, lambda: 0.0) == 0.5
    assert policy.backoff(0, lambda: 1.0) == 1.0
    assert policy.backoff(10, lambda: 1.0) == 5.0


def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    clock = Clock()
    handler, seen = scripted(*[httpx.Response(503, json={"code": "busy", "detail": "later"})] * 3)
    with make_client(handler, clock, attempts=3) as client, pytest.raises(ApiError) as raised:
        client.get_json("/v1/jobs")
    assert (raised.value.status, raised.value.code) == (503, "busy")
    assert len(seen) == 3


def test_a_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    clock = Clock()
    handler, seen = scripted(httpx.Response(503, headers={"Retry-After": "60"}), ok())
    with make_client(handler, clock, deadline=10.0) as client, pytest.raises(ApiError):
        client.get_json("/v1/jobs")
    assert clock.sleeps == []
    assert len(seen) == 1


def test_dropped_connection_retries_a_get() -> None:
    clock = Clock()
    handler, seen = scripted(httpx.ReadError("reset"), httpx.RemoteProtocolError(""), ok())
    with make_client(handler, clock) as client:
        assert client.get_json("/v1/jobs/j_1") == {"ok": True}
    assert len(seen) == 3


def test_dropped_connection_retries_a_post_with_an_idempotency_key() -> None:
    handler, seen = scripted(httpx.RemoteProtocolError("Server disconnected"), ok({"id": "j_1"}))
    with make_client(handler, Clock()) as client:
        body, _ = client.post_json("/v1/jobs", {"kind": "audit"}, headers={"Idempotency-Key": "k"})
    assert body == {"id": "j_1"}
    assert [r.headers["Idempotency-Key"] for r in seen] == ["k", "k"]


def test_dropped_connection_is_not_replayed_for_an_upload() -> None:
    handler, seen = scripted(httpx.ReadError("reset"), ok())
    with make_client(handler, Clock()) as client, pytest.raises(ConnectionDropped):
        client.request("POST", "/v1/models", files={"file": ("m.onnx", b"x")})
    assert len(seen) == 1


def test_a_connection_never_opened_is_retried_even_for_an_upload() -> None:
    handler, seen = scripted(httpx.ConnectError("refused"), ok({"id": "m_1"}))
    with make_client(handler, Clock()) as client:
        response = client.request("POST", "/v1/models", files={"file": ("m.onnx", b"x")})
    assert response.json() == {"id": "m_1"}
    assert len(seen) == 2


def test_problem_json_becomes_an_api_error() -> None:
    problem = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "attacks[0].eps: bad",
        "code": "validation_error",
        "errors": [{"field": "attacks[0].eps", "reason": "bad"}, {"field": "seed", "reason": "x"}],
    }
    handler, _ = scripted(httpx.Response(422, json=problem))
    with make_client(handler, Clock()) as client, pytest.raises(ApiError) as raised:
        client.post_json("/v1/jobs", {})
    error = raised.value
    assert (error.status, error.code) == (422, "validation_error")
    # Field errors already in the detail are not repeated.
    assert str(error) == "HTTP 422 [validation_error] attacks[0].eps: bad (seed: x)"


def test_an_html_error_page_is_summarised() -> None:
    handler, _ = scripted(httpx.Response(404, text="<html>\n<b>Not here</b></html>"))
    with make_client(handler, Clock()) as client, pytest.raises(ApiError) as raised:
        client.get_json("/v1/nothing")
    assert raised.value.code == "http_404"
    assert "Not here" in raised.value.detail


def test_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert future is not None
    assert future > 1e9


def test_a_closed_port_is_unreachable_with_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    clock = Clock()
    client = GauntletClient(
        f"http://127.0.0.1:{port}",
        "gk_test",
        retry=RetryPolicy(attempts=3),
        sleep=clock.sleep,
        clock=clock,
    )
    with client, pytest.raises(ServerUnreachable) as raised:
        client.get_json("/v1/models")
    message = str(raised.value)
    assert f"cannot reach the Gauntlet server at http://127.0.0.1:{port}" in message
    assert "ConnectError" in message
    assert "3 attempts" in message
    assert len(clock.sleeps) == 2


def test_list_all_follows_cursors() -> None:
    handler, seen = scripted(
        ok({"items": [{"id": "a"}], "next_cursor": "a"}),
        ok({"items": [{"id": "b"}], "next_cursor": None}),
    )
    with make_client(handler, Clock()) as client:
        assert [i["id"] for i in client.list_all("/v1/models")] == ["a", "b"]
    assert seen[1].url.params["cursor"] == "a"
