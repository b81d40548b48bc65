"""authsvc.credentials.records: what every credential record kind shares — state and revoke.

Upload tokens, album read tokens, share links and API keys each keep one row that makes the
credential listable and revocable. Those rows agree on two things, written here once:

* :func:`lifetime_state` — ``revoked`` (revocation wins), ``expired`` (``expires_at`` reached;
  ``None`` never expires) or ``active``; each kind then refines ``active`` (used up, suspended);
* :func:`revoke_row` — revoking is idempotent: the first revocation stays, with its audit row;
  revoking again changes nothing and records nothing.

Each kind keeps its own JSON shape, audit details and commit point; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from typing import Literal

from authsvc import audit
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.models import AlbumReadToken
from authsvc.models import ApiKey
from authsvc.models import ShareToken
from authsvc.models import UploadToken

__all__ = ["LifetimeState", "TokenRecord", "lifetime_state", "revoke_row"]

#: A row of one of the credential kinds authsvc lists and revokes.
TokenRecord = UploadToken | AlbumReadToken | ShareToken | ApiKey

LifetimeState = Literal["revoked", "expired", "active"]


def lifetime_state(row: TokenRecord, now: dt.datetime) -> LifetimeState:
    """Return ``revoked``, ``expired`` or ``active`` for a credential record at ``now``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def revoke_row(
    row: TokenRecord,
    *,
    now: dt.datetime,
    revoked_by: str | None,
    event: AuditAction,
    actor: str,
    target: str,
    details: dict[str, Any],
) -> bool:
    """Revoke a record once and audit it; return False (and do nothing) if already revoked.

    ``revoked_by`` is stored on the kinds that keep it (all but API keys: pass None).
    The caller commits.
    """
    if row.revoked_at is not None:
        return False
    row.revoked_at = now
    if revoked_by is not None and not isinstance(row, ApiKey):
        row.revoked_by = revoked_by
    audit.record(event, actor, target, Outcome.success, details)
    return True
