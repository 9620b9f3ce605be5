"""Parsing JSON from a client without letting it choose the cost or break the database.

Python's ``json`` recurses once per nesting level: 100,000 ``[`` raise ``RecursionError``
(a 500 if nothing catches it), so the depth is measured before parsing, by a linear scan that
does not recurse. Parsed documents are then refused when they hold what Postgres cannot store:
``NaN``/``Infinity`` (or a number that overflows to it) and strings with NUL or lone
surrogates.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

# A JSON string, including an unterminated one at the end of the input: every match that
# starts always succeeds (possessive loop, no backtracking), so the scan is linear.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_KEEP = b"[]{}"
_DROP = bytes(b for b in range(256) if b not in _KEEP)
# Opening brackets become +1, closing ones -1 (as int8) once everything else is dropped.
_STEPS = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))


class UntrustedJsonError(ValueError):
    """A JSON document refused before or after parsing; ``code`` is the problem's code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def nesting_depth(data: bytes | str) -> int:
    """The deepest nesting of arrays and objects in ``data`` (brackets inside strings do not
    count). For malformed input it bounds how deep a parser gets before it gives up."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    steps = _STRING.sub(b"", raw).translate(_STEPS, _DROP)
    if not steps:
        return 0
    return int(np.frombuffer(steps, dtype=np.int8).cumsum(dtype=np.int64).max())


def _refuse_constant(name: str) -> float:
    raise UntrustedJsonError("json_non_finite", f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedJsonError("json_non_finite", f"the number {text[:40]} is out of range")
    return value


def _check_strings(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, path)
            _check_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise UntrustedJsonError("invalid_characters", f"{path or 'a string'} contains NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UntrustedJsonError(
            "invalid_characters", f"{path or 'a string'} contains a lone surrogate"
        ) from None


def load_untrusted_json(data: bytes | str, *, max_depth: int) -> Any:
    """Parse a client's JSON document with a bounded depth and storable values.

    Raises :class:`UntrustedJsonError` (codes ``json_too_deep``, ``json_non_finite``,
    ``invalid_characters``) or :class:`json.JSONDecodeError` for malformed JSON, and
    ``ValueError`` for an integer too long to convert.
    """
    depth = nesting_depth(data)
    if depth > max_depth:
        raise UntrustedJsonError(
            "json_too_deep", f"JSON nested {depth} levels deep; at most {max_depth} allowed"
        )
    document = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    # The depth is bounded, so this walk's recursion is too.
    _check_strings(document, "")
    return document
