"""authsvc.credentials.api_keys: generate, parse and check API keys for scripts and forwarders.

An API key looks like ``ask_3f9c0a1b2c3d4e5f_<43 base64url characters>``:

* ``ask_`` — a recognisable prefix, so leaked keys are easy to spot (secret scanners, logs);
* a 16-hex-digit public **key id** — the database looks the key up by this id;
* a 256-bit random **secret** — only its SHA-256 is stored, and it is compared in constant time.

Why a plain SHA-256 and not a password hash (bcrypt, argon2)? Slow hashes protect *guessable*
secrets. This secret is 256 bits from :mod:`secrets`: no dictionary or brute-force attack on a
stolen hash is feasible, so a fast hash is as safe and keeps every authenticated request cheap.

Pure functions, no I/O: the caller stores ``(key_id, secret_hash)`` and shows the plaintext once.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

from authsvc.errors import TokenInvalid

__all__ = [
    "API_KEY_PREFIX",
    "GeneratedApiKey",
    "ParsedApiKey",
    "generate_api_key",
    "hash_api_key_secret",
    "parse_api_key",
    "redacted_api_key",
    "verify_api_key",
]

#: Default prefix of every API key.
API_KEY_PREFIX = "ask_"

_KEY_ID_BYTES = 8  # 16 hex digits: public, only needs to be unique
_SECRET_BYTES = 32  # 256 bits of entropy
_SECRET_CHARS = 43  # len(secrets.token_urlsafe(32)): unpadded base64url
_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}_")


class GeneratedApiKey(NamedTuple):
    """A new key: show ``plaintext`` once, store ``key_id`` and ``secret_hash``."""

    plaintext: str
    key_id: str
    secret_hash: str


class ParsedApiKey(NamedTuple):
    """The two parts of a presented key."""

    key_id: str
    secret: str


def _check_prefix(prefix: str) -> None:
    """Refuse prefixes that would make keys ambiguous to parse (a programming error)."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            "API key prefix must be 1-16 letters/digits starting with a letter, plus '_'"
        )


@functools.lru_cache(maxsize=8)
def _key_pattern(prefix: str) -> re.Pattern[str]:
    """Return the compiled full-match pattern for keys with this prefix."""
    _check_prefix(prefix)
    return re.compile(
        re.escape(prefix)
        + rf"(?P<key_id>[0-9a-f]{{{2 * _KEY_ID_BYTES}}})"
        + rf"_(?P<secret>[A-Za-z0-9_-]{{{_SECRET_CHARS}}})"
    )


def hash_api_key_secret(secret: str) -> str:
    """Return the hex SHA-256 of a secret: the value to store (see module docstring)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def generate_api_key(prefix: str = API_KEY_PREFIX) -> GeneratedApiKey:
    """Create a new API key with a fresh key id and a 256-bit secret."""
    _check_prefix(prefix)
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return GeneratedApiKey(f"{prefix}{key_id}_{secret}", key_id, hash_api_key_secret(secret))


def parse_api_key(text: str, prefix: str = API_KEY_PREFIX) -> ParsedApiKey:
    """Split a presented key into its key id and secret.

    :raise TokenInvalid: the text is not an API key of this format (no part of it is echoed).
    """
    match = _key_pattern(prefix).fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise TokenInvalid("The API key is malformed.")
    return ParsedApiKey(match["key_id"], match["secret"])


def verify_api_key(secret: str, stored_hash: str) -> bool:
    """Return True if ``secret`` hashes to ``stored_hash``, comparing in constant time."""
    if not isinstance(secret, str) or not isinstance(stored_hash, str):
        return False
    computed = hash_api_key_secret(secret).encode("ascii")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a corrupted stored value must
    # answer False rather than raise.
    return hmac.compare_digest(computed, stored_hash.strip().lower().encode("utf-8"))


def redacted_api_key(key_id: str, prefix: str = API_KEY_PREFIX) -> str:
    """Return a display form that identifies a key without revealing it: ``ask_<id>_…``."""
    return f"{prefix}{key_id}_\u2026"
