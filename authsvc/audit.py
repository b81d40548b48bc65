"""authsvc.audit: the audit trail's vocabulary and its one writer, :func:`record`.

Rows are added to the *current* database session, so they commit or roll back together with
the change they describe: an audit row never claims a change that did not happen, and a change
never happens without its row. Tags read ``<area>:<subject>:<verb>`` (Warehouse's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

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
    roles_update = "roles:update"
    token_album_read_create = "token:album-read:create"
    token_album_read_revoke = "token:album-read:revoke"
    token_share_create = "token:share:create"
    token_share_revoke = "token:share:revoke"
    token_upload_create = "token:upload:create"
    token_upload_revoke = "token:upload:revoke"


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
