"""One album's page: its studies, its members and what the user may do with them."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc import albums
from authsvc.errors import Conflict
from authsvc.errors import DependencyUnavailable
from authsvc.errors import ValidationFailed
from authsvc.identity import admin_sessions
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import Target
from authsvc.services import services
from authsvc.views.admin._blueprint import bp
from authsvc.views.admin._blueprint import signed_in
from authsvc.views.admin._common import allowed
from authsvc.views.admin._common import dicom_date
from authsvc.views.admin._common import form_error
from authsvc.views.admin._common import page_caller
from authsvc.views.admin._common import person_name

STUDIES_PAGE_SIZE = 50


_ROLE_WORDS = {
    AlbumRole.OWNER: "Owner — everything, including renaming and deleting the album",
    AlbumRole.MANAGER: "Manager — add and remove studies and people, share",
    AlbumRole.CONTRIBUTOR: "Contributor — add and upload studies",
    AlbumRole.VIEWER: "Viewer — look at the studies",
}


def _member_rows(
    caller: albums.Caller, role: AlbumRole | None, members: list[Any]
) -> list[dict[str, Any]]:
    """Describe each member for people, with the changes the policy would allow."""
    people = admin_sessions.known_users(
        [m.principal for m in members if m.principal_kind == "user"]
    )
    owners = sum(1 for m in members if m.role == "owner" and m.principal_kind != "email")
    rows = []
    for member in members:
        member_role = AlbumRole(member.role)
        if member.principal_kind == "user":
            person = people.get(member.principal)
            if person is not None:
                who = f"{person.name} ({person.username})" if person.name else person.username
            else:
                who = "A colleague who has not opened these pages yet"
            kind = "Person"
        elif member.principal_kind == "group":
            who, kind = member.principal, "Group"
        else:
            who, kind = member.principal, "Invitation by e-mail (waiting for first sign-in)"
        owner_count = owners + (
            1 if member.principal_kind == "email" and member_role is AlbumRole.OWNER else 0
        )
        choices = [
            r
            for r in AlbumRole
            if r is member_role
            or allowed(
                caller,
                role,
                Action.ALBUM_MEMBER_ROLE_CHANGE,
                Target(owner_count=owners, member_role=member_role, new_role=r),
            )
        ]
        rows.append(
            {
                "id": member.id,
                "who": who,
                "kind": kind,
                "role": member_role,
                "is_me": member.principal_kind == "user" and member.principal == caller.subject,
                "role_choices": choices if len(choices) > 1 else [],
                "can_remove": allowed(
                    caller,
                    role,
                    Action.ALBUM_MEMBER_REMOVE,
                    Target(owner_count=owner_count, member_role=member_role),
                ),
            }
        )
    return rows


def _viewer_links(study: dict[str, Any], album_id: str) -> list[tuple[str, str]]:
    """Links that open a study in the configured viewers.

    With ``public_ohif_root`` set, OHIF comes first (unless a configured viewer is already
    named OHIF): ``<root>viewer?StudyInstanceUIDs=<uid>&album=<album id>``. The OHIF
    deployment's app-config.js (config/ohif/app-config.js) turns ``album`` into the album's
    DICOMweb root, and OHIF signs the user in with Keycloak itself: no credential in the link.
    """
    uid = study.get("study_instance_uid") or ""
    settings = services().settings
    links = []
    ohif_root = settings.public_ohif_root
    if ohif_root and uid and not any(v.get("name") == "OHIF" for v in settings.study_viewers):
        root = ohif_root if ohif_root.endswith("/") else ohif_root + "/"
        links.append(
            (
                "OHIF",
                f"{root}viewer?StudyInstanceUIDs={quote(uid, safe='')}"
                f"&album={quote(album_id, safe='')}",
            )
        )
    for viewer in settings.study_viewers:
        name, url = viewer.get("name"), viewer.get("url")
        if not isinstance(name, str) or not isinstance(url, str) or not uid:
            continue
        links.append(
            (
                name,
                url.replace("{StudyInstanceUID}", quote(uid, safe="")).replace(
                    "{OrthancStudyId}", quote(str(study.get("id") or ""), safe="")
                ),
            )
        )
    return links


@bp.get("/albums/<album_id>")
@signed_in
def album(album_id: str) -> str:
    """One album: its studies, its members, and what the user may do with them."""
    caller = page_caller()
    view = albums.get_album(caller, album_id)
    role = view.role if view.role is not None else albums.album_role(caller, album_id)
    try:
        page_number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page_number = 1
    studies_error = None
    studies: albums.Page | None = None
    try:
        studies = albums.list_studies(
            services().archive,
            caller,
            album_id,
            offset=(page_number - 1) * STUDIES_PAGE_SIZE,
            limit=STUDIES_PAGE_SIZE,
        )
    except DependencyUnavailable:
        studies_error = (
            "The image archive (Orthanc) is not answering, so the studies cannot "
            "be listed right now. Try again in a minute."
        )
    members = albums.list_members(caller, album_id, limit=500)
    member_rows = _member_rows(caller, role, members.items)
    own = next((m for m in member_rows if m["is_me"]), None)
    owners = sum(1 for m in members.items if m.role == "owner" and m.principal_kind != "email")
    can = {
        "edit": allowed(caller, role, Action.ALBUM_EDIT),
        "delete": allowed(caller, role, Action.ALBUM_DELETE),
        "add": allowed(caller, role, Action.ALBUM_STUDY_ADD, Target(study_visible_to_actor=True)),
        "remove": allowed(caller, role, Action.ALBUM_STUDY_REMOVE),
        "invite": allowed(
            caller, role, Action.ALBUM_MEMBER_INVITE, Target(new_role=AlbumRole.VIEWER)
        ),
        "upload": allowed(caller, role, Action.ALBUM_UPLOAD_TOKEN_CREATE),
        "upload_files": allowed(caller, role, Action.ALBUM_UPLOAD),
        "share": allowed(caller, role, Action.ALBUM_READ_TOKEN_CREATE),
        "leave": own is not None
        and allowed(caller, own["role"], Action.ALBUM_LEAVE, Target(owner_count=owners)),
    }
    invite_roles = [
        r
        for r in AlbumRole
        if allowed(caller, role, Action.ALBUM_MEMBER_INVITE, Target(new_role=r))
    ]
    rows = []
    for study in studies.items if studies is not None else []:
        rows.append(
            {
                **study,
                "date": dicom_date(study.get("study_date")),
                "patient": person_name(study.get("patient_name")),
                "viewers": _viewer_links(study, album_id),
            }
        )
    return render_template(
        "admin/album.html",
        view=view,
        role=role,
        role_words=_ROLE_WORDS,
        studies=rows,
        total_studies=studies.total if studies is not None else None,
        studies_error=studies_error,
        page=page_number,
        has_more=studies is not None and page_number * STUDIES_PAGE_SIZE < studies.total,
        members=member_rows,
        can=can,
        invite_roles=invite_roles,
    )


@bp.post("/albums/<album_id>/edit")
@signed_in
def edit_album(album_id: str) -> WerkzeugResponse:
    """Rename the album or change its description (owners)."""
    try:
        albums.update_album(
            page_caller(),
            album_id,
            name=request.form.get("name", ""),
            description=request.form.get("description", ""),
        )
        flash("The album's name and description are saved.", "success")
    except (ValidationFailed, Conflict) as exc:
        form_error(exc)
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/delete")
@signed_in
def delete_album(album_id: str) -> WerkzeugResponse:
    """Delete the album (owners); the studies stay in the archive."""
    caller = page_caller()
    name = albums.get_album(caller, album_id).album.name
    if request.form.get("confirm") != "yes":
        flash("Tick the box to confirm that the album should be deleted.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    albums.delete_album(services().archive, caller, album_id)
    flash(f"Album “{name}” deleted. Its studies are still in the archive.", "success")
    return redirect(url_for("admin.albums"))


@bp.post("/albums/<album_id>/members/invite")
@signed_in
def invite_member(album_id: str) -> WerkzeugResponse:
    """Invite a colleague by username, e-mail address or group, with a role."""
    caller = page_caller()
    how = request.form.get("how", "username")
    who = (request.form.get("who") or "").strip()
    role = request.form.get("role", "viewer")
    shown = who
    if not who:
        flash("Type the username, e-mail address or group of the person to invite.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    if how == "username":
        person = admin_sessions.find_user(who)
        if person is None:
            flash(
                f"Nobody with the username “{who}” has signed in here yet. Invite them by "
                "e-mail address instead: the invitation waits for their first sign-in.",
                "error",
            )
            return redirect(url_for("admin.album", album_id=album_id))
        kind, principal, shown = "user", person.subject, person.name or person.username
    elif how == "email":
        kind, principal = "email", who
    elif how == "group":
        kind, principal = "group", who
    else:
        flash("Choose whether you typed a username, an e-mail address or a group.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    try:
        albums.invite_member(caller, album_id, kind, principal, role)
    except (ValidationFailed, Conflict) as exc:
        form_error(exc)
        return redirect(url_for("admin.album", album_id=album_id))
    if kind == "email":
        flash(
            f"Invitation for {who} saved: they get access as {role} when they first sign in "
            "with that e-mail address.",
            "success",
        )
    elif kind == "group":
        flash(f"Everyone in the group “{who}” can now open this album as {role}.", "success")
    else:
        flash(f"{shown} can now open this album as {role}.", "success")
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/members/<int:member_id>/role")
@signed_in
def change_role(album_id: str, member_id: int) -> WerkzeugResponse:
    """Change a member's role."""
    try:
        member = albums.change_member_role(
            page_caller(), album_id, member_id, request.form.get("role", "")
        )
        flash(f"Role changed to {member.role}.", "success")
    except (ValidationFailed, Conflict) as exc:
        form_error(exc)
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/members/<int:member_id>/remove")
@signed_in
def remove_member(album_id: str, member_id: int) -> WerkzeugResponse:
    """Remove a member from the album."""
    caller = page_caller()
    members = albums.list_members(caller, album_id, limit=500).items
    row = next((r for r in _member_rows(caller, None, members) if r["id"] == member_id), None)
    albums.remove_member(caller, album_id, member_id)
    who = row["who"] if row is not None else "The member"
    flash(f"{who} removed from the album: no more access through it.", "success")
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/leave")
@signed_in
def leave_album(album_id: str) -> WerkzeugResponse:
    """Leave the album."""
    name = albums.get_album(page_caller(), album_id).album.name
    albums.leave_album(page_caller(), album_id)
    flash(f"You left the album “{name}”.", "success")
    return redirect(url_for("admin.albums"))
