"""The viewer and download links made from Orthanc's interface: list, revoke."""

from __future__ import annotations

import datetime as dt

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.credentials import api_key_records
from authsvc.credentials.records import lifetime_state
from authsvc.errors import Forbidden
from authsvc.extensions import db
from authsvc.identity import admin_sessions
from authsvc.policy import Action
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import current_actor
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._blueprint import signed_in_user
from authsvc.views.admin._common import require_revocable

_LINK_KINDS = {
    "stone-viewer-publication": "Stone viewer link",
    "ohif-viewer-publication": "OHIF viewer link",
    "osimis-viewer-publication": "Osimis viewer link",
    "volview-viewer-publication": "VolView link",
    "viewer-instant-link": "Viewer link (short)",
    "download-instant-link": "Download link (short)",
}


@bp.get("/share-links")
@signed_in
def share_links() -> str:
    """The viewer and download links the user made from Orthanc's interface; revoke them."""
    identity = signed_in_user()
    actor = current_actor()
    see_all = request.args.get("all") == "1" and bool(decide(actor, Action.SHARE_TOKEN_LIST_ALL))
    if not see_all and not decide(actor, Action.SHARE_TOKEN_LIST):
        raise Forbidden("You may not see share links.")
    tag = api_key_records.actor_tag(identity)
    rows = services().share_tokens.list(created_by=None if see_all else tag)
    now = dt.datetime.now(dt.UTC)
    links = []
    for row in rows:
        state = lifetime_state(row, now)
        studies = [
            str(r.get("dicom-uid") or r.get("orthanc-id") or "")
            for r in row.resources
            if isinstance(r, dict)
        ]
        reason = services().makers.share_link_suspension(row) if state == "active" else None
        links.append(
            {
                "row": row,
                "state": "suspended" if reason else state,
                "reason": reason,
                "studies": [s for s in studies if s],
                "kind": _LINK_KINDS.get(row.token_type, row.token_type),
                "mine": row.created_by == tag,
            }
        )
    people = admin_sessions.known_users(
        sorted({r.created_by.split(":", 1)[1] for r in rows if r.created_by.startswith("user:")})
    )
    return render_template(
        "admin/share_links.html",
        links=links,
        see_all=see_all,
        can_all=bool(decide(actor, Action.SHARE_TOKEN_LIST_ALL)),
        people=people,
    )


@bp.post("/share-links/<token_id>/revoke")
@signed_in
def revoke_share_link(token_id: str) -> WerkzeugResponse:
    """Revoke a share link: the viewer refuses it from now on."""
    identity = signed_in_user()
    tag = api_key_records.actor_tag(identity)
    tokens = services().share_tokens
    row = tokens.get(token_id)
    require_revocable(
        Action.SHARE_TOKEN_REVOKE, own=row.created_by == tag, missing="No such share link."
    )
    tokens.revoke(row, actor=tag, now=dt.datetime.now(dt.UTC))
    db.session.commit()
    flash("Link revoked: it no longer opens anything.", "success")
    return redirect(url_for("admin.share_links", all=request.args.get("all")))
