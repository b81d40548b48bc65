"""People: disable or enable someone in authsvc (administrators)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.credentials import api_key_records
from authsvc.credentials import lifecycle
from authsvc.errors import Forbidden
from authsvc.extensions import db
from authsvc.models import KnownUser
from authsvc.policy import Action
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import current_actor
from authsvc.views.admin._blueprint import current_user
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._blueprint import signed_in_user


@bp.get("/people")
@signed_in
def people() -> str:
    """Everyone authsvc has seen, and whether they are disabled here (administrators)."""
    if not decide(current_actor(), Action.USER_DISABLE):
        raise Forbidden("This page is for administrators.")
    identity = current_user()
    rows = db.session.scalars(
        sa.select(KnownUser).order_by(KnownUser.username, KnownUser.subject).limit(1000)
    ).all()
    return render_template(
        "admin/people.html", people=rows, me=identity.subject if identity else ""
    )


def _set_person(subject: str, *, disabled: bool) -> WerkzeugResponse:
    identity = signed_in_user()
    if not decide(current_actor(), Action.USER_DISABLE):
        raise Forbidden("This page is for administrators.")
    if subject == identity.subject:
        raise Forbidden("You cannot disable yourself.")
    row = lifecycle.set_disabled(
        subject, disabled=disabled, actor=api_key_records.actor_tag(identity)
    )
    db.session.commit()
    services().makers.forget()
    services().authenticator.api_keys.clear()
    who = row.name or row.username
    flash(
        f"{who} is disabled: their API keys, tokens and share links stop working."
        if disabled
        else f"{who} is enabled again.",
        "success",
    )
    return redirect(url_for("admin.people"))


@bp.post("/people/<path:subject>/disable")
@signed_in
def disable_person(subject: str) -> WerkzeugResponse:
    """Disable a person in authsvc."""
    return _set_person(subject, disabled=True)


@bp.post("/people/<path:subject>/enable")
@signed_in
def enable_person(subject: str) -> WerkzeugResponse:
    """Enable a person again."""
    return _set_person(subject, disabled=False)
