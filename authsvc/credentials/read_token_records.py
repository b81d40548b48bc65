"""authsvc.credentials.read_token_records: album read tokens — issue, list, revoke, verify.

A sealed, expiring token (:mod:`authsvc.credentials.album_tokens`, purpose ``album-read``)
naming one album, plus an ``album_read_token`` row that can be revoked.
:func:`issue_read_token`/:func:`list_read_tokens`/:func:`revoke_read_token` are the use-cases
behind ``/api/albums/<id>/read-tokens`` (managers and up, audited); :func:`verify_read_token`
checks a presented token against its row (revocation is seen at once: the row is read on every
use, which is one primary-key lookup) and against its maker's rights now
(:class:`authsvc.credentials.lifecycle.MakerRights`).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from authsvc import audit
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.credentials.album_tokens import AlbumTokenClaims
from authsvc.credentials.album_tokens import issue_album_read_token
from authsvc.credentials.album_tokens import open_album_read_token
from authsvc.credentials.lifecycle import MakerRights
from authsvc.credentials.records import lifetime_state
from authsvc.credentials.records import revoke_row
from authsvc.credentials.sealing import KeyRing
from authsvc.errors import CredentialSuspended
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import TokenInvalid
from authsvc.errors import TokenRevoked
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import AlbumReadToken
from authsvc.models import utcnow
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import CredentialKind
from authsvc.policy import Decision
from authsvc.policy import decide

__all__ = [
    "READ_TOKEN_DEFAULT_LIFETIME",
    "READ_TOKEN_MAX_LIFETIME",
    "IssuedReadToken",
    "ReadGrant",
    "issue_read_token",
    "list_read_tokens",
    "read_token_json",
    "revoke_read_token",
    "verify_read_token",
]

#: Lifetime of a read token when the issuer names none (7 days), and the longest allowed (1 year).
READ_TOKEN_DEFAULT_LIFETIME = 7 * 86_400
READ_TOKEN_MAX_LIFETIME = 365 * 86_400
_NOTE_MAX = 500
_TOUCH_INTERVAL = dt.timedelta(seconds=60)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedReadToken:
    """A freshly issued read token: ``token`` is shown once and never stored."""

    row: AlbumReadToken
    token: str


def _authorize(actor: Actor, action: Action, album: Album | None, role: AlbumRole | None) -> Album:
    """Return the album if the actor may do ``action`` on it; 404 for non-members, else 403."""
    if album is None:
        raise NotFound("No such album.")
    decision = decide(actor, action, album_role=role)
    if not decision:
        if getattr(decision, "conceal", False):
            raise NotFound("No such album.")
        raise Forbidden(f"Not allowed: {decision.reason}.")
    return album


def _load_album(album_id: str) -> Album | None:
    if not album_id or len(album_id) > 64:
        return None
    return db.session.get(Album, album_id)


def _lifetime(value: object) -> dt.timedelta:
    if value is None:
        return dt.timedelta(seconds=READ_TOKEN_DEFAULT_LIFETIME)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(
            "lifetime must be a number of seconds.", details={"lifetime": "integer"}
        )
    if not 60 <= value <= READ_TOKEN_MAX_LIFETIME:
        raise ValidationFailed(
            f"lifetime must be between 60 and {READ_TOKEN_MAX_LIFETIME} seconds.",
            details={"lifetime": "range"},
        )
    return dt.timedelta(seconds=value)


def _note(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > _NOTE_MAX:
        raise ValidationFailed(
            f"note must be a string of at most {_NOTE_MAX} characters.", details={"note": "invalid"}
        )
    return value.strip()


def issue_read_token(
    ring: KeyRing,
    actor: Actor,
    audit_name: str,
    album_id: str,
    role: AlbumRole | None,
    *,
    lifetime: object = None,
    note: object = None,
) -> IssuedReadToken:
    """Create a read token for an album (managers and up); audited; commits.

    :raise 404: no such album, or the caller is not a member.
    :raise 403: the caller's role is below manager.
    :raise 422: bad lifetime or note.
    """
    album = _authorize(actor, Action.ALBUM_READ_TOKEN_CREATE, _load_album(album_id), role)
    span = _lifetime(lifetime)
    text = _note(note)
    now = utcnow()
    token_id = secrets.token_urlsafe(16)
    token = issue_album_read_token(
        ring,
        token_id=token_id,
        album_id=album.id,
        server_id=album.server_id or None,
        issuer=actor.subject or audit_name,
        lifetime=span,
        now=now,
    )
    row = AlbumReadToken(
        id=token_id,
        album_id=album.id,
        server_id=album.server_id,
        created_by=actor.subject or audit_name,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=int(span.total_seconds())),
        note=text,
    )
    db.session.add(row)
    audit.record(
        AuditAction.token_album_read_create,
        audit_name,
        f"album:{album.id}",
        Outcome.success,
        {"token_id": token_id, "expires_at": row.expires_at.isoformat()},
    )
    db.session.commit()
    return IssuedReadToken(row=row, token=token)


def list_read_tokens(actor: Actor, album_id: str, role: AlbumRole | None) -> list[AlbumReadToken]:
    """Return the album's read tokens, newest first (managers and up)."""
    album = _authorize(actor, Action.ALBUM_READ_TOKEN_LIST, _load_album(album_id), role)
    return list(
        db.session.execute(
            sa.select(AlbumReadToken)
            .where(AlbumReadToken.album_id == album.id)
            .order_by(AlbumReadToken.created_at.desc(), AlbumReadToken.id)
        ).scalars()
    )


def revoke_read_token(
    actor: Actor, audit_name: str, album_id: str, role: AlbumRole | None, token_id: str
) -> AlbumReadToken:
    """Revoke one read token of the album (idempotent); audited; commits.

    :raise 404: no such album or token (or not a member).
    :raise 403: the caller's role is below manager.
    """
    album = _authorize(actor, Action.ALBUM_READ_TOKEN_REVOKE, _load_album(album_id), role)
    row = db.session.get(AlbumReadToken, token_id) if token_id and len(token_id) <= 64 else None
    if row is None or row.album_id != album.id:
        raise NotFound("No such read token.")
    if revoke_row(
        row,
        now=utcnow(),
        revoked_by=actor.subject or audit_name,
        event=AuditAction.token_album_read_revoke,
        actor=audit_name,
        target=f"album:{album.id}",
        details={"token_id": row.id},
    ):
        db.session.commit()
    return row


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """A verified read token: the album it opens and that album's label."""

    claims: AlbumTokenClaims
    album_id: str
    label: str
    server_id: str


def verify_read_token(rights: MakerRights, ring: KeyRing, token: str) -> ReadGrant:
    """Return what a presented album read token opens.

    :raise TokenInvalid: forged, malformed, of another kind, or its album is gone (401).
    :raise TokenExpired: past its lifetime (401).
    :raise TokenRevoked: revoked (401).
    """
    claims = open_album_read_token(ring, token, now=utcnow())
    row = db.session.get(AlbumReadToken, claims.token_id)
    if row is None or row.album_id != claims.album_id:
        raise TokenInvalid("The album read token is not valid.")
    if row.revoked_at is not None:
        raise TokenRevoked("The album read token has been revoked.")
    album = db.session.get(Album, claims.album_id)
    if album is None:
        raise TokenInvalid("The album read token is not valid.")
    backing = read_token_backing(rights, row, album)
    if not backing:
        rights.audit_refusal(
            CredentialKind.ALBUM_READ_TOKEN, row.id, f"album:{album.id}", backing.reason
        )
        raise CredentialSuspended(f"This album read token no longer works: {backing.reason}.")
    _touch(row)
    return ReadGrant(claims=claims, album_id=album.id, label=album.label, server_id=album.server_id)


def read_token_backing(rights: MakerRights, row: AlbumReadToken, album: Album | None) -> Decision:
    """Return whether the token's maker may still make read tokens for the album."""
    return rights.album_credential(CredentialKind.ALBUM_READ_TOKEN, row.id, row.created_by, album)


def _touch(row: AlbumReadToken) -> None:
    """Record the token's last use, at most once a minute, in its own short transaction."""
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at < _TOUCH_INTERVAL:
        return
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.update(AlbumReadToken)
                .where(AlbumReadToken.id == row.id)
                .values(last_used_at=now)
            )
    except SQLAlchemyError as exc:
        # Bookkeeping only: a busy database must not turn a valid token away.
        log.info("album read token %s: last use not recorded (%s)", row.id, type(exc).__name__)


def read_token_json(row: AlbumReadToken, *, rights: MakerRights | None = None) -> dict[str, object]:
    """Return the JSON form of a read token record (never the token itself).

    With ``rights``: add ``state`` (active, expired, revoked, or suspended when its maker no
    longer backs it) and the ``reason`` of a suspension.
    """
    extra: dict[str, object] = {}
    if rights is not None:
        state: str = lifetime_state(row, utcnow())
        reason = None
        if state == "active":
            backing = read_token_backing(rights, row, db.session.get(Album, row.album_id))
            if not backing:
                state, reason = "suspended", backing.reason
        extra = {"state": state, "reason": reason}
    return {
        **extra,
        "id": row.id,
        "album_id": row.album_id,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "note": row.note,
    }
