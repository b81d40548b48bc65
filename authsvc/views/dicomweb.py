"""Album DICOMweb: ``/dicom-web/albums/<album id>/`` (QIDO-RS, WADO-RS; see orthanc.dicomweb).

STOW-RS (``POST .../studies``) belongs to the uploads blueprint. Every request here:

1. finds who is asking: an album read token for this album (``Authorization: Bearer ar1.…``
   or ``?token=``), or a Keycloak bearer token / API key;
2. asks the policy (viewers and up read; a read token reads its own album only). Non-members
   get 404: album ids cannot be probed;
3. QIDO at the album root is restricted to the album's studies; anything below
   ``studies/{uid}`` is checked against the album's label first, then streamed through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from flask import Blueprint
from flask import Response
from flask import request
from flask import stream_with_context

from authsvc.credentials.read_token_records import verify_read_token
from authsvc.credentials.sealing import TOKEN_TAGS
from authsvc.credentials.sealing import Purpose
from authsvc.errors import AuthsvcError
from authsvc.errors import BadRequest
from authsvc.errors import NotFound
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.errors import Unauthenticated
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.orthanc import OrthancClient
from authsvc.orthanc import dicomweb
from authsvc.orthanc.routes import DEFAULT_CLASSIFIER
from authsvc.orthanc.routes import RouteKind
from authsvc.policy import Action
from authsvc.policy import TokenKind
from authsvc.policy import decide
from authsvc.policy import decide_token_access
from authsvc.services import services
from authsvc.views.auth import bearer_from_header
from authsvc.views.auth import current_actor
from authsvc.views.auth import current_identity

log = logging.getLogger(__name__)

bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web/albums/<album_id>")

#: Where Orthanc's DICOMweb plugin answers (its "Root"), as seen by authsvc.
ORTHANC_DICOMWEB_ROOT = "/dicom-web"
_READ_TOKEN_PREFIX = TOKEN_TAGS[Purpose.ALBUM_READ] + "."
_JSON_TYPES = ("application/dicom+json", "application/json")
_COPIED_HEADERS = ("Content-Type", "Content-Disposition", "ETag", "Last-Modified")
_CHUNK = 64 * 1024
# Query arguments that are credentials, never forwarded to Orthanc.
_CREDENTIAL_ARGS = frozenset({"token"})


@dataclass(frozen=True, slots=True)
class AlbumAccess:
    """The album a request is for, and the Orthanc server it lives on."""

    album: Album
    client: OrthancClient


def _read_token() -> str | None:
    for value in (
        bearer_from_header(request.headers.get("Authorization")),
        request.args.get("token"),
    ):
        if value and value.startswith(_READ_TOKEN_PREFIX):
            return value.strip()
    return None


def _album_access(album_id: str) -> AlbumAccess:
    """Return the album if the caller may read it.

    :raise 401: no or invalid credentials.
    :raise 404: no such album, or the caller may not know it exists.
    :raise 403: authenticated but not allowed (read tokens: wrong method).
    """
    svc = services()
    album = db.session.get(Album, album_id) if 0 < len(album_id) <= 64 else None
    token = _read_token()
    if token is not None:
        if svc.upload_keys is None:
            raise Unauthenticated("Album read tokens are not enabled.")
        grant = verify_read_token(svc.makers, svc.upload_keys, token)
        if album is None or grant.album_id != album.id:
            raise NotFound("No such album.")
        decision = decide_token_access(TokenKind.ALBUM_READ, request.method, None)
        if not decision:
            from authsvc.errors import Forbidden

            raise Forbidden(f"Not allowed: {decision.reason}.")
    else:
        identity = current_identity()
        if identity.is_anonymous:
            raise Unauthenticated("Authentication is required: send a bearer token or an API key.")
        if album is None:
            raise NotFound("No such album.")
        email = identity.email if identity.email and identity.email_verified else None
        roles = svc.album_roles.roles(identity.subject, identity.group_names, email)
        decision = decide(current_actor(), Action.ALBUM_VIEW, album_role=roles.get(album.label))
        if not decision:
            raise NotFound("No such album.")
    client = svc.orthanc.get(album.server_id or None)
    if client is None:
        raise OrthancUnavailable(f"Orthanc server {album.server_id!r} is not configured.")
    return AlbumAccess(album, client)


def _public_root(album_id: str) -> str:
    """Return the album's absolute DICOMweb root as the client reaches it (proxy-aware)."""
    return f"{request.url_root.rstrip('/')}/dicom-web/albums/{album_id}"


def _raw_query() -> str:
    return request.query_string.decode("latin-1")


def _forward_query() -> str:
    """Return the client's query string, raw, without credential arguments."""
    fields = dicomweb.split_query(_raw_query(), _CREDENTIAL_ARGS)
    return "&".join(field for _, _, field in fields)


def _orthanc_headers() -> dict[str, str]:
    headers = {"Forwarded": dicomweb.forwarded_header()}
    accept = request.headers.get("Accept")
    if accept:
        headers["Accept"] = dicomweb.normalize_accept(accept)
    return headers


def _translate(exc: OrthancError) -> AuthsvcError:
    """Map Orthanc's 4xx on a DICOMweb call to what the client should see."""
    if exc.orthanc_status == 404:
        return NotFound("Not found in this album.")
    if exc.orthanc_status == 400:
        return BadRequest("Orthanc refused the request as malformed.")
    return exc


# --- QIDO at the album root ---------------------------------------------------------------------


def album_study_uids(client: OrthancClient, label: str) -> set[str]:
    """Return the StudyInstanceUIDs of every study carrying the album's label."""
    found = client.find_studies(labels=[label], constraint="All", expand=True)
    uids = set()
    for study in found:
        if isinstance(study, dict):
            uid = (study.get("MainDicomTags") or {}).get("StudyInstanceUID")
            if isinstance(uid, str) and uid:
                uids.add(uid)
    return uids


def _qido(album_id: str, level: str) -> Response:
    access = _album_access(album_id)
    query = dicomweb.parse_qido_query(_raw_query(), _CREDENTIAL_ARGS)
    album_uids = album_study_uids(access.client, access.album.label)
    wanted = sorted(album_uids if query.study_uids is None else set(query.study_uids) & album_uids)
    results: list[Any] = []
    for start in range(0, len(wanted), dicomweb.QIDO_BATCH):
        batch = wanted[start : start + dicomweb.QIDO_BATCH]
        try:
            response = access.client.request(
                "GET",
                f"{ORTHANC_DICOMWEB_ROOT}/{level}?{query.orthanc_params(batch)}",
                headers={
                    "Accept": "application/dicom+json",
                    "Forwarded": dicomweb.forwarded_header(),
                },
                idempotent=True,
            )
        except OrthancError as exc:
            raise _translate(exc) from exc
        if response.status_code == 204 or not response.content:
            continue
        try:
            data = response.json()
        except ValueError as exc:
            raise OrthancError("Orthanc sent a non-JSON QIDO answer.") from exc
        if not isinstance(data, list):
            raise OrthancError("Orthanc sent an unexpected QIDO answer.")
        # Second line of defence: whatever Orthanc did with the filter, only album studies.
        results.extend(d for d in data if dicomweb.study_uid_of(d) in album_uids)
    end = None if query.limit is None else query.offset + query.limit
    page = results[query.offset : end]
    body = dicomweb.rewrite_text(json.dumps(page), _public_root(album_id))
    return Response(body, status=200, mimetype="application/dicom+json")


@bp.get("/studies")
def qido_studies(album_id: str) -> Response:
    """QIDO-RS: the album's studies matching the query."""
    return _qido(album_id, "studies")


@bp.get("/series")
def qido_series(album_id: str) -> Response:
    """QIDO-RS: series of the album's studies matching the query."""
    return _qido(album_id, "series")


@bp.get("/instances")
def qido_instances(album_id: str) -> Response:
    """QIDO-RS: instances of the album's studies matching the query."""
    return _qido(album_id, "instances")


# --- below one study: per-study check, then streamed -------------------------------------------


def _check_in_album(access: AlbumAccess, path: str) -> None:
    """Refuse (404) unless every resource the Orthanc-side ``path`` names is in the album."""
    query = request.query_string.decode("latin-1")
    target = DEFAULT_CLASSIFIER.classify("GET", f"{path}?{query}" if query else path)
    if target.kind is RouteKind.MALFORMED:
        raise BadRequest("Malformed DICOMweb path or query.")
    if target.kind is not RouteKind.RESOURCE or not target.resources:
        raise NotFound("There is nothing at this address.")
    cache = services().study_labels
    for ref in target.resources:
        studies = cache.studies_of(access.client, ref)
        if not studies or any(access.album.label not in s.labels for s in studies):
            raise NotFound("Not found in this album.")


def _stream(upstream: requests.Response, public_root: str | None) -> Iterator[bytes]:
    """Yield Orthanc's body chunk by chunk (rewriting URLs in JSON), then close it."""
    try:
        chunks = upstream.iter_content(chunk_size=_CHUNK)
        if public_root is None:
            yield from chunks
        else:
            yield from dicomweb.rewrite_urls(chunks, public_root)
    except requests.RequestException:
        # Too late for a status code: cut the response short so the client sees it as broken.
        log.warning("album DICOMweb: Orthanc stream broke off")
        raise
    finally:
        upstream.close()


@bp.get("/studies/<study_uid>")
@bp.get("/studies/<study_uid>/<path:tail>")
def wado(album_id: str, study_uid: str, tail: str = "") -> Response:
    """WADO-RS and QIDO below one study of the album, streamed from Orthanc."""
    access = _album_access(album_id)
    path = f"{ORTHANC_DICOMWEB_ROOT}/studies/{study_uid}" + (f"/{tail}" if tail else "")
    _check_in_album(access, path)
    query = _forward_query()
    try:
        upstream = access.client.request(
            "GET",
            f"{path}?{query}" if query else path,
            headers=_orthanc_headers(),
            idempotent=True,
            stream=True,
        )
    except OrthancError as exc:
        raise _translate(exc) from exc
    content_type = upstream.headers.get("Content-Type", "")
    rewrite = content_type.split(";", 1)[0].strip().lower() in _JSON_TYPES
    headers = {name: upstream.headers[name] for name in _COPIED_HEADERS if name in upstream.headers}
    if not rewrite and "Content-Length" in upstream.headers:
        headers["Content-Length"] = upstream.headers["Content-Length"]
    body = _stream(upstream, _public_root(album_id) if rewrite else None)
    return Response(
        stream_with_context(body),
        status=upstream.status_code,
        headers=headers,
        direct_passthrough=True,
    )
