"""Attacks found by the security review of 2026-12-03 (docs/security.md, "Review of 2026-12-03").

Each test is an attack that worked before its fix (or a check the review added); the older
attack suite is tests/functional/test_attacks.py. Orthanc and the OIDC provider are faked.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import zipfile
from typing import Any

import pytest
from flask import Flask

from authsvc import logs
from authsvc import uploads
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.sealing import generate_key
from authsvc.credentials.sealing import seal
from authsvc.orthanc.routes import Capability
from authsvc.policy import TokenKind
from authsvc.policy import decide_token_access
from authsvc.uploads import UploadKind
from authsvc.uploads import UploadLimits
from tests.dicom_factory import make_study
from tests.fake_orthanc import FakeOrthanc
from tests.functional.admin.test_admin import ALICE
from tests.functional.admin.test_admin import extra_config  # noqa: F401 - the admin pages' settings
from tests.functional.admin.test_admin import mock  # noqa: F401 - a fixture, used by name
from tests.functional.admin.test_admin import orthanc  # noqa: F401 - a fixture, used by name
from tests.functional.admin.test_admin import sign_in

pytestmark = pytest.mark.functional


# --- uploads: a ZIP whose directory alone would exhaust memory ----------------------------------


class _Store:
    """Orthanc's /instances, as far as an upload needs it: counts what it is sent."""

    def __init__(self) -> None:
        self.bodies = 0

    def store_instance(self, body: Any) -> dict[str, Any]:
        self.bodies += 1
        return {"ID": f"i{self.bodies}", "ParentStudy": "s1", "ParentSeries": "se1"}


def _ingest_zip(archive: bytes, limits: UploadLimits) -> tuple[uploads.UploadResult, _Store]:
    store = _Store()
    result = uploads.ingest(
        io.BytesIO(archive),
        UploadKind.ZIP,
        None,
        store=store,
        sink=lambda study: None,
        limits=limits,
    )
    return result, store


def _zip_of_directories(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"d{i:x}/", b"")
    return buffer.getvalue()


def test_bodies_zip_directory_larger_than_the_item_limit_needs_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Directories never count as items, and zipfile holds its whole directory in memory (about
    ten times its size): before the fix, a small archive of empty directories cost the worker
    hundreds of megabytes before any limit applied."""
    limits = UploadLimits(max_bytes=10**9, max_instances=10)
    # 10 items may bring 64 KiB of directory at most; 3,000 directory entries are ~160 KB.
    bomb = _zip_of_directories(3000)
    parsed: list[object] = []
    real_zipfile = zipfile.ZipFile

    def recording_zipfile(*args: Any, **kwargs: Any) -> zipfile.ZipFile:
        parsed.append(args[0])
        return real_zipfile(*args, **kwargs)

    monkeypatch.setattr(uploads.archives.zipfile, "ZipFile", recording_zipfile)
    result, store = _ingest_zip(bomb, limits)
    assert isinstance(result.error, uploads.UploadTooLarge)
    assert "lists more entries" in result.error.message
    assert parsed == [], "the directory was parsed before it was checked"
    assert store.bodies == 0

    # A real archive of the same upload passes the check: 10 instances in nested folders.
    buffer = io.BytesIO()
    with real_zipfile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("DICOM/", b"")
        for i, data in enumerate(make_study(n_instances=10)):
            archive.writestr(f"DICOM/PATIENT/STUDY/SERIES/IM{i:05}", data)
    result, store = _ingest_zip(buffer.getvalue(), limits)
    assert result.error is None
    assert store.bodies == 10


def test_bodies_zip_member_names_are_never_paths_and_nested_archives_stay_packed() -> None:
    """Zip slip and nested bombs: a member named ``../../x`` is stored from memory and only
    reported by name; an archive inside the archive is skipped, never unpacked."""
    (instance,) = make_study(n_instances=1)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("deep.dcm", b"\0" * 1_000_000)  # a million zero bytes, deflated
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("../../../tmp/authsvc-zip-slip.dcm", instance)
        archive.writestr("inner.zip", inner.getvalue())
    result, store = _ingest_zip(outer.getvalue(), UploadLimits(max_bytes=10**9, max_instances=10))
    assert [(i.name, i.status) for i in result.instances] == [
        ("../../../tmp/authsvc-zip-slip.dcm", "stored"),
        ("inner.zip", "skipped"),
    ]
    assert store.bodies == 1


# --- logs: authsvc's own sealed tokens --------------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_secrets_sealed_tokens_are_masked_in_log_lines(purpose: Purpose) -> None:
    """The redacting filter knew JWTs, API keys and ``token=`` pairs, but not a bare upload,
    album read or share token (``up1.…``, ``ar1.…``, ``sh1.…``), e.g. quoted by an exception."""
    ring = KeyRing.from_text(generate_key("review1"))
    token = seal(ring, purpose, {"a": "b"}, now=dt.datetime.now(dt.UTC))
    sealed_part = token.rsplit(".", 1)[1]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger("authsvc.test.review")
    logger.addHandler(handler)
    try:
        logger.warning("could not use %s for the upload", token)
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logger.exception("while opening")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert sealed_part not in text
    assert f"{token.split('.')[0]}.review1.[redacted-token]" in text  # kind and key id stay


# --- admin pages: framing, sniffing, caching ------------------------------------------------------


def test_session_admin_pages_cannot_be_framed_sniffed_or_cached(
    db_app: Flask,
    orthanc: FakeOrthanc,  # noqa: F811 - the fixture imported above
) -> None:
    """Without these headers a page of another site (or of a same-site viewer) could frame an
    album page and trick a manager into clicking "Remove" or "Delete album"; and pages that name
    patients could be kept by a shared cache or the browser's history."""
    client = sign_in(db_app, ALICE)
    anonymous = db_app.test_client()
    responses = {
        "albums page": client.get("/admin/albums"),
        "refused form (no CSRF token)": client.post("/admin/albums", data={"name": "x"}),
        "signed-out page": anonymous.get("/admin/signed-out"),
        "sign-in redirect": anonymous.get("/admin/albums"),
        "browser upload refused (no CSRF token)": client.post(
            "/admin/albums/x1/upload", data={"file": (io.BytesIO(b"x"), "a.dcm")}
        ),
    }
    assert responses["albums page"].status_code == 200
    assert responses["refused form (no CSRF token)"].status_code == 403
    assert responses["browser upload refused (no CSRF token)"].status_code in (403, 404)
    for what, response in responses.items():
        headers = response.headers
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), what
        assert headers.get("X-Frame-Options") == "DENY", what
        assert headers.get("X-Content-Type-Options") == "nosniff", what
        assert headers.get("Referrer-Policy") == "same-origin", what
        assert headers.get("Cache-Control") == "no-store", what


# --- admin pages: where the sign-in returns to, and CSRF on every state-changing route ----------


@pytest.mark.parametrize(
    ("next_value", "location"),
    [
        ("/admin%0d%0aX-Injected:%201", "/admin/"),  # was a 500 (Werkzeug refuses the header)
        ("/admin/albums%0a", "/admin/"),
        ("/admin/../..//evil.test", "/admin/"),  # leaves /admin once the browser resolves it
        ("/admin/%2e%2e/orthanc/", "/admin/"),
        ("//evil.test/admin", "/admin/"),
        ("https://evil.test/admin", "/admin/"),
        ("/%5cevil.test", "/admin/"),
        ("/admin/albums?sort=name", "/admin/albums?sort=name"),  # the control: a local page
    ],
)
def test_session_sign_in_returns_only_to_plain_admin_paths(
    app: Flask,
    mock: Any,  # noqa: F811 - the fixture imported above
    next_value: str,
    location: str,
) -> None:
    client = sign_in(app, ALICE)
    response = client.get(f"/admin/login?next={next_value}")
    assert response.status_code == 302
    assert response.headers["Location"] == location


def test_session_an_idle_sign_in_ends_and_its_row_goes(
    db_app: Flask,
    orthanc: FakeOrthanc,  # noqa: F811 - the fixture imported above
) -> None:
    """An unattended workstation: after ``admin_session_idle_timeout`` (30 min) without a
    request, the next one finds nobody signed in, and the session row is gone (a copy of the
    cookie opens nothing either). Before the fix a sign-in lasted its full 8 hours."""
    from authsvc.extensions import db
    from authsvc.models import AdminSession

    client = sign_in(db_app, ALICE)
    assert client.get("/admin/albums").status_code == 200  # a request: the clock starts
    with client.session_transaction() as session:
        last = session["admin_seen"]
        copied_cookie = dict(session)
    assert isinstance(last, int)
    limit = db_app.extensions["authsvc"].settings.admin_session_idle_timeout
    assert limit == 1800
    with client.session_transaction() as session:
        session["admin_seen"] = last - limit + 60  # idle for 29 minutes: still signed in
    assert client.get("/admin/albums").status_code == 200
    with client.session_transaction() as session:
        assert session["admin_seen"] >= last
        session["admin_seen"] = last - limit - 1  # idle for 30 minutes and a second
    answer = client.get("/admin/albums")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/admin/login")
    with db_app.app_context():
        assert db.session.query(AdminSession).count() == 0
    other = db_app.test_client()
    with other.session_transaction() as session:
        session.update(copied_cookie)
    assert other.get("/admin/albums").status_code == 302


def test_csrf_every_state_changing_admin_route_needs_the_token(
    app: Flask,
    orthanc: FakeOrthanc,  # noqa: F811 - the fixture imported above
) -> None:
    """Not only the forms the pages show: every route under /admin that is not GET/HEAD/OPTIONS
    refuses a request without the session's token, before the view runs."""
    client = sign_in(app, ALICE)
    checked = []
    for rule in app.url_map.iter_rules():
        unsafe = (rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}
        if not rule.rule.startswith("/admin") or not unsafe:
            continue
        path = rule.rule
        for argument, converter in rule._converters.items():
            value = "1" if type(converter).__name__ == "IntegerConverter" else "x1"
            path = path.replace(f"<{argument}>", value)
            path = path.replace(f"<{type(converter).__name__}:{argument}>", value)
            path = path.replace(f"<int:{argument}>", value)
        for method in sorted(unsafe):
            form = {"name": "csrf probe", "file": (io.BytesIO(b"\0" * 128 + b"DICM"), "a.dcm")}
            response = client.open(path, method=method, data=form)
            if rule.endpoint.startswith("admin."):
                # The admin blueprint's before_request refuses before the view runs.
                assert response.status_code == 403, (method, path, response.status_code)
            else:
                # A streaming route of its own (the browser upload) checks the token itself.
                assert response.status_code >= 400, (method, path, response.status_code)
            checked.append((method, rule.rule))
    assert len(checked) >= 18, checked  # every album, token, key, roles and sign-out form
    assert not [call for call in orthanc.calls if call[0] != "GET"]
    with app.app_context():
        from authsvc.extensions import db
        from authsvc.models import Album

        assert db.session.query(Album).count() == 0


# --- policy: read tokens read, whatever the method or the route says ------------------------------

_READ_KINDS = [TokenKind.SHARE_LINK, TokenKind.INSTANT_LINK, TokenKind.ALBUM_READ]


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize(
    "method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", ""]
)
@pytest.mark.parametrize("capability", list(Capability))
def test_confusion_read_tokens_only_ever_read_through_the_gate(
    kind: TokenKind, method: str, capability: Capability
) -> None:
    """The gate path: the client's real method (upper case, as nginx sends it) and the route's
    capability must both be a read; upload tokens never pass; a lower-case or empty method is
    not a read."""
    decision = decide_token_access(kind, method, None, capability=capability)
    expected = kind in _READ_KINDS and method in ("GET", "HEAD") and capability is Capability.READ
    assert bool(decision) is expected, decision.reason


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize("method", ["get", "post", "put", "delete", "GET", "POST", "", "patch"])
@pytest.mark.parametrize("allow_post", [True, False])
def test_confusion_read_tokens_only_ever_read_through_the_plugin(
    kind: TokenKind, method: str, allow_post: bool
) -> None:
    """The plugin path (its lower-case ``method`` field): get, and post only for the plugin's
    own lookup when allowed; nothing for upload tokens or without a method."""
    decision = decide_token_access(kind, None, method, allow_internal_post=allow_post)
    expected = kind in _READ_KINDS and (method == "get" or (method == "post" and allow_post))
    assert bool(decision) is expected, decision.reason
    assert not decide_token_access(kind, None, None)


# --- bodies: credentials that are not ASCII ------------------------------------------------------

_ODD_VALUES = [
    "Basic \xe9\xe9",  # not base64 text: base64 raised a plain ValueError, a 500 before
    "Basic dG9rZW46\xe9",
    "Bearer \xe9",
    "Bearer eyJ\xe9.e30.x",
    "Bearer up1.k\xe9.AAAA",
    "Bearer ask_\xe9",
    "\xe9\xff",
]
_ODD_REQUESTS = [
    ("POST", "/api/albums/a1/uploads"),
    ("POST", "/dicom-web/studies"),
    ("POST", "/dicom-web/albums/a1/studies"),
    ("GET", "/dicom-web/albums/a1/studies"),
    ("GET", "/gate/auth"),
    ("GET", "/api/albums"),
    ("PUT", "/api/orthanc/auth/tokens/stone-viewer-publication"),
    ("POST", "/user/get-profile"),
    ("POST", "/tokens/validate"),
    ("POST", "/admin/albums"),
]


@pytest.mark.parametrize("header", ["Authorization", "token", "api-key", "X-Upload-Token"])
def test_bodies_credentials_that_are_not_ascii_get_a_clean_answer(
    app: Flask,
    orthanc: FakeOrthanc,  # noqa: F811 - the fixture imported above
    header: str,
) -> None:
    """Headers arrive as Latin-1 text: every credential parser must answer 4xx, never 500."""
    client = app.test_client()
    upload_header = app.extensions["authsvc"].settings.upload_token_header
    name = upload_header if header == "X-Upload-Token" else header
    for value in _ODD_VALUES:
        for method, path in _ODD_REQUESTS:
            response = client.open(
                path,
                method=method,
                data=b"\0" * 128 + b"DICM",
                headers={
                    name: value,
                    "Content-Type": "application/dicom",
                    "X-Original-Method": "GET",
                    "X-Original-URI": "/studies/x",
                    "X-CSRF-Token": value,
                },
            )
            assert response.status_code < 500, (name, value, method, path, response.text)
