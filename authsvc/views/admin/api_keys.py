"""API keys and service accounts: create (shown once), list, revoke."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Response
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.credentials import api_key_records
from authsvc.credentials.records import lifetime_state
from authsvc.errors import Forbidden
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.models import ApiKey
from authsvc.policy import Action
from authsvc.policy import Target
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import current_actor
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._blueprint import signed_in_user
from authsvc.views.admin._common import form_error
from authsvc.views.admin._common import form_int
from authsvc.views.admin._common import require_revocable
from authsvc.views.admin._common import shown_once

_KEY_EXPIRY_CHOICES = ((30, "30 days"), (90, "90 days"), (365, "1 year"), (0, "never"))


def _key_entry(row: ApiKey) -> dict[str, Any]:
    """One row of the API keys page: state, and why a key in force is suspended."""
    state: str = lifetime_state(row, dt.datetime.now(dt.UTC))
    reason = None
    if state == "active" and row.kind == "user":
        backing = api_key_records.owner_backing(row.owner_subject)
        if not backing:
            state, reason = "suspended", backing.reason
    return {"row": row, "state": state, "reason": reason}


def _api_keys_page(**extra: Any) -> str:
    """The API keys page: the user's own keys; every key and service accounts for admins."""
    identity = signed_in_user()
    actor = current_actor()
    see_all = bool(decide(actor, Action.API_KEY_LIST_ALL))
    if not see_all and not decide(actor, Action.API_KEY_LIST):
        raise Forbidden("You may not manage API keys.")
    rows = api_key_records.list_keys(owner_subject=None if see_all else identity.subject)
    authenticator = services().authenticator
    return render_template(
        "admin/api_keys.html",
        keys=[_key_entry(row) for row in rows],
        see_all=see_all,
        can_create=bool(
            decide(actor, Action.API_KEY_CREATE, target=Target(token_issued_by_actor=True))
        ),
        can_create_service=bool(
            decide(actor, Action.API_KEY_CREATE_SERVICE, target=Target(token_issued_by_actor=True))
        ),
        can_revoke=lambda row: bool(
            decide(
                actor,
                Action.API_KEY_REVOKE,
                target=Target(token_issued_by_actor=api_key_records.is_owned_by(row, identity)),
            )
        ),
        configured_roles=sorted(authenticator.assignable_roles()),
        expiry_choices=_KEY_EXPIRY_CHOICES,
        **extra,
    )


@bp.get("/api-keys")
@signed_in
def api_keys() -> str:
    """API keys: create (shown once), list, revoke."""
    return _api_keys_page()


@bp.post("/api-keys")
@signed_in
def create_api_key() -> Response | WerkzeugResponse:
    """Create an API key for oneself (holding one's own roles) or, for admins, a service account."""
    identity = signed_in_user()
    actor = current_actor()
    service = request.form.get("kind") == "service"
    action = Action.API_KEY_CREATE_SERVICE if service else Action.API_KEY_CREATE
    if not decide(actor, action, target=Target(token_issued_by_actor=True)):
        raise Forbidden("You may not create this kind of API key.")
    authenticator = services().authenticator

    def roles() -> list[str]:
        if not service:
            # The same rule as POST /api/api-keys: a user's key holds the user's roles, no more.
            return sorted(authenticator.key_roles_held(identity))
        chosen = api_key_records.check_roles(
            request.form.getlist("roles"),
            allowed=authenticator.assignable_roles(),
            what="unknown roles",
        )
        if not chosen:
            raise ValidationFailed("Tick at least one role for the service account.")
        return chosen

    try:
        created = api_key_records.create_key(
            identity,
            name=request.form.get("name", ""),
            expires_in_days=form_int("expires_in_days") or None,
            service=service,
            roles=roles,
            now=dt.datetime.now(dt.UTC),
        )
        db.session.commit()
    except ValidationFailed as exc:
        db.session.rollback()
        form_error(exc)
        return redirect(url_for("admin.api_keys"))
    return shown_once(_api_keys_page(new_key=created.plaintext, new_key_row=created.row))


@bp.post("/api-keys/<key_id>/revoke")
@signed_in
def revoke_api_key(key_id: str) -> WerkzeugResponse:
    """Revoke an API key: it stops working at once here, within seconds everywhere."""
    identity = signed_in_user()
    row = api_key_records.get_key(key_id)
    require_revocable(
        Action.API_KEY_REVOKE,
        own=api_key_records.is_owned_by(row, identity),
        missing="No such API key.",
    )
    api_key_records.revoke_key(row, actor=identity, now=dt.datetime.now(dt.UTC))
    db.session.commit()
    services().authenticator.api_keys.forget(row.id)
    services().makers.forget()  # what a service key made stands on it
    flash(f"API key “{row.name}” revoked: it can no longer be used.", "success")
    return redirect(url_for("admin.api_keys"))
