"""authsvc.credentials.album_tokens: sealed, time-limited tokens for one album (upload, read).

An *upload token* lets its holder send DICOM into one album; an *album-read token* lets its
holder read one album (album-scoped DICOMweb). Both are :mod:`authsvc.credentials.sealing`
tokens carrying the same claims, told apart by their
:class:`~authsvc.credentials.sealing.Purpose`, which is bound into the encryption: one kind
never opens as the other.

Claims (compact JSON keys): ``jti`` token id, ``alb`` album id, ``srv`` Orthanc server id (may be
null: the plugin's ``server-id`` when ``WebServiceIdentifier`` is unset), ``iss`` the issuing
principal, ``nbf``/``exp`` Unix seconds. Every album token expires.

What a token alone cannot tell is decided by the caller against the database row with the same
``token_id``: revocation, use count / maximum uses, and whether the album still exists. This
module never touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from functools import partial
from typing import Final

from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import ExpectedServer
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.sealing import check_server
from authsvc.credentials.sealing import epoch_seconds
from authsvc.credentials.sealing import from_epoch
from authsvc.credentials.sealing import open_token
from authsvc.credentials.sealing import seal
from authsvc.errors import TokenInvalid
from authsvc.errors import ValidationFailed

ALBUM_TOKEN_PURPOSES: Final = frozenset({Purpose.UPLOAD, Purpose.ALBUM_READ})

_KIND: Final = {Purpose.UPLOAD: "upload token", Purpose.ALBUM_READ: "album-read token"}


@dataclass(frozen=True, slots=True)
class AlbumTokenClaims:
    """The verified content of an upload or album-read token."""

    purpose: Purpose
    token_id: str
    album_id: str
    server_id: str | None
    issuer: str
    not_before: datetime
    expires_at: datetime
    key_id: str


#: Upload tokens are album tokens whose ``purpose`` is :attr:`Purpose.UPLOAD`.
UploadTokenClaims = AlbumTokenClaims


def _require_album_purpose(purpose: Purpose) -> None:
    if purpose not in ALBUM_TOKEN_PURPOSES:
        raise ValueError(f"{purpose.value!r} is not an album token purpose")


def _require_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationFailed(f"{name} must be a non-empty string.", details={name: "required"})
    return value


def issue_album_token(
    ring: KeyRing,
    *,
    purpose: Purpose,
    token_id: str,
    album_id: str,
    server_id: str | None,
    issuer: str,
    lifetime: timedelta,
    now: datetime,
) -> str:
    """Seal an album token of ``purpose`` valid from ``now`` for ``lifetime``.

    :raise ValidationFailed: empty ids, or a lifetime shorter than one second (422).
    """
    _require_album_purpose(purpose)
    if server_id is not None and not isinstance(server_id, str):
        raise ValidationFailed("server_id must be a string or null.", details={"server_id": "type"})
    claims = {
        "jti": _require_text("token_id", token_id),
        "alb": _require_text("album_id", album_id),
        "srv": server_id,
        "iss": _require_text("issuer", issuer),
    }
    seconds = int(lifetime.total_seconds())
    if seconds < 1:
        raise ValidationFailed(
            "The token lifetime must be at least one second.", details={"lifetime": "too short"}
        )
    not_before = epoch_seconds(now)
    return seal(ring, purpose, {**claims, "nbf": not_before, "exp": not_before + seconds}, now=now)


def open_album_token(
    ring: KeyRing,
    token: str,
    *,
    purpose: Purpose,
    now: datetime,
    expected_server_id: ExpectedServer = ANY_SERVER,
) -> AlbumTokenClaims:
    """Verify an album token of ``purpose`` and return its claims.

    ``expected_server_id``: the Orthanc server the request is for; ``None`` means "the server
    without identifier", :data:`~authsvc.credentials.sealing.ANY_SERVER` (default) skips the check.

    :raise TokenInvalid: not an authentic token of this purpose, or issued for another server.
    :raise TokenExpired: outside its lifetime.
    """
    _require_album_purpose(purpose)
    opened = open_token(ring, purpose, token, now=now)
    claims = opened.claims
    token_id = claims.get("jti")
    album_id = claims.get("alb")
    server_id = claims.get("srv")
    issuer = claims.get("iss")
    if (
        not isinstance(token_id, str)
        or not isinstance(album_id, str)
        or not (server_id is None or isinstance(server_id, str))
        or not isinstance(issuer, str)
        or opened.expires_at is None
    ):
        raise TokenInvalid()
    check_server(server_id, expected_server_id, kind=_KIND[purpose])
    return AlbumTokenClaims(
        purpose=purpose,
        token_id=token_id,
        album_id=album_id,
        server_id=server_id,
        issuer=issuer,
        not_before=from_epoch(opened.not_before),
        expires_at=from_epoch(opened.expires_at),
        key_id=opened.key_id,
    )


# Each purpose's pair is the generic pair with the purpose bound: one body serves both kinds.
#: Seal an upload token for one album (see :func:`issue_album_token`).
issue_upload_token = partial(issue_album_token, purpose=Purpose.UPLOAD)
#: Verify an upload token (see :func:`open_album_token`); check its DB row next.
open_upload_token = partial(open_album_token, purpose=Purpose.UPLOAD)
#: Seal an album-read token for one album (see :func:`issue_album_token`).
issue_album_read_token = partial(issue_album_token, purpose=Purpose.ALBUM_READ)
#: Verify an album-read token (see :func:`open_album_token`); check its DB row next.
open_album_read_token = partial(open_album_token, purpose=Purpose.ALBUM_READ)

#: The short name the design notes use: ``upload_tokens.issue(...)`` (this module's former name).
issue = issue_upload_token
