"""authsvc.identity.admin_sessions: server-side sessions of the admin pages.

The browser's (signed, HttpOnly) cookie carries only a random session id. The row it names
holds who signed in — the :class:`~authsvc.identity.Identity` built from the verified access
token — and the ID token the provider's logout needs. Keeping this server-side means that
signing out really ends access: the row is deleted, so a copied cookie opens nothing, in every
worker and replica at once. Only the SHA-256 of the id is stored.

No Flask request state here: the views pass the id in and get values back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from authsvc.errors import Forbidden
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.models import AdminSession
from authsvc.models import KnownUser
from authsvc.models import utcnow

__all__ = [
    "SignedIn",
    "end_session",
    "find_user",
    "known_users",
    "identity_from_json",
    "identity_to_json",
    "load_session",
    "remember_user",
    "start_session",
]


@dataclass(frozen=True)
class SignedIn:
    """A live admin session: who, the ID token for logout, and when it ends."""

    identity: Identity
    id_token: str | None
    expires_at: dt.datetime


def _digest(session_id: str) -> str:
    """Return the stored form of a session id."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def identity_to_json(identity: Identity) -> dict[str, Any]:
    """Return the JSON form of an identity (sets as sorted lists)."""
    return {
        "kind": identity.kind.value,
        "subject": identity.subject,
        "username": identity.username,
        "name": identity.name,
        "email": identity.email,
        "email_verified": identity.email_verified,
        "realm_roles": sorted(identity.realm_roles),
        "client_roles": sorted(identity.client_roles),
        "groups": sorted(identity.groups),
    }


def identity_from_json(data: dict[str, Any]) -> Identity:
    """Rebuild an identity stored by :func:`identity_to_json`."""
    return Identity(
        kind=IdentityKind(data["kind"]),
        subject=str(data["subject"]),
        username=str(data.get("username") or ""),
        name=str(data.get("name") or ""),
        email=data.get("email") or None,
        email_verified=data.get("email_verified") is True,
        realm_roles=frozenset(data.get("realm_roles") or ()),
        client_roles=frozenset(data.get("client_roles") or ()),
        groups=frozenset(data.get("groups") or ()),
    )


def start_session(identity: Identity, id_token: str | None, lifetime: int) -> str:
    """Record a new session and return its id (for the cookie); commits.

    Expired sessions are swept on the way, so the table does not grow without bound.

    :raise Forbidden: the person is disabled in authsvc.
    """
    known = db.session.get(KnownUser, identity.subject)
    if known is not None and known.disabled_at is not None:
        # Disabled in authsvc by an admin (authsvc.credentials.lifecycle.set_disabled): no admin
        # pages.
        raise Forbidden("This account is disabled in authsvc: ask an administrator.")
    now = utcnow()
    session_id = secrets.token_urlsafe(32)
    remember_user(identity)
    db.session.execute(sa.delete(AdminSession).where(AdminSession.expires_at <= now))
    db.session.add(
        AdminSession(
            id=_digest(session_id),
            subject=identity.subject,
            identity=identity_to_json(identity),
            id_token=id_token,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=lifetime),
        )
    )
    db.session.commit()
    return session_id


def load_session(session_id: str | None) -> SignedIn | None:
    """Return the live session with this id; None when unknown, ended or expired."""
    if not session_id or not isinstance(session_id, str) or len(session_id) > 128:
        return None
    row = db.session.get(AdminSession, _digest(session_id))
    if row is None or row.expires_at <= utcnow():
        return None
    try:
        identity = identity_from_json(row.identity)
    except (KeyError, ValueError, TypeError):
        return None
    return SignedIn(identity=identity, id_token=row.id_token, expires_at=row.expires_at)


def end_session(session_id: str | None) -> str | None:
    """Delete the session (sign-out); return its ID token for the provider's logout; commits."""
    if not session_id or not isinstance(session_id, str) or len(session_id) > 128:
        return None
    row = db.session.get(AdminSession, _digest(session_id))
    if row is None:
        return None
    id_token = row.id_token
    db.session.delete(row)
    db.session.commit()
    return id_token


# --- people who signed in (username -> subject, names to show) --------------------------------


def remember_user(identity: Identity) -> None:
    """Record (or refresh) who signed in; the caller commits (start_session does)."""
    row = db.session.get(KnownUser, identity.subject)
    if row is None:
        row = KnownUser(subject=identity.subject)
        db.session.add(row)
    row.username = (identity.username or identity.subject).lower()
    row.name = identity.name or identity.username
    row.email = identity.email.lower() if identity.email and identity.email_verified else None
    row.last_seen_at = utcnow()
    row.identity = identity_to_json(identity)


def find_user(username: str) -> KnownUser | None:
    """Return the person who signed in with this username (case-insensitive), if any."""
    wanted = username.strip().lower()
    if not wanted:
        return None
    return db.session.scalars(
        sa.select(KnownUser)
        .where(KnownUser.username == wanted)
        .order_by(KnownUser.last_seen_at.desc())
        .limit(1)
    ).first()


def known_users(subjects: list[str]) -> dict[str, KnownUser]:
    """Return the known people among these subjects, by subject."""
    if not subjects:
        return {}
    rows = db.session.scalars(sa.select(KnownUser).where(KnownUser.subject.in_(subjects)))
    return {row.subject: row for row in rows}
