"""API keys: random, shown once, stored as an HMAC. Signed links: HMACs under another key."""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets

from service.settings import get_settings

KEY_PREFIX = "gk_"

# "<expires>.<hex HMAC-SHA256>", ASCII only: str.isdigit() accepts "²" and other digits that
# int() refuses, and hmac.compare_digest raises on non-ASCII text.
_LINK_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9a-f]{64})")


class LinkCheck(enum.Enum):
    """What a signed link's token is: good, genuine but past its expiry, or not ours."""

    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"


def generate_api_key() -> str:
    """A new random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _pepper() -> bytes:
    return get_settings().api_key_pepper.get_secret_value().encode()


def _link_key() -> bytes:
    """The key that signs links: its own setting, so rotating the API-key pepper (which
    invalidates stored key hashes) keeps links valid and vice versa. Development without it
    derives one from the pepper (production refuses to start without it)."""
    secret = get_settings().link_signing_secret
    if secret is not None:
        return secret.get_secret_value().encode()
    return hmac.new(_pepper(), b"gauntlet link signing key", hashlib.sha256).digest()


# What a signed link's token looks like: "<expires>.<hex digest>".
LINK_TOKEN_PATTERN = r"^[0-9]+\.[0-9a-f]+$"


def _sign(message: str, expires: int) -> str:
    digest = hmac.new(_link_key(), f"{message}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{digest}"


def _check(token: str, message: str, now: float) -> LinkCheck:
    match = _LINK_TOKEN.fullmatch(token)
    if match is None:
        return LinkCheck.INVALID
    expires = int(match.group(1))
    expected = _sign(message, expires)
    if not hmac.compare_digest(token.encode("ascii"), expected.encode("ascii")):
        return LinkCheck.INVALID
    return LinkCheck.EXPIRED if expires < now else LinkCheck.VALID


def token_expiry(token: str) -> int:
    """The expiry (Unix seconds) a well-formed token carries, else 0."""
    match = _LINK_TOKEN.fullmatch(token)
    return int(match.group(1)) if match else 0


def report_token(tenant_id: str, job_id: str, expires: int) -> str:
    """A token that opens one job's report until ``expires`` (Unix seconds), so a browser
    (which cannot send the bearer key) can show it."""
    return _sign(f"report:{tenant_id}:{job_id}", expires)


def check_report_token(token: str, tenant_id: str, job_id: str, now: float) -> LinkCheck:
    """Whether ``token`` was made for this job, and whether it has expired."""
    return _check(token, f"report:{tenant_id}:{job_id}", now)


def report_token_valid(token: str, tenant_id: str, job_id: str, now: float) -> bool:
    """Whether ``token`` was made for this job and has not expired; ``False`` for anything
    that is not a well-formed token."""
    return check_report_token(token, tenant_id, job_id, now) is LinkCheck.VALID


def leaderboard_token(tenant_id: str, expires: int) -> str:
    """A token that opens a tenant's leaderboard until ``expires`` (Unix seconds)."""
    return _sign(f"leaderboard:{tenant_id}", expires)


def check_leaderboard_token(token: str, tenant_id: str, now: float) -> LinkCheck:
    """Whether ``token`` was made for this tenant's leaderboard, and whether it has expired."""
    return _check(token, f"leaderboard:{tenant_id}", now)


def hash_api_key(key: str) -> str:
    """The stored form of a key: HMAC-SHA256 under the configured pepper.

    Keys carry 256 random bits, so a fast keyed hash is enough; the pepper means a leaked
    database alone does not let anyone check guesses.
    """
    return hmac.new(_pepper(), key.encode(), hashlib.sha256).hexdigest()
