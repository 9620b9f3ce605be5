"""The messages between a jail and its parent: one JSON object per line.

Parent to child (the child's stdin), once, when a job is assigned::

    {"task": "validate_model", "payload": {...}, "inputs": {"model": "/job/inputs/model"},
     "output_dir": "/job/outputs", "limits": {...}}

Child to parent (a pipe of its own, not stdout, so a model's prints cannot pose as
messages)::

    {"type": "ready", "pid": 2}
    {"type": "progress", "fraction": 0.5, "stage": "pgd", "message": "eps 0.1"}
    {"type": "heartbeat"}
    {"type": "file", "name": "checkpoint.bin"}    (a finished file in the output folder)
    {"type": "result", "result": {...}}
    {"type": "error", "code": "forward_failed", "message": "..."}

Whatever the child sends is untrusted (the job's code runs in that process and can write to
the pipe): :func:`parse_message` accepts exactly these shapes and raises
:class:`ProtocolViolation` for anything else. Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MESSAGE_TYPES = ("ready", "progress", "heartbeat", "file", "result", "error")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
CODE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_STAGE_CHARS = 100
MAX_PROGRESS_MESSAGE_CHARS = 1000
MAX_ERROR_MESSAGE_CHARS = 4000
MAX_ASSIGNMENT_BYTES = 16 * 2**20


class ProtocolViolation(Exception):
    """A message that is not one of the protocol's shapes."""


@dataclass(frozen=True)
class Message:
    """One parsed message from the child; fields not used by its type are empty."""

    type: str
    pid: int = 0
    fraction: float = 0.0
    stage: str = ""
    text: str = ""
    code: str = ""
    result: dict[str, Any] | None = None


def _reject_constant(name: str) -> float:
    raise ProtocolViolation(f"non-finite number {name} in a message")


def encode(document: dict[str, Any]) -> bytes:
    """One line of JSON (no NaN or infinity: the database's JSON could not hold them)."""
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Any:
    """Strict JSON from one line."""
    try:
        return json.loads(line, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ProtocolViolation(f"not JSON: {error}") from None


def _keys(document: dict[str, Any], allowed: set[str]) -> None:
    extra = set(document) - allowed
    if extra:
        raise ProtocolViolation(f"unexpected fields {sorted(extra)}")


def _text(document: dict[str, Any], key: str, limit: int) -> str:
    value = document.get(key, "")
    if not isinstance(value, str):
        raise ProtocolViolation(f"{key} must be a string")
    return value[:limit]


def parse_message(line: bytes) -> Message:
    """Validate one line from the child."""
    document = decode(line)
    if not isinstance(document, dict):
        raise ProtocolViolation("a message must be a JSON object")
    kind = document.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")
    if kind == "ready":
        _keys(document, {"type", "pid"})
        pid = document.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ProtocolViolation("ready needs an integer pid")
        return Message(type="ready", pid=pid)
    if kind == "heartbeat":
        _keys(document, {"type"})
        return Message(type="heartbeat")
    if kind == "progress":
        _keys(document, {"type", "fraction", "stage", "message"})
        fraction = document.get("fraction")
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not math.isfinite(fraction)
        ):
            raise ProtocolViolation("progress needs a finite fraction")
        return Message(
            type="progress",
            fraction=min(max(float(fraction), 0.0), 1.0),
            stage=_text(document, "stage", MAX_STAGE_CHARS),
            text=_text(document, "message", MAX_PROGRESS_MESSAGE_CHARS),
        )
    if kind == "file":
        _keys(document, {"type", "name"})
        name = document.get("name")
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            raise ProtocolViolation("a file message needs a plain file name")
        return Message(type="file", text=name)
    if kind == "result":
        _keys(document, {"type", "result"})
        result = document.get("result")
        if not isinstance(result, dict):
            raise ProtocolViolation("a result must be a JSON object")
        return Message(type="result", result=result)
    _keys(document, {"type", "code", "message"})
    code = document.get("code")
    if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
        raise ProtocolViolation("an error needs a code like 'model_crashed'")
    return Message(
        type="error", code=code, text=_text(document, "message", MAX_ERROR_MESSAGE_CHARS)
    )


class LineReader:
    """Splits bytes from a pipe into lines of at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete lines. Raises on a line longer than the limit."""
        self._buffer += data
        lines: list[bytes] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            if end > self.max_bytes:
                raise ProtocolViolation(f"a message longer than {self.max_bytes} bytes")
            lines.append(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
        if len(self._buffer) > self.max_bytes:
            raise ProtocolViolation(f"a message longer than {self.max_bytes} bytes")
        return lines

    @property
    def pending(self) -> int:
        """Bytes received after the last complete line."""
        return len(self._buffer)
