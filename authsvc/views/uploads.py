"""Upload tokens (JSON API) and the album upload endpoints (STOW-RS and plain uploads).

* ``POST /api/albums/<id>/upload-tokens`` — issue (contributor+); the token is in this answer
  only. ``GET`` lists (managers: all; contributors: their own); ``DELETE …/<token id>``
  revokes.
* ``POST /dicom-web/albums/<id>/studies`` — STOW-RS into the album; answers in DICOM JSON.
* ``POST /api/albums/<id>/uploads`` — DICOM files, ZIP archives or form uploads; answers JSON.

Uploads accept an upload token (``Authorization: Bearer up1.…``, the ``upload_token_header``,
the ``token`` header Orthanc's plugin reads, or HTTP Basic with the user ``token`` and the
upload token as password) or the credentials of a user who is at least contributor in the
album (Keycloak token, API key). The credential is
checked, and a token use reserved, before the body is read, so a refused request never sends a
byte to Orthanc.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import IO
from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request
from werkzeug.exceptions import ClientDisconnected
from werkzeug.exceptions import RequestEntityTooLarge

from authsvc import audit
from authsvc import liveness
from authsvc import uploads
from authsvc.albums import Caller
from authsvc.albums import album_role
from authsvc.albums import caller_for
from authsvc.audit import AuditAction
from authsvc.audit import Outcome
from authsvc.credentials import upload_token_records as records
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.sealing import token_purpose
from authsvc.errors import AuthsvcError
from authsvc.errors import Forbidden
from authsvc.errors import NotFound
from authsvc.errors import TokenInvalid
from authsvc.errors import Unauthenticated
from authsvc.extensions import db
from authsvc.models import Album
from authsvc.orthanc import OrthancClient
from authsvc.policy import Action
from authsvc.policy import Denied
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views.auth import bearer_from_header
from authsvc.views.auth import current_actor
from authsvc.views.auth import require_identity
from authsvc.views.requests import json_body

bp = Blueprint("uploads", __name__)


def _caller() -> Caller:
    """Return the authenticated caller (401 for anonymous or bad credentials)."""
    identity = require_identity()
    return caller_for(identity, current_actor())


def _limits() -> records.TokenLimits:
    settings = services().settings
    return records.TokenLimits(
        default_lifetime=settings.upload_token_default_lifetime,
        max_lifetime=settings.upload_token_max_lifetime,
    )


# --- upload tokens ---------------------------------------------------------------------------


@bp.post("/api/albums/<album_id>/upload-tokens")
def issue_upload_token(album_id: str) -> tuple[Response, int]:
    """Issue an upload token; the answer is the only place the token ever appears."""
    caller = _caller()
    body = json_body(allow_empty=True)
    issued = records.issue(caller, album_id, body, ring=services().upload_keys, limits=_limits())
    response = jsonify({**records.token_json(issued.row), "token": issued.token})
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.get("/api/albums/<album_id>/upload-tokens")
def list_upload_tokens(album_id: str) -> Response:
    """List the album's upload tokens the caller may see (never the tokens themselves)."""
    rows = records.list_tokens(_caller(), album_id)
    return jsonify({"items": [records.listed_json(services().makers, row) for row in rows]})


@bp.delete("/api/albums/<album_id>/upload-tokens/<token_id>")
def revoke_upload_token(album_id: str, token_id: str) -> Response:
    """Revoke one upload token (idempotent)."""
    row = records.revoke(_caller(), album_id, token_id)
    return jsonify(records.listed_json(services().makers, row))


# --- uploads ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Uploader:
    """Who is uploading into which album, as the audit trail names them."""

    album: Album
    audit_name: str
    token_id: str | None = None


def _presented_upload_token() -> str | None:
    """Return the upload token the request carries, if any (not yet checked)."""
    header = services().settings.upload_token_header
    value = (request.headers.get(header) or "").strip()
    if value:
        return bearer_from_header(value) or value
    # The header Orthanc's plugin (OE2 preset) takes tokens from; tools aimed at Orthanc's
    # DICOMweb send upload tokens there, and nginx hands those STOWs to authsvc.
    orthanc_style = (request.headers.get("token") or "").strip()
    orthanc_style = bearer_from_header(orthanc_style) or orthanc_style
    if token_purpose(orthanc_style) is Purpose.UPLOAD:
        return orthanc_style
    authorization = request.headers.get("Authorization")
    bearer = bearer_from_header(authorization) or _basic_token(authorization)
    if bearer is None:
        return None
    purpose = token_purpose(bearer)
    if purpose is Purpose.UPLOAD:
        return bearer
    if purpose is not None:
        raise TokenInvalid("This is not an upload token.")
    return None  # a Keycloak token or an API key: the user path


def _basic_token(value: str | None) -> str | None:
    """Return the password of ``Authorization: Basic`` for the user ``token``, if that is it.

    Tools that only take a URL (3D Slicer's DICOMweb send) carry the token as the URL's user
    info, ``https://token:<upload token>@host/…``, which HTTP clients send as Basic auth (the
    convention Kheops uses for its album tokens).
    """
    if not value or value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text (a 500 before)
        return None
    user, sep, password = decoded.partition(":")
    if not sep or user != "token" or not password:
        return None
    return password


def _uploader(album_id: str) -> Uploader:
    """Authenticate the upload and check it may go into the album; reserve a token use.

    :raise 401: bad, expired, revoked or used-up token; bad user credentials.
    :raise 403: a token for another album; a member below contributor.
    :raise 404: no such album (or the user is not a member).
    """
    try:
        token = _presented_upload_token()
        grant = (
            records.authorize(services().makers, services().upload_keys, token, album_id)
            if token is not None
            else None
        )
    except AuthsvcError as exc:
        _audit_token_refusal(album_id, exc)
        raise
    if grant is not None:
        row, album = grant
        return Uploader(album=album, audit_name=f"upload-token:{row.id}", token_id=row.id)
    return uploader_for(_caller(), album_id)


def uploader_for(caller: Caller, album_id: str) -> Uploader:
    """Check that a user may upload into the album (contributor and up); audit a refusal.

    :raise 403: a member below contributor.
    :raise 404: no such album (or the user is not a member).
    """
    found: Album | None = db.session.get(Album, album_id) if len(album_id) <= 64 else None
    if found is None:
        raise NotFound("No such album.")
    album = found
    decision = decide(caller.actor, Action.ALBUM_UPLOAD, album_role=album_role(caller, album.id))
    if not decision:
        audit.record(
            AuditAction.album_upload,
            caller.name,
            f"album:{album.id}",
            Outcome.denied,
            {"reason": decision.reason},
        )
        db.session.commit()
        if isinstance(decision, Denied) and decision.conceal:
            raise NotFound("No such album.")
        raise Forbidden(f"Not allowed: {decision.reason}.")
    return Uploader(album=album, audit_name=caller.name)


def _audit_token_refusal(album_id: str, exc: AuthsvcError) -> None:
    """Record a refused upload token (the request's transaction is rolled back first)."""
    db.session.rollback()
    audit.record(
        AuditAction.album_upload,
        "upload-token",
        f"album:{album_id}"[:200],
        Outcome.denied,
        {"reason": exc.code, "message": exc.message},
    )
    db.session.commit()


class _RequestStream:
    """The request body as a domain ``Readable``: werkzeug's errors become ours."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        try:
            self._stream = request.stream
        except RequestEntityTooLarge as exc:
            raise uploads.UploadTooLarge(
                f"The upload is larger than the limit of {limit} bytes."
            ) from exc

    def read(self, size: int = -1, /) -> bytes:
        liveness.progress()
        try:
            return self._stream.read(size)
        except RequestEntityTooLarge as exc:
            raise uploads.UploadTooLarge(
                f"The upload is larger than the limit of {self._limit} bytes."
            ) from exc
        except ClientDisconnected as exc:
            raise uploads.MalformedUpload(
                "The body ended before its announced length (client disconnected?)."
            ) from exc


@dataclasses.dataclass(frozen=True)
class _ProgressStore:
    """Orthanc's store, reporting each instance as progress (a ZIP is stored after it is read)."""

    client: OrthancClient

    def store_instance(self, body: bytes | IO[bytes]) -> dict[str, Any]:
        liveness.progress()
        return self.client.store_instance(body)


def run_upload(
    uploader: Uploader,
    *,
    stow: bool,
    fields: uploads.FormFields | None = None,
    limits: uploads.UploadLimits | None = None,
) -> uploads.UploadResult:
    """Stream the body into Orthanc and the album; audit; raise when nothing was stored.

    ``fields`` takes a form upload's plain fields (the admin page's CSRF token); ``limits``
    replaces the configured ones when they are smaller (the admin page's no-script form).
    """
    settings = services().settings
    album = uploader.album
    configured = uploads.UploadLimits(
        max_bytes=settings.upload_max_bytes, max_instances=settings.upload_max_instances
    )
    if limits is not None:
        configured = uploads.UploadLimits(
            max_bytes=min(configured.max_bytes, limits.max_bytes),
            max_instances=min(configured.max_instances, limits.max_instances),
        )
    result: uploads.UploadResult | None = None
    try:
        kind, boundary = uploads.classify(request.headers.get("Content-Type"), stow=stow)
        archive = services().archive
        client = archive.client(album.server_id)
        # This route reads far more than a JSON body: the upload limit replaces the JSON one.
        request.max_content_length = configured.max_bytes
        result = uploads.ingest(
            _RequestStream(configured.max_bytes),
            kind,
            boundary,
            store=_ProgressStore(client),
            sink=uploads.album_sink(archive, album, uploader.audit_name),
            limits=configured,
            fields=fields,
        )
    except AuthsvcError as exc:
        _finish(uploader, None, exc)
        raise
    _finish(uploader, result, result.error)
    if not result.stored and result.error is not None:
        raise result.error
    return result


def _finish(
    uploader: Uploader, result: uploads.UploadResult | None, error: AuthsvcError | None
) -> None:
    """Give back an unused token use, and write the upload's audit row."""
    db.session.rollback()
    stored = bool(result and result.stored)
    if uploader.token_id is not None and not stored:
        records.release_use(uploader.token_id)
    detail: dict[str, Any] = {"token_id": uploader.token_id, "album_id": uploader.album.id}
    if result is not None:
        detail.update(result.summary())
        detail["result"] = result.outcome
        detail["study_ids"] = list(result.studies)[:100]
        detail["pending_study_ids"] = [s.study_id for s in result.pending_studies][:100]
    if error is not None:
        detail["error"] = error.code
        detail["error_message"] = error.message
    audit.record(
        AuditAction.album_upload,
        uploader.audit_name,
        f"album:{uploader.album.id}",
        Outcome.success if stored else Outcome.failure,
        detail,
    )
    db.session.commit()


def warnings_for(result: uploads.UploadResult) -> list[str]:
    """Human-readable notes for the Warning header and the JSON answer."""
    notes = []
    if result.pending_studies:
        names = [s.study_instance_uid or s.study_id for s in result.pending_studies]
        shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
        notes.append(
            f"{len(names)} stored study(ies) are not yet in the album ({shown}); "
            "authsvc retries labelling them automatically."
        )
    if result.error is not None:
        notes.append(f"The upload stopped early: {result.error.message}")
    if not result.stored:
        reasons = sorted({i.reason for i in result.failed if i.reason})
        notes.append("Nothing was stored: " + " ".join(reasons))
    return notes


def _status(result: uploads.UploadResult) -> int:
    if not result.stored:
        return 409
    if result.failed or result.pending_studies or result.error is not None:
        return 202
    return 200


def _warning_header(notes: list[str]) -> str:
    # RFC 7234 299 warnings, as PS3.18 §10.5 uses them; quotes in the text are escaped.
    return ", ".join(
        '299 authsvc "{}"'.format(n.replace("\\", "").replace('"', "'")) for n in notes
    )


@bp.post("/dicom-web/albums/<album_id>/studies")
def stow(album_id: str) -> Response:
    """STOW-RS into an album: store every instance, label every study, answer in DICOM JSON."""
    uploader = _uploader(album_id)
    result = run_upload(uploader, stow=True)
    client = services().orthanc.get(uploader.album.server_id)
    base = f"{request.url_root.rstrip('/')}/dicom-web/albums/{uploader.album.id}"
    body = stow_response(result, base, client)
    response = jsonify(body)
    response.status_code = _status(result)
    response.mimetype = "application/dicom+json"
    notes = warnings_for(result)
    if notes:
        response.headers["Warning"] = _warning_header(notes)
    return response


@bp.post("/dicom-web/studies")
def stow_by_token() -> Response:
    """STOW-RS into the album the upload token names, with no album in the path.

    This is where nginx sends ``POST /orthanc/dicom-web/studies`` when it carries an upload
    token (nginx/plugin.conf.template): tools pointed at Orthanc's own DICOMweb root store into
    the token's album, labelled, with the same per-instance answer as the album route.

    :raise 401: no upload token, or a bad, expired, revoked or used-up one.
    """
    try:
        token = _presented_upload_token()
        if token is None:
            raise Unauthenticated(
                "Send an upload token (Authorization: Bearer up1..., or the "
                f"{services().settings.upload_token_header} header): it names the album."
            )
        album_id = records.album_named_by(services().upload_keys, token)
    except AuthsvcError as exc:
        _audit_token_refusal("(named by the token)", exc)
        raise
    return stow(album_id)


@bp.post("/api/albums/<album_id>/uploads")
def upload(album_id: str) -> Response:
    """Upload DICOM files or ZIP archives into an album; answer a per-file JSON report."""
    uploader = _uploader(album_id)
    result = run_upload(uploader, stow=False)
    response = jsonify(upload_report(result, uploader.album.id))
    response.status_code = report_status(result)
    return response


def upload_report(result: uploads.UploadResult, album_id: str) -> dict[str, Any]:
    """The per-file JSON answer of a plain upload (the API's and the album page's)."""
    return {
        "album_id": album_id,
        "complete": result.error is None,
        "summary": result.summary(),
        "instances": [i.to_json() for i in result.instances],
        "studies": [s.to_json() for s in result.studies.values()],
        "warnings": warnings_for(result),
        "error": _report_error(result),
    }


def report_status(result: uploads.UploadResult) -> int:
    """The status of a plain upload's answer: 422 when nothing was stored."""
    return 422 if not result.stored else _status(result)


def _report_error(result: uploads.UploadResult) -> dict[str, Any] | None:
    if result.error is not None:
        return result.error.to_dict()
    if not result.stored:
        reasons = sorted({i.reason for i in result.failed if i.reason})
        return {"error": "nothing-stored", "message": "Nothing was stored: " + " ".join(reasons)}
    return None


def stow_response(
    result: uploads.UploadResult, base: str, client: OrthancClient | None
) -> dict[str, Any]:
    """Build the STOW-RS answer (PS3.18 §10.5.3): referenced and failed SOP sequences."""
    study_uids = {s.study_id: s.study_instance_uid for s in result.studies.values()}
    series_uids: dict[str, str | None] = {}

    def series_uid(series_id: str | None) -> str | None:
        if series_id is None or client is None:
            return None
        if series_id not in series_uids:
            try:
                series_uids[series_id] = client.series_instance_uid(series_id)
            except AuthsvcError:
                series_uids[series_id] = None  # the URL is a convenience; leave it out
        return series_uids[series_id]

    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item in result.instances:
        entry: dict[str, Any] = {}
        if item.sop_class_uid:
            entry["00081150"] = {"vr": "UI", "Value": [item.sop_class_uid]}
        if item.sop_instance_uid:
            entry["00081155"] = {"vr": "UI", "Value": [item.sop_instance_uid]}
        if item.stored:
            study_uid = study_uids.get(item.study_id or "")
            series = series_uid(item.series_id)
            if study_uid and series and item.sop_instance_uid:
                url = (
                    f"{base}/studies/{study_uid}/series/{series}/instances/{item.sop_instance_uid}"
                )
                entry["00081190"] = {"vr": "UR", "Value": [url]}
            referenced.append(entry)
        elif item.status == "failed":
            entry["00081197"] = {
                "vr": "US",
                "Value": [item.failure_code or uploads.FAILURE_PROCESSING],
            }
            failed.append(entry)
    body: dict[str, Any] = {}
    uids = [uid for uid in study_uids.values() if uid]
    if len(uids) == 1 and len(study_uids) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{uids[0]}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body
