"""A real uvicorn server answers an unauthenticated upload before reading its body.

The client streams a large body (chunked, or with a declared Content-Length) and watches for
the answer while it sends. Without the guard the server reads the whole body (up to the
513 MiB upload cap) before the 401; with it the 401 comes at once and the server closes the
connection, so the client gets to send no more than what the sockets buffer (a few MiB on
loopback).
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from tests.conftest import Backend, service_environment
from tests.e2e.conftest import LiveService, free_port

# artifacts: CI runs these again with the S3 store (GAUNTLET_TEST_ARTIFACT_STORE=s3).
pytestmark = [pytest.mark.e2e, pytest.mark.artifacts]

BODY_BYTES = 256 * 2**20  # below the old 513 MiB cap, so an unguarded server would read it all
# What the sockets may hold before the server's answer is seen: the client's send buffer and
# the server's receive buffer (each up to ~4 MiB with Linux autotuning on loopback), plus what
# uvicorn buffers before it stops reading (64 KiB). Far below BODY_BYTES.
MOST_SENT_BEFORE_THE_ANSWER = 32 * 2**20


@pytest.fixture
def api_only(
    backend: Backend, settings: Settings, make_tenant, tmp_path: Path
) -> Iterator[LiveService]:
    """The API under uvicorn, no worker."""
    environment = {
        **os.environ,
        **service_environment(backend, settings.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    service = LiveService(
        url=f"http://127.0.0.1:{free_port()}",
        environment=environment,
        logs=logs,
        tenant=make_tenant(),
    )
    try:
        service.start_api()
        yield service
    except BaseException:
        sys.stderr.write(service.log_text())
        raise
    finally:
        service.stop()


def stream_until_answered(url: str, path: str, headers: dict[str, str], chunked: bool):
    """Send ``BODY_BYTES`` of body while watching for the answer; ``(bytes sent, answer)``."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {BODY_BYTES}\r\n"
    connection.sendall((head + "\r\n").encode())
    piece = bytes(64 * 1024)
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    connection.setblocking(False)
    sent, answer = 0, b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([connection], [connection], [], 1.0)
            if readable:
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    break
            if writable and sent < BODY_BYTES:
                try:
                    sent += connection.send(frame)
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    break
        # The rest of the answer (its body), if it was cut between reads.
        connection.setblocking(True)
        connection.settimeout(5)
        while b"\r\n\r\n" in answer:
            head_part, _, body_part = answer.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head_part.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            if len(body_part) >= length:
                break
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        connection.close()
    return sent, answer


CASES = [
    (path, authorization, chunked)
    for path in ("/v1/jobs", "/v1/datasets")
    for authorization in (None, "Bearer gk_not-a-key")
    for chunked in (True, False)
]


def test_unauthenticated_upload_is_answered_before_its_body(api_only: LiveService) -> None:
    """One server for every case (starting uvicorn is most of the cost)."""
    for path, authorization, chunked in CASES:
        case = f"{path} key={authorization} chunked={chunked}"
        headers = {"Content-Type": "multipart/form-data; boundary=x"}
        if authorization:
            headers["Authorization"] = authorization
        sent, answer = stream_until_answered(api_only.url, path, headers, chunked)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 401 Unauthorized", (case, sent, answer[:300])
        head, _, body = rest.partition(b"\r\n\r\n")
        assert b"application/problem+json" in head.lower(), case
        assert json.loads(body)["code"] == "unauthenticated", case
        assert sent < MOST_SENT_BEFORE_THE_ANSWER, f"{case}: {sent} bytes sent before the 401"
