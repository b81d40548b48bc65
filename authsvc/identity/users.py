"""authsvc.identity.users: the Keycloak users authsvc has seen, for the plugin's user-id lookups.

The plugin's audit-log page asks ``/user/get-profile`` with a bare ``user-id`` (protocol spec
§3.3) to show a name. authsvc has no Keycloak admin credentials, so it answers from users it
has seen: every user whose token it verified is remembered (at most once an hour per process,
in its own short transaction, so the hot path stays read-only almost always). API-key owners
are found through their keys.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import SQLAlchemyError

from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.models import ApiKey
from authsvc.models import KnownUser
from authsvc.models import utcnow

__all__ = ["UserDirectory"]

log = logging.getLogger(__name__)


class UserDirectory:
    """Remember users as they are seen; find a display name by subject."""

    def __init__(self, *, remember_every: float = 3600.0) -> None:
        """Start with an empty per-process memory of recent writes."""
        self._remember_every = remember_every
        self._seen: dict[str, tuple[float, Identity]] = {}
        self._lock = threading.Lock()

    def remember(self, identity: Identity) -> None:
        """Record a Keycloak user or service account (throttled per process).

        The identity itself (roles, groups) is kept too: the credentials this person made are
        checked against it (:mod:`authsvc.credentials.lifecycle`). A changed identity is written
        at once,
        an unchanged one at most once per ``remember_every`` seconds.
        """
        from authsvc.identity.admin_sessions import identity_to_json

        if identity.kind not in (IdentityKind.USER, IdentityKind.SERVICE):
            return
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(identity.subject)
            if last is not None and now - last[0] < self._remember_every and last[1] == identity:
                return
            if len(self._seen) > 100_000:
                self._seen.clear()
            self._seen[identity.subject] = (now, identity)
        # Same normalisation as admin_sessions.remember_user: one table, one meaning.
        values = {
            "username": (identity.username or identity.subject).lower(),
            "name": identity.name or identity.username,
            "email": identity.email.lower() if identity.email and identity.email_verified else None,
            "last_seen_at": utcnow(),
            "identity": identity_to_json(identity),
        }
        try:
            self._upsert(identity.subject, values)
        except SQLAlchemyError as exc:
            # Only names for the audit-log page: never worth refusing a profile over.
            log.warning("could not record a seen user: %s", type(exc).__name__)
            with self._lock:
                self._seen.pop(identity.subject, None)

    def _upsert(self, subject: str, values: dict[str, Any]) -> None:
        """Update the row, or insert it (another worker inserting first is fine)."""
        with db.engine.begin() as conn:
            updated = conn.execute(
                sa.update(KnownUser).where(KnownUser.subject == subject).values(**values)
            )
            if updated.rowcount:
                return
        try:
            with db.engine.begin() as conn:
                conn.execute(sa.insert(KnownUser).values(subject=subject, **values))
        except IntegrityError:
            pass  # another worker inserted it at the same moment: nothing to add

    def name_of(self, subject: str) -> str | None:
        """Return the user name of a known subject (user or API-key owner), or None."""
        user = db.session.get(KnownUser, subject)
        if user is not None:
            # orthanc-auth-service answered with the username; the audit page shows it.
            return user.username or user.name
        key = db.session.scalars(
            sa.select(ApiKey).where(ApiKey.owner_subject == subject).limit(1)
        ).first()
        if key is not None:
            return key.owner_username
        return None
