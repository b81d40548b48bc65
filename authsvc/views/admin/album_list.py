"""The start page and the list of albums: my albums, and the form to create one."""

from __future__ import annotations

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc import albums
from authsvc.errors import Conflict
from authsvc.errors import ValidationFailed
from authsvc.policy import Action
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._common import allowed
from authsvc.views.admin._common import form_error
from authsvc.views.admin._common import page_caller


@bp.get("/")
@signed_in
def index() -> WerkzeugResponse:
    """The start page is the list of albums."""
    return redirect(url_for("admin.albums"))


@bp.get("/albums", endpoint="albums")
@signed_in
def albums_page() -> str:
    """My albums, with study and member counts, and the form to create one."""
    caller = page_caller()
    everything = request.args.get("all") == "1" and bool(
        decide(caller.actor, Action.ADMIN_PAGES_ADMINISTER)
    )
    page = albums.list_albums(caller, offset=0, limit=500, everything=everything)
    return render_template(
        "admin/albums.html",
        page=page,
        everything=everything,
        can_create=allowed(caller, None, Action.ALBUM_CREATE),
    )


@bp.post("/albums")
@signed_in
def create_album() -> WerkzeugResponse:
    """Create an album; the creator becomes its owner."""
    try:
        view = albums.create_album(
            services().archive,
            page_caller(),
            request.form.get("name", ""),
            request.form.get("description", ""),
        )
    except (ValidationFailed, Conflict) as exc:
        form_error(exc)
        return redirect(url_for("admin.albums"))
    flash(f"Album “{view.album.name}” created. Add studies and invite colleagues below.", "success")
    return redirect(url_for("admin.album", album_id=view.album.id))
