"""An album's uploads and sharing page: upload tokens and album read tokens."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from flask import Response
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc import albums
from authsvc.credentials import read_token_records
from authsvc.credentials import upload_token_records
from authsvc.credentials.read_token_records import IssuedReadToken
from authsvc.credentials.records import lifetime_state
from authsvc.credentials.upload_token_records import IssuedToken
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.errors import ValidationFailed
from authsvc.identity import admin_sessions
from authsvc.models import AlbumReadToken
from authsvc.models import UploadToken
from authsvc.policy import Action
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._common import allowed
from authsvc.views.admin._common import form_error
from authsvc.views.admin._common import page_caller
from authsvc.views.admin._common import shown_once

_EXPIRY_CHOICES = (
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "1 week"),
    (30 * 86_400, "30 days"),
)


def _token_state(row: UploadToken | AlbumReadToken) -> str:
    """Return active / expired / revoked (as every credential) or used up, in words."""
    state: str = lifetime_state(row, dt.datetime.now(dt.UTC))
    if (
        state == "active"
        and isinstance(row, UploadToken)
        and row.max_uses is not None
        and row.use_count >= row.max_uses
    ):
        return "used up"
    return state


def _sharing_context(caller: albums.Caller, album_id: str) -> dict[str, Any]:
    """What the uploads & sharing page shows: the album, its tokens, the allowed actions."""
    view = albums.get_album(caller, album_id)
    role = albums.album_role(caller, album_id)
    can_upload = allowed(caller, role, Action.ALBUM_UPLOAD_TOKEN_CREATE)
    can_read_tokens = allowed(caller, role, Action.ALBUM_READ_TOKEN_LIST)
    if not can_upload and not can_read_tokens:
        raise Forbidden("Your role in this album does not allow uploads or sharing.")
    upload_tokens = upload_token_records.list_tokens(caller, album_id) if can_upload else []
    read_tokens = (
        read_token_records.list_read_tokens(caller.actor, album_id, role) if can_read_tokens else []
    )
    people = admin_sessions.known_users(
        sorted({t.created_by for t in upload_tokens} | {t.created_by for t in read_tokens})
    )
    base = request.url_root.rstrip("/")
    return {
        "view": view,
        "role": role,
        "upload_tokens": upload_tokens,
        "read_tokens": read_tokens,
        "people": people,
        "state": _token_state,
        "suspended": services().makers.album_token_suspension,
        "can_upload": can_upload,
        "can_share": allowed(caller, role, Action.ALBUM_READ_TOKEN_CREATE),
        "can_revoke_read": allowed(caller, role, Action.ALBUM_READ_TOKEN_REVOKE),
        "expiry_choices": _EXPIRY_CHOICES,
        "upload_url": f"{base}/api/albums/{album_id}/uploads",
        "dicomweb_url": f"{base}/dicom-web/albums/{album_id}",
        "max_lifetime": services().settings.upload_token_max_lifetime,
    }


@bp.get("/albums/<album_id>/sharing")
@signed_in
def sharing(album_id: str) -> str:
    """Upload tokens and read access for people and programs outside the album."""
    return render_template("admin/sharing.html", **_sharing_context(page_caller(), album_id))


def _reveal(caller: albums.Caller, album_id: str, **new: Any) -> Response:
    """The sharing page showing a new token once (never cached)."""
    return shown_once(
        render_template("admin/sharing.html", **_sharing_context(caller, album_id), **new)
    )


def _expiry_seconds(limit: int) -> int:
    try:
        seconds = int(request.form.get("expires", "86400"))
    except ValueError:
        seconds = 86_400
    return max(60, min(seconds, limit))


def _form_note() -> str | None:
    """The form's note as a token record keeps it: trimmed, at most 500 characters, or None."""
    return (request.form.get("note") or "").strip()[:500] or None


def _issue_and_reveal(
    caller: albums.Caller,
    album_id: str,
    kind: str,
    issue: Callable[[], IssuedToken | IssuedReadToken],
) -> Response | WerkzeugResponse:
    """Issue a token and show it once, or send a problem with the form back to the page.

    ``kind`` names the template's variables for the new token (``new_<kind>_token``, ``_row``).
    """
    try:
        issued = issue()
    except ValidationFailed as exc:
        form_error(exc)
        return redirect(url_for("admin.sharing", album_id=album_id))
    return _reveal(
        caller, album_id, **{f"new_{kind}_token": issued.token, f"new_{kind}_row": issued.row}
    )


@bp.post("/albums/<album_id>/upload-tokens")
@signed_in
def create_upload_token(album_id: str) -> Response | WerkzeugResponse:
    """Create an upload token and show it once, with ready-to-paste examples."""
    caller = page_caller()
    settings = services().settings
    body = {
        "lifetime_seconds": _expiry_seconds(settings.upload_token_max_lifetime),
        "note": _form_note(),
    }
    return _issue_and_reveal(
        caller,
        album_id,
        "upload",
        lambda: upload_token_records.issue(
            caller,
            album_id,
            body,
            ring=services().upload_keys,
            limits=upload_token_records.TokenLimits(
                default_lifetime=settings.upload_token_default_lifetime,
                max_lifetime=settings.upload_token_max_lifetime,
            ),
        ),
    )


@bp.post("/albums/<album_id>/upload-tokens/<token_id>/revoke")
@signed_in
def revoke_upload_token(album_id: str, token_id: str) -> WerkzeugResponse:
    """Revoke an upload token: it stops working at once."""
    upload_token_records.revoke(page_caller(), album_id, token_id)
    flash("Upload token revoked: it can no longer be used.", "success")
    return redirect(url_for("admin.sharing", album_id=album_id))


@bp.post("/albums/<album_id>/read-tokens")
@signed_in
def create_read_token(album_id: str) -> Response | WerkzeugResponse:
    """Create an album read token (a viewing link for programs) and show it once."""
    caller = page_caller()
    ring = services().upload_keys
    if ring is None:
        raise DependencyUnavailable("Sharing is not set up on this server (no token keys).")
    return _issue_and_reveal(
        caller,
        album_id,
        "read",
        lambda: read_token_records.issue_read_token(
            ring,
            caller.actor,
            caller.name,
            album_id,
            albums.album_role(caller, album_id),
            lifetime=_expiry_seconds(read_token_records.READ_TOKEN_MAX_LIFETIME),
            note=_form_note(),
        ),
    )


@bp.post("/albums/<album_id>/read-tokens/<token_id>/revoke")
@signed_in
def revoke_read_token(album_id: str, token_id: str) -> WerkzeugResponse:
    """Revoke an album read token: it stops working at once."""
    caller = page_caller()
    read_token_records.revoke_read_token(
        caller.actor, caller.name, album_id, albums.album_role(caller, album_id), token_id
    )
    flash("Read access revoked: that token can no longer be used.", "success")
    return redirect(url_for("admin.sharing", album_id=album_id))
