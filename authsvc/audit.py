"""authsvc.audit: the audit trail's vocabulary and its one writer, :func:`record`.

Rows are added to the *current* database session, so they commit or roll back together with
the change they describe: an audit row never claims a change that did not happen, and a change
never happens without its row. Tags read ``<area>:<subject>:<verb>`` (Warehouse's convention).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from authsvc.extensions import db
from authsvc.logs import current_request_id
from authsvc.models import AuditEvent
from authsvc.models import utcnow


class AuditAction(StrEnum):
    """Every audited action. Keep the list alphabetised; later features add their tags here."""

    album_create = "album:create"
    album_delete = "album:delete"
    album_edit = "album:edit"
    album_invitation_bind = "album:invitation:bind"
    album_leave = "album:leave"
    album_member_add = "album:member:add"
    album_member_remove = "album:member:remove"
    album_member_role = "album:member:role"
    album_reconcile = "album:reconcile"
    album_study_add = "album:study:add"
    album_study_remove = "album:study:remove"
    album_upload = "album:upload"
    api_key_create = "api-key:create"
    api_key_revoke = "api-key:revoke"
    credential_refused = "credential:refused"
    roles_update = "roles:update"
    token_album_read_create = "token:album-read:create"
    token_album_read_revoke = "token:album-read:revoke"
    token_share_create = "token:share:create"
    token_share_revoke = "token:share:revoke"
    token_upload_create = "token:upload:create"
    token_upload_revoke = "token:upload:revoke"
    user_disable = "user:disable"
    user_enable = "user:enable"


class Outcome(StrEnum):
    """How an audited action ended."""

    success = "success"
    denied = "denied"
    failure = "failure"


def record(
    action: AuditAction | str,
    actor: str,
    subject: str | None,
    outcome: Outcome | str,
    detail: Mapping[str, Any] | None = None,
    *,
    session: Session | None = None,
) -> AuditEvent:
    """Add one audit row to the session (default: the app's); it commits with the caller's change.

    The request id of the current request (if any) is attached so a row can be matched with
    the log lines of the same request.
    """
    event = AuditEvent(
        occurred_at=utcnow(),
        action=str(action),
        actor=actor,
        subject=subject,
        outcome=str(outcome),
        request_id=current_request_id(),
        detail=dict(detail or {}),
    )
    (session if session is not None else db.session).add(event)
    return event


# --- reading the trail (admin pages) ------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """What to look for in the audit trail; empty fields match everything.

    ``actor`` and ``subject`` match a substring (case-insensitive), so "alice" finds
    ``user:alice-sub`` and an album id finds ``album:<id>``; ``action`` matches the tag exactly,
    or a whole area when it ends with ``:`` (``album:`` finds every album action).
    ``since`` is inclusive, ``until`` exclusive.
    """

    actor: str = ""
    subject: str = ""
    action: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def _like(text: str) -> str:
    """Return a LIKE pattern matching ``text`` anywhere, with the wildcards escaped."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search(
    filters: EventFilter, *, offset: int = 0, limit: int = 100
) -> tuple[list[AuditEvent], bool]:
    """Return matching events, newest first, and whether more follow after ``limit``."""
    query = sa.select(AuditEvent)
    if filters.actor:
        query = query.where(sa.func.lower(AuditEvent.actor).like(_like(filters.actor), escape="\\"))
    if filters.subject:
        query = query.where(
            sa.func.lower(AuditEvent.subject).like(_like(filters.subject), escape="\\")
        )
    if filters.action.endswith(":"):
        query = query.where(AuditEvent.action.startswith(filters.action, autoescape=True))
    elif filters.action:
        query = query.where(AuditEvent.action == filters.action)
    if filters.since is not None:
        query = query.where(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.occurred_at < filters.until)
    query = query.order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    rows = list(db.session.scalars(query.offset(max(0, offset)).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def describe_detail(detail: Mapping[str, Any] | None) -> str:
    """Return an event's detail as short ``key: value`` text for people (pages, CSV)."""
    parts = []
    for key, value in sorted((detail or {}).items()):
        if isinstance(value, list | tuple):
            shown = ", ".join(str(v) for v in value[:20]) + (" …" if len(value) > 20 else "")
        else:
            shown = str(value)
        parts.append(f"{key}: {shown}")
    return "; ".join(parts)
