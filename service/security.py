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


def hash_api_key(key: str) -> str:
    """The stored form of a key: HMAC-SHA256 under the configured pepper.

    Keys carry 256 random bits, so a fast keyed hash is enough; the pepper means a leaked
    database alone does not let anyone check guesses.
    """
    pepper = get_settings().api_key_pepper.get_secret_value().encode()
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()
