"""API keys: random, shown once, stored as an HMAC."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from service.settings import get_settings

KEY_PREFIX = "gk_"

# "<expires>.<hex HMAC-SHA256>", ASCII only: str.isdigit() accepts "²" and other digits that
# int() refuses, and hmac.compare_digest raises on non-ASCII text.
_REPORT_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")


def generate_api_key() -> str:
    """A new random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _pepper() -> bytes:
    return get_settings().api_key_pepper.get_secret_value().encode()


def report_token(tenant_id: str, job_id: str, expires: int) -> str:
    """A token that opens one job's report until ``expires`` (Unix seconds), so a browser
    (which cannot send the bearer key) can show it."""
    message = f"report:{tenant_id}:{job_id}:{expires}".encode()
    return f"{expires}.{hmac.new(_pepper(), message, hashlib.sha256).hexdigest()}"


def report_token_valid(token: str, tenant_id: str, job_id: str, now: float) -> bool:
    """Whether ``token`` was made for this job and has not expired; ``False`` for anything
    that is not a well-formed token."""
    match = _REPORT_TOKEN.fullmatch(token)
    if match is None or int(match.group(1)) < now:
        return False
    expected = report_token(tenant_id, job_id, int(match.group(1)))
    return hmac.compare_digest(token.encode("ascii"), expected.encode("ascii"))


def hash_api_key(key: str) -> str:
    """The stored form of a key: HMAC-SHA256 under the configured pepper.

    Keys carry 256 random bits, so a fast keyed hash is enough; the pepper means a leaked
    database alone does not let anyone check guesses.
    """
    return hmac.new(_pepper(), key.encode(), hashlib.sha256).hexdigest()
