"""The retrying HTTP client: bearer auth, problem+json errors, backoff with jitter.

What is retried, and why it is safe:

- a connection that could not be opened (refused, DNS, connect timeout): the request was
  never sent, so every request is retried;
- 429, 502, 503 and 504: the server (or a proxy in front of it) refused the request, so it
  is retried after ``Retry-After`` when the answer has one, else after an exponential
  backoff with jitter;
- a connection dropped after the request was sent (reset, read timeout, no response):
  only a *replayable* request is retried, one that cannot create a second object when
  repeated: GETs, and POSTs that carry an ``Idempotency-Key`` (jobs) or are idempotent by
  nature (cancel). An upload is not replayable: the caller is told with
  :class:`ConnectionDropped` and decides (the audit looks for the model it may have
  created before uploading again).

Every wait ends before the client's deadline, if it has one.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gauntlet_client import __version__

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Failures that happen before a byte of the request reached the server.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, write=300.0)

JSON = dict[str, Any]


class GauntletError(Exception):
    """Anything that stops a command; the command line exits 2 on it."""


class ApiError(GauntletError):
    """The server answered with an error (a problem+json document when it is Gauntlet)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after
        super().__init__(self.describe())

    def describe(self) -> str:
        """``HTTP 422 [validation_error] attacks[0].eps: ...``, field errors included."""
        text = f"HTTP {self.status} [{self.code}] {self.detail}"
        fields = (f"{error.get('field', '?')}: {error.get('reason', '?')}" for error in self.errors)
        details = [field for field in fields if field not in self.detail]
        if details:
            text += " (" + "; ".join(details) + ")"
        return text

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read a problem+json answer; anything else (a proxy's HTML page) is summarised."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and ("code" in body or "detail" in body):
            errors = body.get("errors")
            return cls(
                response.status_code,
                str(body.get("code") or f"http_{response.status_code}"),
                str(body.get("detail") or body.get("title") or response.reason_phrase),
                errors if isinstance(errors, list) else None,
                retry_after,
            )
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return cls(response.status_code, f"http_{response.status_code}", text, None, retry_after)


class ServerUnreachable(GauntletError):
    """No answer from the server after every retry."""


class ConnectionDropped(ServerUnreachable):
    """A request that is not replayable was sent but its answer was lost."""


class DeadlineExceeded(GauntletError):
    """The command's ``--timeout`` ran out."""


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; ``None`` otherwise."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th wait is drawn from [d/2, d], d = base * 2**n,
    capped at ``max_delay`` (a server's ``Retry-After`` wins over the draw)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0**retry)
        return ceiling / 2 + draw() * ceiling / 2


def _describe_transport_error(error: httpx.TransportError) -> str:
    text = str(error).strip()
    kind = type(error).__name__
    if isinstance(error, httpx.RemoteProtocolError) and not text:
        return "the connection closed without a response"
    return f"{kind}: {text}" if text else kind


class GauntletClient:
    """Talks to one Gauntlet server with one API key; see the module docstring for retries.

    ``log`` receives one line per retry; ``sleep``, ``clock`` and ``draw`` are there for
    tests. ``deadline`` (a ``clock()`` value) bounds every wait.
    """

    def __init__(
        self,
        server: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        deadline: float | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.log = log or (lambda _line: None)
        self.sleep = sleep
        self.clock = clock
        self.draw = draw
        self.deadline = deadline
        self._http = httpx.Client(
            base_url=self.server,
            headers={
                "Authorization": f"Bearer {api_key}",
                "User-Agent": f"gauntlet-cli/{__version__}",
                "Accept": "application/json, application/problem+json",
            },
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> GauntletClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        return f"{self.server}{path}"

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def _wait(self, seconds: float, why: str, attempt: int) -> bool:
        """Sleep before another attempt; ``False`` when the deadline forbids it."""
        remaining = self.remaining()
        if remaining is not None and seconds > remaining:
            return False
        self.log(
            f"{why}; retrying in {seconds:.1f} s (attempt {attempt + 1} of {self.retry.attempts})"
        )
        self.sleep(seconds)
        return True

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        files: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        replayable: bool | None = None,
    ) -> httpx.Response:
        """Send a request with retries; return a 2xx/3xx response or raise.

        ``replayable`` defaults to true for GET and for requests with an Idempotency-Key.
        Raises :class:`ApiError` (an error answer), :class:`ServerUnreachable` (no answer),
        :class:`ConnectionDropped` (a non-replayable request lost its answer).
        """
        if replayable is None:
            replayable = method.upper() == "GET" or bool(
                headers and any(k.lower() == "idempotency-key" for k in headers)
            )
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    method,
                    path,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    json=json_body,
                    files=files,
                    data=data,
                    headers=headers,
                )
            except httpx.TransportError as error:
                reason = _describe_transport_error(error)
                sent = not isinstance(error, _UNSENT_ERRORS)
                if sent and not replayable:
                    raise ConnectionDropped(
                        f"{method} {self.url(path)}: {reason}; the request may have been processed"
                    ) from error
                delay = self.retry.backoff(attempt - 1, self.draw)
                if attempt < self.retry.attempts and self._wait(delay, reason, attempt):
                    continue
                hint = (
                    "; is the server running, and do --server or GAUNTLET_SERVER point at it?"
                    if not sent
                    else ""
                )
                raise ServerUnreachable(
                    f"cannot reach the Gauntlet server at {self.server} ({reason}; "
                    f"{attempt} attempt{'s' if attempt > 1 else ''}){hint}"
                ) from error
            if response.status_code in RETRY_STATUSES:
                problem = ApiError.from_response(response)
                delay = (
                    problem.retry_after
                    if problem.retry_after is not None
                    else self.retry.backoff(attempt - 1, self.draw)
                )
                if attempt < self.retry.attempts and self._wait(
                    delay, f"the server answered {response.status_code}", attempt
                ):
                    continue
                raise problem
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> JSON:
        """GET a JSON object."""
        return _json_object(self.request("GET", path, params=params))

    def post_json(
        self,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        replayable: bool | None = None,
    ) -> tuple[JSON, httpx.Response]:
        """POST JSON; return the JSON object answered and the response (for its headers)."""
        response = self.request(
            "POST", path, json_body=body, headers=headers, replayable=replayable
        )
        return _json_object(response), response

    def list_all(
        self, path: str, params: Mapping[str, Any] | None = None, *, max_pages: int = 10
    ) -> list[JSON]:
        """Follow ``next_cursor`` through at most ``max_pages`` pages of a list endpoint."""
        items: list[JSON] = []
        cursor: str | None = None
        for _ in range(max_pages):
            page = self.get_json(path, {**(params or {}), "limit": 200, "cursor": cursor})
            items.extend(item for item in page.get("items", []) if isinstance(item, dict))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return items


def _json_object(response: httpx.Response) -> JSON:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GauntletError(
            f"{response.request.method} {response.request.url} answered {response.status_code} "
            "without JSON; is --server a Gauntlet API?"
        ) from None
    if not isinstance(body, dict):
        raise GauntletError(f"{response.request.url} answered JSON that is not an object")
    return body
