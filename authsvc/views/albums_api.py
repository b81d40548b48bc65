"""The albums JSON API under ``/api/albums``: albums, members and studies.

Thin views: authenticate (Keycloak bearer token or API key, :mod:`authsvc.views.auth`), parse
and check the request's shape, call the use-case in :mod:`authsvc.albums` (which asks the
policy, acts and audits), serialise. The contract is in ``authsvc/openapi.json``.

Concurrency: an album answer carries ``ETag: "<version>"`` and a ``version`` field. ``PATCH``
and ``DELETE`` of an album accept ``If-Match`` (412 when stale) or a ``version`` field in the
body (409 when stale); without either the change applies to the current version.
Albums the caller may not see answer 404, exactly like albums that do not exist.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request
from flask import url_for

from authsvc import albums
from authsvc.albums import AlbumView
from authsvc.albums import Caller
from authsvc.albums import Page
from authsvc.albums import StudyResult
from authsvc.errors import BadRequest
from authsvc.errors import NotFound
from authsvc.errors import PreconditionFailed
from authsvc.errors import ValidationFailed
from authsvc.models import AlbumMember
from authsvc.services import services
from authsvc.views.auth import current_actor
from authsvc.views.auth import profile_for
from authsvc.views.auth import require_identity
from authsvc.views.requests import json_body

bp = Blueprint("albums_api", __name__, url_prefix="/api/albums")


# --- request helpers ---------------------------------------------------------------------------


def _caller() -> Caller:
    """Return the authenticated caller. :raise 401/503."""
    identity = require_identity()
    role_labels = profile_for(identity, with_albums=False).authorized_labels
    caller = albums.caller_for(identity, current_actor(), role_labels)
    # First appearance with a verified e-mail: invitations to it become memberships.
    albums.bind_caller_invitations(caller)
    return caller


def _object(allowed: set[str], *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return the JSON body as an object with only ``allowed`` keys. :raise 400/415/422."""
    body = json_body()
    if not isinstance(body, dict):
        raise ValidationFailed(details=[{"field": "", "message": "the body must be a JSON object"}])
    problems = [
        {"field": key, "message": "unknown field"} for key in sorted(set(body) - allowed)
    ] + [{"field": key, "message": "is required"} for key in required if key not in body]
    if problems:
        raise ValidationFailed(details=problems)
    return body


def _page_args() -> tuple[int, int]:
    return albums.check_page(request.args.get("offset"), request.args.get("limit"))


def _if_match() -> int | None:
    """Return the version named by If-Match (None: no header). :raise 412: unusable value."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    value = header.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit() or len(value) > 12:
        raise PreconditionFailed('If-Match must be an album ETag such as "3".')
    return int(value)


def _version_field(body: dict[str, Any]) -> int | None:
    value = body.get("version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationFailed(details=[{"field": "version", "message": "must be an integer >= 1"}])
    return value


def _page_json(page: Page, items: list[Any]) -> dict[str, Any]:
    return {"items": items, "total": page.total, "offset": page.offset, "limit": page.limit}


# --- serialisation -----------------------------------------------------------------------------


def album_json(view: AlbumView) -> dict[str, Any]:
    """Return the API form of an album as the caller sees it."""
    album = view.album
    return {
        "id": album.id,
        "name": album.name,
        "description": album.description,
        "orthanc_label": album.label,
        "server_id": album.server_id,
        "created_by": album.created_by,
        "created_at": album.created_at.isoformat(),
        "updated_at": album.updated_at.isoformat(),
        "version": album.version,
        "my_role": view.role.value if view.role is not None else None,
        "member_count": view.member_count,
        "study_count": view.study_count,
    }


def member_json(member: AlbumMember) -> dict[str, Any]:
    """Return the API form of a membership."""
    return {
        "id": member.id,
        "kind": member.principal_kind,
        "principal": member.principal,
        "role": member.role,
        "added_by": member.added_by,
        "added_at": member.added_at.isoformat(),
    }


def _album_response(view: AlbumView, status: int = 200) -> Response:
    response = jsonify(album_json(view))
    response.status_code = status
    response.headers["ETag"] = f'"{view.album.version}"'
    return response


def _results_response(results: list[StudyResult]) -> Response:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return jsonify({"results": [r.to_json() for r in results], "summary": counts})


# --- albums ------------------------------------------------------------------------------------


@bp.get("")
def list_albums() -> Response:
    """List the caller's albums (``?all=true``: every album, for global admins)."""
    caller = _caller()
    offset, limit = _page_args()
    everything = request.args.get("all", "").lower() in {"1", "true", "yes"}
    page = albums.list_albums(caller, offset=offset, limit=limit, everything=everything)
    return jsonify(_page_json(page, [album_json(v) for v in page.items]))


@bp.post("")
def create_album() -> Response:
    """Create an album owned by the caller."""
    caller = _caller()
    body = _object({"name", "description", "server_id"}, required=("name",))
    view = albums.create_album(
        services().archive,
        caller,
        body.get("name"),
        body.get("description", ""),
        body.get("server_id"),
    )
    response = _album_response(view, 201)
    response.headers["Location"] = url_for(".get_album", album_id=view.album.id)
    return response


@bp.get("/<album_id>")
def get_album(album_id: str) -> Response:
    """Return one album."""
    return _album_response(albums.get_album(_caller(), album_id))


@bp.patch("/<album_id>")
def update_album(album_id: str) -> Response:
    """Rename an album or change its description (owners)."""
    caller = _caller()
    body = _object({"name", "description", "version"})
    header_version = _if_match()
    field_version = _version_field(body)
    view = albums.update_album(
        caller,
        album_id,
        name=body.get("name"),
        description=body.get("description"),
        expected_version=header_version if header_version is not None else field_version,
        precondition=header_version is not None,
    )
    return _album_response(view)


@bp.delete("/<album_id>")
def delete_album(album_id: str) -> Response:
    """Delete an album (owners); its studies stay in Orthanc without the album's label."""
    caller = _caller()
    body = json_body(allow_empty=True)
    version = _if_match()
    field_version = None
    if body is not None:
        if not isinstance(body, dict) or set(body) - {"version"}:
            raise ValidationFailed(details=[{"field": "", "message": "only 'version' is accepted"}])
        field_version = _version_field(body)
    albums.delete_album(
        services().archive,
        caller,
        album_id,
        expected_version=version if version is not None else field_version,
        precondition=version is not None,
    )
    return Response(status=204)


# --- members -----------------------------------------------------------------------------------


@bp.get("/<album_id>/members")
def list_members(album_id: str) -> Response:
    """List an album's members."""
    caller = _caller()
    offset, limit = _page_args()
    page = albums.list_members(caller, album_id, offset=offset, limit=limit)
    return jsonify(_page_json(page, [member_json(m) for m in page.items]))


@bp.post("/<album_id>/members")
def invite_member(album_id: str) -> Response:
    """Add a user, a Keycloak group or an e-mail invitation with a role."""
    caller = _caller()
    body = _object({"kind", "principal", "role"}, required=("kind", "principal", "role"))
    member = albums.invite_member(
        caller, album_id, body.get("kind"), body.get("principal"), body.get("role")
    )
    response = jsonify(member_json(member))
    response.status_code = 201
    response.headers["Location"] = url_for(".change_member", album_id=album_id, member_id=member.id)
    return response


@bp.patch("/<album_id>/members/<member_id>")
def change_member(album_id: str, member_id: str) -> Response:
    """Change a member's role."""
    caller = _caller()
    body = _object({"role"}, required=("role",))
    member = albums.change_member_role(caller, album_id, member_id, body.get("role"))
    return jsonify(member_json(member))


@bp.delete("/<album_id>/members/<member_id>")
def remove_member(album_id: str, member_id: str) -> Response:
    """Remove a member."""
    albums.remove_member(_caller(), album_id, member_id)
    return Response(status=204)


@bp.post("/<album_id>/leave")
def leave_album(album_id: str) -> Response:
    """Leave an album (the caller's own membership)."""
    albums.leave_album(_caller(), album_id)
    return Response(status=204)


# --- studies -----------------------------------------------------------------------------------


@bp.get("/<album_id>/studies")
def list_studies(album_id: str) -> Response:
    """List an album's studies (from Orthanc's label search), one page."""
    caller = _caller()
    offset, limit = _page_args()
    page = albums.list_studies(services().archive, caller, album_id, offset=offset, limit=limit)
    return jsonify(_page_json(page, page.items))


def _studies_body() -> object:
    body = _object({"studies"}, required=("studies",))
    return body.get("studies")


@bp.post("/<album_id>/studies")
def add_studies(album_id: str) -> Response:
    """Add studies (Orthanc ids or StudyInstanceUIDs) to an album; one result per study."""
    caller = _caller()
    return _results_response(
        albums.add_studies(services().archive, caller, album_id, _studies_body())
    )


@bp.post("/<album_id>/studies/remove")
def remove_studies(album_id: str) -> Response:
    """Take studies out of an album; one result per study."""
    caller = _caller()
    return _results_response(
        albums.remove_studies(services().archive, caller, album_id, _studies_body())
    )


def _single(result: list[StudyResult], ok: set[str]) -> Response:
    item = result[0]
    if item.status not in ok:
        raise NotFound(
            "No such study in this album." if item.status == "not-in-album" else "No such study."
        )
    return jsonify(item.to_json())


@bp.put("/<album_id>/studies/<ref>")
def add_study(album_id: str, ref: str) -> Response:
    """Add one study (Orthanc id or StudyInstanceUID). :raise 404: unknown or not visible."""
    caller = _caller()
    if request.content_length:
        raise BadRequest("This request takes no body.")
    return _single(
        albums.add_studies(services().archive, caller, album_id, [ref]),
        {"added", "already-present"},
    )


@bp.delete("/<album_id>/studies/<ref>")
def remove_study(album_id: str, ref: str) -> Response:
    """Remove one study from the album. :raise 404: not in the album."""
    caller = _caller()
    return _single(albums.remove_studies(services().archive, caller, album_id, [ref]), {"removed"})
