"""``/api/albums/<id>/read-tokens``: create, list and revoke album read tokens (managers and up).

A read token opens one album's DICOMweb endpoint (and the album's studies through the nginx
gate) for reading, to whoever holds it: an external viewer, a script, a collaborator without an
account. It expires (``lifetime`` seconds, default 7 days) and can be revoked at once. The token
text is in the creation answer only; it is never stored and cannot be shown again.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request

from authsvc.albums import access as album_access
from authsvc.credentials import read_token_records
from authsvc.errors import DependencyUnavailable
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.models import Album
from authsvc.policy import AlbumRole
from authsvc.services import services
from authsvc.views.auth import current_actor
from authsvc.views.auth import require_identity
from authsvc.views.requests import json_body

bp = Blueprint("read_tokens", __name__, url_prefix="/api/albums/<album_id>/read-tokens")


def _audit_name(identity: Identity) -> str:
    kind = "apikey-owner" if identity.kind.value == "api_key" else "user"
    return f"{kind}:{identity.subject}"


def _role(identity: Identity, album_id: str) -> AlbumRole | None:
    """Return the caller's role in the album, fresh from the database (no cache: writes)."""
    album = db.session.get(Album, album_id) if 0 < len(album_id) <= 64 else None
    if album is None:
        return None
    email = identity.email if identity.email and identity.email_verified else None
    return album_access.roles_by_label(identity.subject, identity.group_names, email).get(
        album.label
    )


@bp.post("")
def create(album_id: str) -> tuple[Response, int]:
    """Create a read token: body ``{"lifetime": seconds, "note": "..."}`` (both optional).

    :raise 401: not authenticated. :raise 404: no such album (or not a member).
    :raise 403: below manager. :raise 422: bad lifetime or note.
    :raise 503: read tokens are not enabled (no ``upload_token_keys``).
    """
    identity = require_identity()
    body = json_body(allow_empty=True) or {}
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.")
    ring = services().upload_keys
    if ring is None:
        raise DependencyUnavailable("Album read tokens are not enabled (upload_token_keys).")
    issued = read_token_records.issue_read_token(
        ring,
        current_actor(),
        _audit_name(identity),
        album_id,
        _role(identity, album_id),
        lifetime=body.get("lifetime"),
        note=body.get("note"),
    )
    answer: dict[str, Any] = read_token_records.read_token_json(issued.row)
    answer["token"] = issued.token
    answer["dicomweb_url"] = f"{request.url_root.rstrip('/')}/dicom-web/albums/{album_id}"
    return jsonify(answer), 201


@bp.get("")
def list_tokens(album_id: str) -> Response:
    """List the album's read tokens (never the token texts)."""
    identity = require_identity()
    rows = read_token_records.list_read_tokens(current_actor(), album_id, _role(identity, album_id))
    return jsonify(
        {
            "items": [
                read_token_records.read_token_json(row, rights=services().makers) for row in rows
            ]
        }
    )


@bp.delete("/<token_id>")
def revoke(album_id: str, token_id: str) -> Response:
    """Revoke one read token (idempotent); it stops working at once."""
    identity = require_identity()
    row = read_token_records.revoke_read_token(
        current_actor(), _audit_name(identity), album_id, _role(identity, album_id), token_id
    )
    return jsonify(read_token_records.read_token_json(row))
