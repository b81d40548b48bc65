"""The roles x permissions x labels grid (administrators)."""

from __future__ import annotations

import re
from typing import Any

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc.errors import Conflict
from authsvc.errors import Forbidden
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.policy import Action
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import current_actor
from authsvc.views.admin._blueprint import current_user
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._common import form_error

#: The permission names of Orthanc's authorization plugin (its ``Permissions`` list), shown as
#: columns even when no role uses them yet; custom names from the configuration are added.
PLUGIN_PERMISSIONS = (
    "all",
    "view",
    "download",
    "upload",
    "send",
    "modify",
    "anonymize",
    "delete",
    "share",
    "edit-labels",
    "q-r-remote-modalities",
    "settings",
    "api-view",
    "admin-permissions",
)


def _split_list(text: str) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in re.split(r"[,\n]", text) if t.strip()))


@bp.get("/roles")
@signed_in
def roles() -> str:
    """The roles × permissions × labels grid: the same data as ``/settings/roles``."""
    if not decide(current_actor(), Action.ROLES_VIEW):
        raise Forbidden("This page is for administrators.")
    snapshot = services().roles.load()  # the stored version, not this worker's cache
    config = snapshot.config
    used = sorted(
        {p for grant in config.roles.values() for p in grant.permissions} - set(PLUGIN_PERMISSIONS)
    )
    return render_template(
        "admin/roles.html",
        config=config,
        version=snapshot.version,
        permissions=[*PLUGIN_PERMISSIONS, *used],
        editing=request.args.get("edit") == "1",
    )


@bp.post("/roles")
@signed_in
def save_roles() -> WerkzeugResponse:
    """Save the edited grid as the new roles configuration (refused if someone saved first)."""
    if not decide(current_actor(), Action.ROLES_EDIT):
        raise Forbidden("Only administrators change roles and permissions.")
    form = request.form
    document: dict[str, Any] = {"roles": {}, "group-roles": {}}
    names = form.getlist("role")
    for index, name in enumerate(names):
        name = name.strip()
        if not name or form.get(f"delete-{index}") == "yes":
            continue
        document["roles"][name] = {
            "permissions": form.getlist(f"perm-{index}"),
            "authorized-labels": _split_list(form.get(f"labels-{index}", "")),
        }
    new_name = (form.get("new-role") or "").strip()
    if new_name:
        document["roles"][new_name] = {
            "permissions": form.getlist("perm-new"),
            "authorized-labels": _split_list(form.get("labels-new", "")),
        }
    document["available-labels"] = _split_list(form.get("available-labels", ""))
    for line in (form.get("group-roles") or "").splitlines():
        group, sep, role_names = line.partition(":")
        if sep and group.strip():
            document["group-roles"][group.strip()] = _split_list(role_names)
    try:
        version = int(form.get("version", "0"))
    except ValueError:
        version = -1
    identity = current_user()
    actor = f"user:{identity.subject}" if identity is not None else "user:?"
    try:
        services().roles.save(document, actor=actor, source="admin", expected_version=version)
        db.session.commit()
    except (ValidationFailed, Conflict) as exc:
        db.session.rollback()
        form_error(exc)
        return redirect(url_for("admin.roles", edit=1))
    flash("Roles and permissions saved. Users get the new rights within a minute.", "success")
    return redirect(url_for("admin.roles"))
