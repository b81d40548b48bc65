"""The album page's upload: DICOM files, folders and ZIP archives from the browser, on the session.

``POST /admin/albums/<id>/upload`` takes ``multipart/form-data`` from a signed-in contributor
(or more) and sends it through the same streaming machinery as the upload API
(:func:`authsvc.views.uploads.run_upload`): each file goes to Orthanc as it arrives, each study
is labelled for the album the first time it is seen (a pending label if Orthanc cannot label it
now), ZIP archives are spooled to a temporary file and unpacked member by member. Nothing of
the upload is held in memory beyond one small buffer.

Two callers, told apart by the CSRF token's place:

* the page's script (``authsvc/static/album-upload.js``) sends the token in the
  ``X-CSRF-Token`` header and batches of at most :data:`SCRIPT_BATCH_FILES` files /
  :data:`SCRIPT_BATCH_BYTES` bytes, asks for JSON and gets the upload API's per-file report;
* the plain form (JavaScript off) sends the token as its first field, before the files, so
  it is checked before a byte reaches Orthanc; that request may carry at most
  :data:`NO_SCRIPT_MAX_FILES` files and :data:`NO_SCRIPT_MAX_BYTES` bytes (it has no progress
  bar and no retry), and the answer is a summary page.

The CSRF check of the admin blueprint reads ``request.form``, which would parse (and spool) the
whole body before the view runs; that is why this route has a blueprint of its own and checks
the token itself, from the header or from the stream.
"""

from __future__ import annotations

import hmac
from typing import Any
from typing import Final

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import render_template
from flask import request
from flask import session

from authsvc import albums
from authsvc import uploads
from authsvc.errors import Forbidden
from authsvc.errors import UnsupportedMediaType
from authsvc.views import uploads as upload_views
from authsvc.views.admin import _blueprint as admin

bp = Blueprint("album_upload", __name__, url_prefix="/admin")

#: The page's script sends at most this many files per request …
SCRIPT_BATCH_FILES: Final = 50
#: … and at most this many bytes (a larger single file travels alone).
SCRIPT_BATCH_BYTES: Final = 32 * 1024 * 1024
#: One no-script form submission may carry at most this many files …
NO_SCRIPT_MAX_FILES: Final = 500
#: … and this many bytes.
NO_SCRIPT_MAX_BYTES: Final = 512 * 1024 * 1024

_REFUSED = (
    "This form has expired or did not come from this site. Go back, reload the page and try again."
)


class CsrfGate:
    """Checks the session's CSRF token, from the header or the form's first field.

    Implements :class:`authsvc.uploads.FormFields`: a file part before a valid token stops the
    upload with 403 before that file is read.
    """

    def __init__(self, expected: object, header: str | None) -> None:
        """Check the header at once when it is there (a wrong one is refused here)."""
        self._expected = expected if isinstance(expected, str) and expected else None
        self.verified = False
        if header is not None:
            if not self._matches(header):
                raise Forbidden(_REFUSED)
            self.verified = True

    def _matches(self, sent: str) -> bool:
        return self._expected is not None and hmac.compare_digest(
            self._expected.encode(), sent.encode("utf-8", "surrogateescape")
        )

    def field(self, name: str, value: bytes) -> None:
        """Check the ``csrf_token`` field; other fields are ignored."""
        if name != admin.CSRF_FIELD or self.verified:
            return
        if not self._matches(value.decode("utf-8", "replace")):
            raise Forbidden(_REFUSED)
        self.verified = True

    def before_file(self) -> None:
        """Refuse a file that comes before the CSRF token."""
        if not self.verified:
            raise Forbidden(_REFUSED)


@bp.before_request
def load_user() -> None:
    """Find who is signed in, as every admin page does."""
    admin.load_user()


# The admin pages' headers (no framing, no sniffing, no caching) on this route's answers too.
bp.after_request(admin.security_headers)


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


@bp.post("/albums/<album_id>/upload")
@admin.signed_in
def upload(album_id: str) -> Response | tuple[str, int]:
    """Upload files into the album from its page: JSON for the script, a page for the form.

    :raise 403: no or wrong CSRF token, not signed in, or a member below contributor.
    :raise 404: no such album (or the user is not a member).
    :raise 415: not ``multipart/form-data``.
    """
    header = request.headers.get(admin.CSRF_HEADER)
    gate = CsrfGate(session.get("admin_csrf"), header)  # the key admin.csrf_token() sets
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the files as multipart/form-data (the album page's upload form)."
        )
    identity = admin.current_user()
    if identity is None:  # signed_in saw to it; this keeps the type checker informed
        raise Forbidden("Please sign in first.")
    caller = albums.caller_for(identity, admin.current_actor())
    uploader = upload_views.uploader_for(caller, album_id)
    limits = (
        None
        if gate.verified
        else uploads.UploadLimits(max_bytes=NO_SCRIPT_MAX_BYTES, max_instances=NO_SCRIPT_MAX_FILES)
    )
    result = upload_views.run_upload(uploader, stow=False, fields=gate, limits=limits)
    if _wants_json():
        response = jsonify(upload_views.upload_report(result, uploader.album.id))
        response.status_code = upload_views.report_status(result)
        return response
    page = render_template(
        "admin/upload_summary.html",
        album=uploader.album,
        summary=result.summary(),
        studies=_studies(result),
        refused=[i for i in result.instances if i.status == "failed"],
        warnings=upload_views.warnings_for(result),
    )
    return page, 200 if result.stored else 422


def _studies(result: uploads.UploadResult) -> list[dict[str, Any]]:
    """Group the stored instances by study, for the summary page."""
    rows: dict[str, dict[str, Any]] = {}
    for item in result.instances:
        if not item.stored or item.study_id is None:
            continue
        study = result.studies.get(item.study_id)
        row = rows.setdefault(
            item.study_id,
            {
                "uid": study.study_instance_uid if study else None,
                "in_album": bool(study and study.in_album),
                "stored": 0,
                "present": 0,
            },
        )
        row["stored" if item.status == "stored" else "present"] += 1
    return list(rows.values())


@bp.app_context_processor
def upload_batch() -> dict[str, Any]:
    """The batch sizes the album page's upload section shows and its script uses."""
    return {
        "upload_batch": {
            "files": SCRIPT_BATCH_FILES,
            "bytes": SCRIPT_BATCH_BYTES,
            "no_script_files": NO_SCRIPT_MAX_FILES,
            "no_script_mb": NO_SCRIPT_MAX_BYTES // (1024 * 1024),
        }
    }
