"""API keys: random, shown once, stored as an HMAC."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from service.settings import get_settings

KEY_PREFIX = "gk_"


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
    """Whether ``token`` was made for this job and has not expired."""
    expires_text, _, _signature = token.partition(".")
    if not expires_text.isdigit() or int(expires_text) < now:
        return False
    return hmac.compare_digest(token, report_token(tenant_id, job_id, int(expires_text)))


def hash_api_key(key: str) -> str:
    """The stored form of a key: HMAC-SHA256 under the configured pepper.

    Keys carry 256 random bits, so a fast keyed hash is enough; the pepper means a leaked
    database alone does not let anyone check guesses.
    """
    return hmac.new(_pepper(), key.encode(), hashlib.sha256).hexdigest()
