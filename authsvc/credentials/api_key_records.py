"""authsvc.credentials.api_key_records: an API key's life (create, list, revoke) and its audit.

Keys come in two kinds (see :class:`~authsvc.models.ApiKey`):

* **user keys**: anyone authenticated makes them for themself; the key acts as its owner (same
  subject, so album memberships apply) holding the roles the owner has when creating it, or a
  chosen subset of them — never more;
* **service-account keys**: a global admin makes them for a script or forwarder and chooses the
  roles; the key is its own principal (``api-key:<id>``).

The plaintext key is returned once by :func:`create_key` and never stored (only its SHA-256).
Who may do what is decided by :func:`authsvc.policy.decide` (account rules); the caller
(the view) asks the policy first and commits after.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from authsvc import audit
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.credentials.api_keys import API_KEY_PREFIX
from authsvc.credentials.api_keys import generate_api_key
from authsvc.credentials.api_keys import redacted_api_key
from authsvc.credentials.lifecycle import api_key_owner_disabled
from authsvc.credentials.records import lifetime_state
from authsvc.credentials.records import revoke_row
from authsvc.errors import NotFound
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.models import ApiKey
from authsvc.models import utcnow
from authsvc.policy import Actor
from authsvc.policy import CredentialKind
from authsvc.policy import Decision
from authsvc.policy import Maker
from authsvc.policy import decide_credential_backing

__all__ = [
    "MAX_NAME_CHARS",
    "NewApiKey",
    "create_key",
    "get_key",
    "key_json",
    "list_keys",
    "revoke_key",
]

MAX_NAME_CHARS = 100
MAX_LIFETIME_DAYS = 3650
USER_KIND = "user"
SERVICE_KIND = "service"


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: ``plaintext`` is shown once."""

    row: ApiKey
    plaintext: str


def actor_tag(identity: Identity) -> str:
    """Return how an identity appears in audit rows and ``created_by``."""
    return f"user:{identity.subject}"


def _problem(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def check_name(value: Any) -> str:
    """Return a usable key name. :raise ValidationFailed: missing, not text, too long."""
    if not isinstance(value, str) or not value.strip():
        raise _problem("name", "name is required (what the key is for)")
    name = value.strip()
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise _problem("name", f"name must be at most {MAX_NAME_CHARS} printable characters")
    return name


def check_expiry(expires_in_days: Any, now: dt.datetime) -> dt.datetime | None:
    """Return the expiry for ``expires_in_days`` (None: never). :raise ValidationFailed."""
    if expires_in_days is None:
        return None
    if (
        isinstance(expires_in_days, bool)
        or not isinstance(expires_in_days, int)
        or not 1 <= expires_in_days <= MAX_LIFETIME_DAYS
    ):
        raise _problem(
            "expires_in_days", f"expires_in_days must be an integer from 1 to {MAX_LIFETIME_DAYS}"
        )
    return now + dt.timedelta(days=expires_in_days)


def check_roles(value: Any, *, allowed: Iterable[str], what: str) -> list[str]:
    """Return the requested role names if every one is in ``allowed``. :raise ValidationFailed."""
    if not isinstance(value, list) or not all(isinstance(r, str) and r for r in value):
        raise _problem("roles", "roles must be a list of role names")
    allowed_set = set(allowed)
    unknown = sorted(set(value) - allowed_set)
    if unknown:
        raise _problem("roles", f"{what}: {', '.join(unknown)}")
    return sorted(set(value))


def create_key(
    creator: Identity,
    *,
    name: Any,
    expires_in_days: Any,
    service: bool,
    roles: Callable[[], list[str]],
    now: dt.datetime,
) -> NewApiKey:
    """Check a new key's name, expiry and roles, create the key and audit it; the caller commits.

    ``POST /api/api-keys`` and the admin page differ only in how they read and limit the
    roles: ``roles`` does that (raising ValidationFailed) once the name and expiry have passed,
    so both report a key's problems in the same order and create it the same way.

    :raise ValidationFailed: a bad name, expiry (``expires_in_days``: None for never) or roles.
    """
    name = check_name(name)
    expires_at = check_expiry(expires_in_days, now)
    held = roles()
    generated = generate_api_key(API_KEY_PREFIX)
    if service:
        owner_subject, owner_username = f"api-key:{generated.key_id}", name
    else:
        owner_subject = creator.subject
        owner_username = creator.username or creator.subject
    row = ApiKey(
        id=generated.key_id,
        secret_hash=generated.secret_hash,
        name=name,
        kind=SERVICE_KIND if service else USER_KIND,
        owner_subject=owner_subject,
        owner_username=owner_username,
        roles=held,
        created_by=actor_tag(creator),
        created_at=now,
        expires_at=expires_at,
    )
    db.session.add(row)
    audit.record(
        AuditAction.api_key_create,
        actor_tag(creator),
        f"api-key:{row.id}",
        Outcome.success,
        {
            "name": name,
            "kind": row.kind,
            "roles": held,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return NewApiKey(row=row, plaintext=generated.plaintext)


def list_keys(*, owner_subject: str | None) -> list[ApiKey]:
    """Return keys newest first: one owner's user keys, or every key (``None``)."""
    query = sa.select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
    if owner_subject is not None:
        query = query.where(ApiKey.owner_subject == owner_subject, ApiKey.kind == USER_KIND)
    return list(db.session.scalars(query))


def get_key(key_id: str) -> ApiKey:
    """Return one key. :raise NotFound: no such key."""
    row = db.session.get(ApiKey, key_id) if isinstance(key_id, str) else None
    if row is None:
        raise NotFound("No such API key.")
    return row


def is_owned_by(row: ApiKey, identity: Identity) -> bool:
    """Return True if the key is the identity's own user key."""
    return row.kind == USER_KIND and row.owner_subject == identity.subject


def revoke_key(row: ApiKey, *, actor: Identity, now: dt.datetime) -> None:
    """Revoke a key (idempotent) and audit it; the caller commits and forgets it from caches."""
    revoke_row(
        row,
        now=now,
        revoked_by=None,
        event=AuditAction.api_key_revoke,
        actor=actor_tag(actor),
        target=f"api-key:{row.id}",
        details={"name": row.name, "kind": row.kind},
    )


def key_json(row: ApiKey, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Return a key for the JSON API (never its secret or hash).

    ``status`` is ``suspended`` (with a ``reason``) for a user key whose owner an admin
    disabled: the key is refused until the owner is enabled again.
    """
    now = now or utcnow()
    status: str = lifetime_state(row, now)
    reason = None
    if status == "active" and row.kind == USER_KIND:
        backing = owner_backing(row.owner_subject)
        if not backing:
            status, reason = "suspended", backing.reason
    return {
        "id": row.id,
        "display": redacted_api_key(row.id),
        "name": row.name,
        "kind": row.kind,
        "owner": row.owner_subject,
        "owner_username": row.owner_username,
        "roles": list(row.roles),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "status": status,
        "reason": reason,
    }


def owner_backing(owner_subject: str) -> Decision:
    """Return whether the owner of a user key still backs it (not disabled in authsvc)."""
    maker = Maker(actor=Actor(owner_subject), disabled=api_key_owner_disabled(owner_subject))
    return decide_credential_backing(CredentialKind.API_KEY, maker)
