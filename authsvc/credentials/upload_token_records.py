"""authsvc.credentials.upload_token_records: issue, list, revoke, honour upload tokens (DB side).

:mod:`authsvc.credentials.album_tokens` seals and opens the token text; this module keeps the
row that makes a token revocable and countable (``upload_token``), and answers "may this token
upload into this album now?" before a single byte of the upload reaches Orthanc.

* **Shown once.** :func:`issue` returns the sealed token with the row; only the row is stored.
  The token carries its row id (``jti``), its album and Orthanc server, and its lifetime.
* **Who may.** Contributors and above issue tokens for their album; contributors see and
  revoke the tokens they issued, managers all of the album's (``policy`` decides, with
  ``Target.token_issued_by_actor``).
* **Counting.** A use is reserved by one atomic ``UPDATE … SET use_count = use_count + 1
  WHERE … AND (max_uses IS NULL OR use_count < max_uses) AND revoked_at IS NULL``, committed at
  once: two uploads racing for the last use cannot both win, on SQLite or PostgreSQL. An upload
  that stores nothing (bad input, Orthanc down) gives its use back (:func:`release_use`), so
  such a failure leaves the token exactly as it was.

Every public function commits its own transaction, with the audit row in it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.albums import Caller
from authsvc.albums import album_role
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.credentials.album_tokens import issue_upload_token
from authsvc.credentials.album_tokens import open_upload_token
from authsvc.credentials.lifecycle import MakerRights
from authsvc.credentials.records import lifetime_state
from authsvc.credentials.records import revoke_row
from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import new_token_id
from authsvc.errors import CredentialSuspended
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import TokenInvalid
from authsvc.errors import TokenRevoked
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.models import UploadToken
from authsvc.models import utcnow
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import CredentialKind
from authsvc.policy import Decision
from authsvc.policy import Denied
from authsvc.policy import Target
from authsvc.policy import decide

__all__ = [
    "IssuedToken",
    "TokenLimits",
    "authorize",
    "backing_of",
    "issue",
    "list_tokens",
    "listed_json",
    "release_use",
    "revoke",
    "token_json",
]

NOTE_MAX_LENGTH = 500
MAX_USES_LIMIT = 1_000_000


@dataclasses.dataclass(frozen=True)
class TokenLimits:
    """Lifetimes from the configuration, in seconds."""

    default_lifetime: int
    max_lifetime: int


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: the row, and the sealed text to show exactly once."""

    row: UploadToken
    token: str


def token_json(
    row: UploadToken, *, now: dt.datetime | None = None, backing: Decision | None = None
) -> dict[str, Any]:
    """Return the public description of a token row (never the token itself).

    ``backing``: whether its maker still backs it (:func:`backing_of`); a refusal makes an
    otherwise active token ``suspended``, with the ``reason`` in words.
    """
    now = now or utcnow()
    state: str = lifetime_state(row, now)
    if state == "active":
        if row.max_uses is not None and row.use_count >= row.max_uses:
            state = "used-up"
        elif backing is not None and not backing:
            state = "suspended"
    return {
        "id": row.id,
        "album_id": row.album_id,
        "state": state,
        "reason": backing.reason if state == "suspended" and backing is not None else None,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "use_count": row.use_count,
        "max_uses": row.max_uses,
        "note": row.note,
    }


def backing_of(rights: MakerRights, row: UploadToken, album: Album | None) -> Decision:
    """Return whether the token's maker still backs it (:mod:`authsvc.credentials.lifecycle`)."""
    return rights.album_credential(CredentialKind.UPLOAD_TOKEN, row.id, row.created_by, album)


def listed_json(
    rights: MakerRights, row: UploadToken, *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Return :func:`token_json` with the maker check done for tokens still in force."""
    now = now or utcnow()
    backing = None
    if row.revoked_at is None and row.expires_at > now:
        backing = backing_of(rights, row, db.session.get(Album, row.album_id))
    return token_json(row, now=now, backing=backing)


# --- helpers ---------------------------------------------------------------------------------


def _load_album(album_id: str) -> Album | None:
    if not isinstance(album_id, str) or not album_id or len(album_id) > 64:
        return None
    album: Album | None = db.session.get(Album, album_id)
    return album


def _deny(caller: Caller, action: Action, album_id: str, decision: Decision) -> None:
    db.session.rollback()
    audit.record(
        action.value, caller.name, f"album:{album_id}", Outcome.denied, {"reason": decision.reason}
    )
    db.session.commit()
    if isinstance(decision, Denied) and decision.conceal:
        raise NotFound("No such album.")
    raise Forbidden(f"Not allowed: {decision.reason}.")


def _album_for(caller: Caller, album_id: str) -> tuple[Album, AlbumRole | None]:
    """Load the album and the caller's role; 404 when missing or hidden from the caller."""
    album = _load_album(album_id)
    if album is None:
        raise NotFound("No such album.")
    role = album_role(caller, album.id)
    decision = decide(caller.actor, Action.ALBUM_VIEW, album_role=role)
    if not decision:
        _deny(caller, Action.ALBUM_VIEW, album.id, decision)
    return album, role


def _lifetime(value: object, limits: TokenLimits) -> int:
    if value is None:
        return limits.default_lifetime
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(
            "lifetime_seconds must be a whole number of seconds.",
            details={"lifetime_seconds": "type"},
        )
    if value < 60 or value > limits.max_lifetime:
        raise ValidationFailed(
            f"lifetime_seconds must be between 60 and {limits.max_lifetime}.",
            details={"lifetime_seconds": "range"},
        )
    return value


def _max_uses(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_USES_LIMIT:
        raise ValidationFailed(
            f"max_uses must be null or a whole number from 1 to {MAX_USES_LIMIT}.",
            details={"max_uses": "range"},
        )
    return value


def _note(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > NOTE_MAX_LENGTH:
        raise ValidationFailed(
            f"note must be text of at most {NOTE_MAX_LENGTH} characters.", details={"note": "type"}
        )
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise ValidationFailed(
            "note must not contain control characters.", details={"note": "control"}
        )
    return value.strip()


# --- use-cases -------------------------------------------------------------------------------


def issue(
    caller: Caller,
    album_id: str,
    body: object,
    *,
    ring: KeyRing | None,
    limits: TokenLimits,
    now: dt.datetime | None = None,
) -> IssuedToken:
    """Issue an upload token for an album (contributors and above).

    ``body``: ``{"lifetime_seconds": int?, "max_uses": int?, "note": str?}``.
    :raise 404: no such album (or not a member). :raise 403: below contributor.
    :raise 422: bad fields. :raise 503: no token key ring is configured.
    """
    album, role = _album_for(caller, album_id)
    decision = decide(caller.actor, Action.ALBUM_UPLOAD_TOKEN_CREATE, album_role=role)
    if not decision:
        _deny(caller, Action.ALBUM_UPLOAD_TOKEN_CREATE, album.id, decision)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    unknown = sorted(set(body) - {"lifetime_seconds", "max_uses", "note"})
    if unknown:
        raise ValidationFailed(
            f"Unknown field(s): {', '.join(unknown)}.", details={k: "unknown" for k in unknown}
        )
    lifetime = _lifetime(body.get("lifetime_seconds"), limits)
    max_uses = _max_uses(body.get("max_uses"))
    note = _note(body.get("note"))
    if ring is None:
        raise DependencyUnavailable(
            "Upload tokens are not configured on this server (AUTHSVC_UPLOAD_TOKEN_KEYS)."
        )
    now = now or utcnow()
    token_id = new_token_id()
    text = issue_upload_token(
        ring,
        token_id=token_id,
        album_id=album.id,
        server_id=album.server_id,
        issuer=caller.subject,
        lifetime=dt.timedelta(seconds=lifetime),
        now=now,
    )
    # The row's expiry is the token's, to the second (the token keeps whole seconds).
    expires = now.replace(microsecond=0) + dt.timedelta(seconds=lifetime)
    row = UploadToken(
        id=token_id,
        album_id=album.id,
        server_id=album.server_id,
        created_by=caller.subject,
        created_at=now,
        expires_at=expires,
        use_count=0,
        max_uses=max_uses,
        note=note,
    )
    db.session.add(row)
    audit.record(
        AuditAction.token_upload_create,
        caller.name,
        f"album:{album.id}",
        Outcome.success,
        {"token_id": token_id, "expires_at": expires.isoformat(), "max_uses": max_uses},
    )
    db.session.commit()
    return IssuedToken(row=row, token=text)


def list_tokens(caller: Caller, album_id: str) -> list[UploadToken]:
    """List an album's upload tokens: all for managers, their own for contributors.

    :raise 404/403.
    """
    album, role = _album_for(caller, album_id)
    query = sa.select(UploadToken).where(UploadToken.album_id == album.id)
    everyone = decide(
        caller.actor, Action.ALBUM_UPLOAD_TOKEN_LIST, album_role=role, target=Target()
    )
    if not everyone:
        own = decide(
            caller.actor,
            Action.ALBUM_UPLOAD_TOKEN_LIST,
            album_role=role,
            target=Target(token_issued_by_actor=True),
        )
        if not own:
            _deny(caller, Action.ALBUM_UPLOAD_TOKEN_LIST, album.id, own)
        query = query.where(UploadToken.created_by == caller.subject)
    rows = db.session.execute(query.order_by(UploadToken.created_at.desc())).scalars()
    return list(rows)


def revoke(caller: Caller, album_id: str, token_id: str) -> UploadToken:
    """Revoke one upload token (idempotent: revoking twice keeps the first time).

    :raise 404: no such album or token (a contributor cannot tell others' tokens exist).
    :raise 403.
    """
    album, role = _album_for(caller, album_id)
    row = db.session.execute(
        sa.select(UploadToken).where(UploadToken.id == token_id, UploadToken.album_id == album.id)
    ).scalar_one_or_none()
    mine = row is not None and row.created_by == caller.subject
    decision = decide(
        caller.actor,
        Action.ALBUM_UPLOAD_TOKEN_REVOKE,
        album_role=role,
        target=Target(token_issued_by_actor=mine),
    )
    if row is None or (not decision and role is not None and role.at_least(AlbumRole.CONTRIBUTOR)):
        # Contributors may not learn which tokens others hold: unknown and not-yours look alike.
        raise NotFound("No such upload token in this album.")
    if not decision:
        _deny(caller, Action.ALBUM_UPLOAD_TOKEN_REVOKE, album.id, decision)
    revoke_row(
        row,
        now=utcnow(),
        revoked_by=caller.subject,
        event=AuditAction.token_upload_revoke,
        actor=caller.name,
        target=f"album:{album.id}",
        details={"token_id": row.id},
    )
    db.session.commit()
    return row


def authorize(
    rights: MakerRights,
    ring: KeyRing | None,
    token: str,
    album_id: str,
    *,
    now: dt.datetime | None = None,
) -> tuple[UploadToken, Album]:
    """Check an upload token for an upload into ``album_id`` and reserve one use (committed).

    Done before the upload body is read, so a refused token never sends a byte to Orthanc.

    :raise TokenInvalid: tampered, not an upload token, unknown key, for another server (401).
    :raise TokenExpired: outside its lifetime (401).
    :raise TokenRevoked: revoked, or all its uses are spent (401).
    :raise Forbidden: a valid token for another album (403).
    :raise NotFound: the album does not exist (404).
    """
    if ring is None:
        raise TokenInvalid("Upload tokens are not configured on this server.")
    now = now or utcnow()
    album = _load_album(album_id)
    claims = open_upload_token(
        ring,
        token,
        now=now,
        expected_server_id=album.server_id if album is not None else ANY_SERVER,
    )
    if album is None:
        raise NotFound("No such album.")
    if claims.album_id != album.id:
        raise Forbidden("This upload token is for another album.")
    row = db.session.get(UploadToken, claims.token_id)
    if row is None or row.album_id != album.id:
        # An authentic token without its row: the album was deleted and made again, or the
        # row was purged. Either way it must not work.
        raise TokenRevoked("This upload token is no longer valid.")
    if row.revoked_at is not None:
        raise TokenRevoked("This upload token has been revoked.")
    backing = rights.album_credential(CredentialKind.UPLOAD_TOKEN, row.id, row.created_by, album)
    if not backing:
        db.session.rollback()
        rights.audit_refusal(
            CredentialKind.UPLOAD_TOKEN, row.id, f"album:{album.id}", backing.reason
        )
        raise CredentialSuspended(f"This upload token no longer works: {backing.reason}.")
    reserved = db.session.execute(
        sa.update(UploadToken)
        .where(
            UploadToken.id == row.id,
            UploadToken.revoked_at.is_(None),
            sa.or_(UploadToken.max_uses.is_(None), UploadToken.use_count < UploadToken.max_uses),
        )
        .values(use_count=UploadToken.use_count + 1, last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if reserved.rowcount != 1:  # type: ignore[attr-defined]
        raise TokenRevoked(
            f"This upload token has been used {row.max_uses} time(s), its maximum."
            if row.max_uses is not None
            else "This upload token has been revoked."
        )
    db.session.refresh(row)
    return row, album


def album_named_by(ring: KeyRing | None, token: str, *, now: dt.datetime | None = None) -> str:
    """Return the id of the album an authentic, unexpired upload token names.

    For uploads that arrive without an album in their path (STOW-RS sent to Orthanc's own
    DICOMweb root, which nginx hands to authsvc); :func:`authorize` then checks the rest.

    :raise TokenInvalid: tampered, not an upload token, unknown key (401).
    :raise TokenExpired: outside its lifetime (401).
    """
    if ring is None:
        raise TokenInvalid("Upload tokens are not configured on this server.")
    return open_upload_token(ring, token, now=now or utcnow()).album_id


def release_use(token_id: str) -> None:
    """Give back a reserved use after an upload that stored nothing (commits)."""
    db.session.execute(
        sa.update(UploadToken)
        .where(UploadToken.id == token_id, UploadToken.use_count > 0)
        .values(use_count=UploadToken.use_count - 1)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
