"""authsvc.credentials.sealing: AES-256-GCM key rings that seal the tokens authsvc issues.

Every token the service mints for itself (upload tokens, album-read tokens, share links) is a
*sealed* blob: the claims are encrypted and authenticated with AES-256-GCM, so the holder can
neither read nor change them, and only the service can make them.

Text form (ASCII, URL-safe, no padding)::

    <tag>.<key id>.<base64url(nonce[12] || ciphertext || gcm tag[16])>
    e.g.  up1.k3f9a0c1d.4Xy…

* ``tag`` names the purpose and the format version (``up1`` upload, ``ar1`` album-read,
  ``sh1`` share). It is only a hint for people and for dispatch: what actually binds the purpose
  is the **associated data** (purpose, version and key id) and a **per-purpose key** derived
  with HKDF from the ring key. A token of one purpose therefore never opens as another, even if
  its tag is rewritten.
* ``key id`` selects the ring key. The first key of the ring seals; every key opens, so keys
  rotate by putting a new key first and dropping the old one once its tokens have expired.
* The claims are compact JSON. Two names are reserved: ``nbf`` (not before) and ``exp``
  (expiry), integer Unix seconds; ``exp`` may be absent for a token that never expires.

Opening is strict: any changed, added or removed character yields :class:`TokenInvalid`
(base64 is checked to be canonical, so even the unused low bits of the last character count),
and only an authentic token can yield :class:`TokenExpired`, so lifetimes never leak for forged
input. Library exceptions never escape.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import secrets
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from enum import Enum
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from typing import Final
from typing import TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from authsvc.errors import ConfigError
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid


class Purpose(StrEnum):
    """What a sealed token is for; bound into its encryption so kinds never mix."""

    ALBUM_READ = "album-read"
    SHARE = "share"
    UPLOAD = "upload"


FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
GCM_TAG_BYTES: Final = 16

# Visible prefixes; the digit is FORMAT_VERSION. Kept short: tokens get pasted in curl commands.
TOKEN_TAGS: Final[Mapping[Purpose, str]] = {
    Purpose.UPLOAD: "up1",
    Purpose.ALBUM_READ: "ar1",
    Purpose.SHARE: "sh1",
}
_PURPOSE_BY_TAG: Final = {tag: purpose for purpose, tag in TOKEN_TAGS.items()}

# Key ids travel in clear inside tokens, so they are short and free of the separator '.'.
_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")

# Refuse absurd input before doing any work (a share link for many studies stays well below).
MAX_TOKEN_CHARS: Final = 32_768


class _AnyServer(Enum):
    ANY = "any"


#: Pass as ``expected_server_id`` to skip the server binding check. ``None`` is a real value
#: (the plugin sends ``server-id: null`` when ``WebServiceIdentifier`` is unset), so it cannot
#: double as "do not check".
ANY_SERVER: Final = _AnyServer.ANY
ExpectedServer = str | None | _AnyServer


def check_server(token_server_id: str | None, expected: ExpectedServer, *, kind: str) -> None:
    """Raise TokenInvalid unless the token's server id equals the expected one (or ANY_SERVER)."""
    if expected is ANY_SERVER or token_server_id == expected:
        return
    raise TokenInvalid(f"This {kind} was issued for another Orthanc server.")


# --- keys ------------------------------------------------------------------------------------


def _derive(key: bytes, purpose: Purpose) -> AESGCM:
    # One ring key, one AEAD key per purpose: even a bug in associated-data handling could not
    # make an upload token decrypt as a share token.
    info = f"authsvc token v{FORMAT_VERSION} {purpose.value}".encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(key)
    return AESGCM(derived)


class KeyRing:
    """Ordered token keys: the first (newest) seals, all of them open."""

    __slots__ = ("_ciphers", "_key_ids")

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """Build from ``(key_id, 32-byte key)`` pairs, newest first; ConfigError if unusable."""
        ciphers: dict[str, dict[Purpose, AESGCM]] = {}
        order: list[str] = []
        for key_id, key in keys:
            if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
                raise ConfigError(
                    "token keys: a key id must be 1-32 characters among A-Z a-z 0-9 _ -"
                )
            if key_id in ciphers:
                raise ConfigError(f"token keys: key id {key_id!r} appears twice")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ConfigError(f"token keys: key {key_id!r} must be exactly {KEY_BYTES} bytes")
            # Precomputed here so that sealing and opening on the hot path only look keys up.
            ciphers[key_id] = {purpose: _derive(key, purpose) for purpose in Purpose}
            order.append(key_id)
        if not order:
            raise ConfigError("token keys: at least one key is required")
        self._ciphers = ciphers
        self._key_ids = tuple(order)

    @classmethod
    def from_text(cls, text: str, *, setting: str = "token keys") -> KeyRing:
        """Parse ``kid:base64url`` items separated by commas or whitespace, newest first."""
        items = [item for item in re.split(r"[\s,]+", text or "") if item]
        if not items:
            raise ConfigError(f"{setting}: at least one key is required (see `keys rotate`)")
        pairs: list[tuple[str, bytes]] = []
        for position, item in enumerate(items, start=1):
            # Messages name the position, never the item: the item contains the key.
            key_id, sep, encoded = item.partition(":")
            if not sep or not key_id or not encoded:
                raise ConfigError(f"{setting}: item {position} is not of the form key-id:key")
            if not _KEY_ID_RE.fullmatch(key_id):
                raise ConfigError(
                    f"{setting}: item {position} has a key id that is not 1-32 characters "
                    "among A-Z a-z 0-9 _ -"
                )
            key = _b64url_decode_lenient(encoded.rstrip("="))
            if key is None or len(key) != KEY_BYTES:
                raise ConfigError(
                    f"{setting}: key {key_id!r} is not {KEY_BYTES} bytes of base64url "
                    "(generate one with `keys rotate`)"
                )
            pairs.append((key_id, key))
        try:
            return cls(pairs)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("token keys", setting, 1)) from None

    @property
    def primary_key_id(self) -> str:
        """Id of the key that seals new tokens."""
        return self._key_ids[0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        """All key ids, newest first."""
        return self._key_ids

    def _cipher(self, key_id: str, purpose: Purpose) -> AESGCM | None:
        by_purpose = self._ciphers.get(key_id)
        return None if by_purpose is None else by_purpose[purpose]

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._key_ids)!r})"


def generate_key(key_id: str | None = None) -> str:
    """Return a fresh key in the text form ``kid:base64url`` (for the ``keys rotate`` command)."""
    if key_id is None:
        key_id = "k" + secrets.token_hex(4)
    if not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError("a key id must be 1-32 characters among A-Z a-z 0-9 _ -")
    return f"{key_id}:{_b64url_encode(secrets.token_bytes(KEY_BYTES))}"


def new_token_id() -> str:
    """Return a random token id (128 bits, 22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


# --- time ------------------------------------------------------------------------------------


def epoch_seconds(moment: datetime) -> int:
    """Return the whole Unix seconds at or before an aware datetime (naive is a bug: ValueError)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware")
    return math.floor(moment.timestamp())


def from_epoch(seconds: int) -> datetime:
    """Return the aware UTC datetime of Unix seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def _now_timestamp(now: datetime) -> float:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.timestamp()


# --- base64url -----------------------------------------------------------------------------


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode_lenient(text: str) -> bytes | None:
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _b64url_decode_strict(text: str) -> bytes | None:
    # The decoder ignores the unused low bits of the last character; re-encoding and comparing
    # makes every character significant, so no two token texts open to the same bytes.
    data = _b64url_decode_lenient(text)
    if data is None or _b64url_encode(data) != text:
        return None
    return data


# --- seal / open -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedToken:
    """An authentic token's content: its key id and claims (``nbf``/``exp`` included)."""

    key_id: str
    claims: Mapping[str, Any]
    not_before: int
    expires_at: int | None

    def check_time(self, now: datetime) -> None:
        """Raise TokenExpired unless ``nbf <= now < exp`` (exact, no leeway)."""
        moment = _now_timestamp(now)
        if moment < self.not_before:
            raise TokenExpired("The token is not valid yet.")
        if self.expires_at is not None and moment >= self.expires_at:
            raise TokenExpired()


def _associated_data(purpose: Purpose, header: str) -> bytes:
    return f"authsvc|v{FORMAT_VERSION}|{purpose.value}|{header}".encode("ascii")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def seal(ring: KeyRing, purpose: Purpose, claims: Mapping[str, Any], *, now: datetime) -> str:
    """Encrypt ``claims`` for ``purpose`` with the ring's newest key and return the token text.

    ``nbf`` defaults to ``now``; ``exp`` (int Unix seconds) is optional and must follow ``nbf``.
    Bad claims are a programming error: ValueError.
    """
    body = dict(claims)
    body.setdefault("nbf", epoch_seconds(now))
    not_before = body["nbf"]
    expires_at = body.get("exp")
    if not _is_int(not_before):
        raise ValueError("nbf must be an integer number of seconds")
    if expires_at is None:
        body.pop("exp", None)
    elif not _is_int(expires_at) or expires_at <= not_before:
        raise ValueError("exp must be an integer number of seconds after nbf")
    try:
        plaintext = json.dumps(
            body, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError("token claims must be JSON-serialisable") from exc
    key_id = ring.primary_key_id
    header = f"{TOKEN_TAGS[purpose]}.{key_id}"
    cipher = ring._cipher(key_id, purpose)
    if cipher is None:  # pragma: no cover - the primary key is always in the ring
        raise RuntimeError("the key ring lost its primary key")
    nonce = os.urandom(NONCE_BYTES)
    sealed = cipher.encrypt(nonce, plaintext, _associated_data(purpose, header))
    return f"{header}.{_b64url_encode(nonce + sealed)}"


def token_purpose(token: str) -> Purpose | None:
    """Return the purpose a token's prefix announces (unverified; for dispatch only), or None."""
    if not isinstance(token, str):
        return None
    tag, sep, _ = token.partition(".")
    return _PURPOSE_BY_TAG.get(tag) if sep else None


def unsafe_open_token_ignoring_time(ring: KeyRing, purpose: Purpose, token: str) -> OpenedToken:
    """DANGER: verify and decrypt a token but skip its lifetime check; call ``check_time`` next.

    For callers that must report *why* a token is unusable (an expired share link still names
    its type). Raises TokenInvalid for anything not sealed by this ring for this purpose.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenInvalid()
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid()
    tag, key_id, payload = parts
    announced = _PURPOSE_BY_TAG.get(tag)
    if announced is None:
        raise TokenInvalid()
    if announced is not purpose:
        # Naming the kind helps the person who pasted the wrong token; it reveals nothing.
        raise TokenInvalid(f"This is not {_article(purpose)} token.")
    cipher = ring._cipher(key_id, purpose)
    if cipher is None:
        raise TokenInvalid()
    raw = _b64url_decode_strict(payload)
    if raw is None or len(raw) < NONCE_BYTES + GCM_TAG_BYTES + 2:
        raise TokenInvalid()
    try:
        plaintext = cipher.decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(purpose, f"{tag}.{key_id}")
        )
    except InvalidTag as exc:
        raise TokenInvalid() from exc
    try:
        claims = json.loads(plaintext)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenInvalid() from exc
    if not isinstance(claims, dict):
        raise TokenInvalid()
    not_before = claims.get("nbf")
    expires_at = claims.get("exp")
    if not _is_int(not_before) or not (expires_at is None or _is_int(expires_at)):
        raise TokenInvalid()
    return OpenedToken(
        key_id=key_id,
        claims=MappingProxyType(claims),
        not_before=not_before,
        expires_at=expires_at,
    )


def open_token(ring: KeyRing, purpose: Purpose, token: str, *, now: datetime) -> OpenedToken:
    """Verify, decrypt and time-check a token of ``purpose``.

    :raise TokenInvalid: malformed, tampered with, other purpose, unknown key id.
    :raise TokenExpired: authentic, but ``now`` is before ``nbf`` or at/after ``exp``.
    """
    opened = unsafe_open_token_ignoring_time(ring, purpose, token)
    opened.check_time(now)
    return opened


def _article(purpose: Purpose) -> str:
    name = purpose.value
    return ("an " if name[0] in "aeiou" else "a ") + name
