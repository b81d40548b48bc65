"""authsvc.album_labels: the Orthanc label an album owns.

Every album is materialised as exactly one Orthanc label. The label is the album's identity
inside Orthanc, so it must be:

* **generated, never derived from user text**: album names change, collide, and may contain
  anything; a label built from them would leak the name into Orthanc, invite collisions with
  hand-made labels, and let a user pick a label that some role already grants;
* **unique**: 128 random bits (``secrets``), so two albums never share a label even across
  replicas or databases (the database's unique constraint is the second line of defence);
* **immutable**: nothing here renames a label; the caller stores it once at album creation;
* **valid for Orthanc**: Orthanc (since 1.12.0, ``ServerToolbox::IsValidLabel``/
  ``CheckValidLabel``, changeset 5250:1acd709c8772 of 2023-04-08, which dropped ``.`` from the
  allowed set) accepts a label only if it is non-empty, at most 64 characters, and made of
  ASCII letters, digits, ``_`` and ``-``. Its error text: "A label must be a non-empty,
  alphanumeric string, possibly with '_' or '-' characters, with maximum 64 characters".

Generated labels are ``<prefix><26 lowercase base32 characters>``. Only lower case is used
(prefix included) because Orthanc's MySQL index plugin may store labels under a
case-insensitive collation, where ``Album-X`` and ``album-x`` would be the same label.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable

from authsvc.errors import ConfigError

__all__ = [
    "DEFAULT_PREFIX",
    "LABEL_MAX_LENGTH",
    "PREFIX_MAX_LENGTH",
    "RANDOM_BITS",
    "RANDOM_LENGTH",
    "is_album_label",
    "is_valid_label",
    "new_album_label",
    "validate_prefix",
]

#: Orthanc's limit on a label's length (a MySQL primary-key constraint upstream).
LABEL_MAX_LENGTH = 64

#: Entropy of the random part of a generated label.
RANDOM_BITS = 128
_RANDOM_BYTES = RANDOM_BITS // 8
#: Length of the random part: base32 of 16 bytes is 26 characters once the padding is dropped.
RANDOM_LENGTH = 26

#: Longest accepted prefix. 32 + 26 = 58 keeps every generated label under Orthanc's 64.
PREFIX_MAX_LENGTH = 32

#: Prefix used when the configuration does not set one.
DEFAULT_PREFIX = "album-"

# Orthanc's own rule, written as a regex. fullmatch() is used everywhere: "$" would accept
# a trailing newline.
_LABEL_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{LABEL_MAX_LENGTH}}}")
# Our stricter prefix rule: starts with a letter (a label such as "-x" looks like a command-line
# option in every tool that prints it), lower case only (see the module docstring).
_PREFIX_RE = re.compile(rf"[a-z][a-z0-9_-]{{0,{PREFIX_MAX_LENGTH - 1}}}")
_RANDOM_PART_RE = re.compile(rf"[a-z2-7]{{{RANDOM_LENGTH}}}")


def is_valid_label(text: object) -> bool:
    """Return True if ``text`` is a string Orthanc accepts as a label."""
    return isinstance(text, str) and _LABEL_RE.fullmatch(text) is not None


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it may start album labels; raise :class:`ConfigError` otherwise."""
    if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
        # The value is configuration, not a secret, but it may be arbitrarily long or contain
        # control characters; repr() and a cut keep the message one readable line.
        shown = repr(prefix)[:80]
        raise ConfigError(
            f"album label prefix {shown} is invalid: use 1 to {PREFIX_MAX_LENGTH} characters "
            "from a-z, 0-9, '_' and '-', starting with a letter"
        )
    return prefix


def new_album_label(
    prefix: str = DEFAULT_PREFIX,
    *,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> str:
    """Return a fresh album label: ``prefix`` followed by 128 random bits in base32."""
    validate_prefix(prefix)
    raw = random_bytes(_RANDOM_BYTES)
    # An injected source is a test seam; a short read would silently weaken every label.
    if len(raw) != _RANDOM_BYTES:
        raise ValueError(f"random source returned {len(raw)} bytes, expected {_RANDOM_BYTES}")
    random_part = base64.b32encode(raw).decode("ascii").rstrip("=").lower()
    # Valid by construction: a valid prefix (<= 32 chars of [a-z0-9_-]) plus 26 base32
    # characters ([a-z2-7]) is at most 58 characters of Orthanc's alphabet.
    return prefix + random_part


def is_album_label(text: object, prefix: str = DEFAULT_PREFIX) -> bool:
    """Return True if ``text`` has the exact shape :func:`new_album_label` gives ``prefix``."""
    if not isinstance(text, str) or not text.startswith(prefix):
        return False
    return _RANDOM_PART_RE.fullmatch(text[len(prefix) :]) is not None
