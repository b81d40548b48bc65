"""The admin pages in Debian's Chromium, against the real OIDC provider, Orthanc and PostgreSQL,
with authsvc under a real gunicorn.

One scenario, as an imaging specialist would live it: sign in (a typo first), create an album,
add a study, invite a colleague by e-mail who then signs in and sees it (without any management
button, and a forged POST refused), hand out an upload token that a script uses, revoke it,
and sign out. The run takes screenshots of the main pages; with UPDATE_SCREENSHOTS=1 it writes
them to docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from authsvc.credentials.sealing import generate_key
from tests import processes
from tests.dicom_factory import make_study

REPO = Path(__file__).resolve().parents[2]
# The README's pictures are rewritten only when asked (UPDATE_SCREENSHOTS=1): every run takes
# them, but fresh tokens, ports and times would otherwise change the PNGs in everyone's tree.
SCREENSHOTS = (
    REPO / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "authsvc-admin-screenshots"
)


@pytest.fixture(scope="module")
def database_url(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL schema for this module, built from schema.sql."""
    with processes.private_schema(
        postgres_url, "admin", tmp_path_factory.mktemp("admin-db")
    ) as url:
        yield url


@pytest.fixture(scope="module")
def authsvc_server(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    idp: processes.IdpService,
    orthanc: processes.OrthancService,
) -> Iterator[processes.Service]:
    """authsvc under gunicorn, signing people in at the test OIDC provider."""
    state = tmp_path_factory.mktemp("admin-authsvc")
    env = {
        "AUTHSVC_ENV": "testing",
        "AUTHSVC_DATA_DIR": str(state / "data"),
        "AUTHSVC_SECRET_KEY": "insecure-test-secret-key-for-the-admin-browser-test",
        "AUTHSVC_DATABASE_URL": database_url,
        "AUTHSVC_ORTHANC_URL": orthanc.url,
        "AUTHSVC_OIDC_ISSUER": idp.issuer,
        "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
        "AUTHSVC_ADMIN_CLIENT_SECRET": idp.clients["authsvc"]["secret"],
        # Plain HTTP on loopback in this test; production keeps the default (Secure cookies).
        "AUTHSVC_ADMIN_COOKIE_SECURE": "false",
        "AUTHSVC_ADMIN_ROLES": "admin",
        "AUTHSVC_UPLOAD_TOKEN_KEYS": generate_key("admintest"),
        "AUTHSVC_STUDY_VIEWERS": '[{"name": "Stone viewer", "url": "'
        + orthanc.url
        + '/stone-webviewer/index.html?study={StudyInstanceUID}"}]',
        "AUTHSVC_LOG_LEVEL": "info",
    }
    server = processes.start_gunicorn_app(state, processes.free_port(), env)
    with server:
        yield server


@pytest.fixture
def browser_context(chromium_browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) at a laptop-sized window."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield context
    finally:
        context.close()


def shot(page: Any, name: str) -> None:
    """Save a screenshot of the whole page for the README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def sign_in(page: Any, base: str, username: str, password: str) -> None:
    """Go to the admin pages and sign in through the provider's form."""
    page.goto(f"{base}/admin/")
    page.wait_for_selector("#kc-form-login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#kc-login")
    page.wait_for_url(re.compile(r".*/admin/albums.*"))


def notice(page: Any) -> str:
    """Return the confirmation or error shown at the top of the page."""
    return str(page.locator(".notice").first.inner_text())


def upload_study(base: str, album_id: str, token: str, files: list[bytes]) -> requests.Response:
    """Send DICOM files into the album with an upload token, as a script would."""
    return requests.post(
        f"{base}/api/albums/{album_id}/uploads",
        headers={"Authorization": f"Bearer {token}"},
        files=[("file", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)],
        timeout=60,
    )


def test_an_album_from_creation_to_sign_out(
    authsvc_server: processes.Service,
    idp: processes.IdpService,
    orthanc: processes.OrthancService,
    chromium_browser: Any,
    browser_context: Any,
) -> None:
    base = authsvc_server.url
    bob = idp.users["bob"]  # an administrator
    alice = idp.users["alice"]  # a colleague, no global rights

    # A study already in the archive (sent by a modality, say).
    first = make_study(
        n_series=1, n_instances=2, patient_name="Lund^Maria", study_description="CT chest"
    )
    for data in first:
        requests.post(f"{orthanc.url}/instances", data=data, timeout=30).raise_for_status()
    first_uid = str(pydicom.dcmread(io.BytesIO(first[0])).StudyInstanceUID)

    page = browser_context.new_page()

    # 1. Sign in: a typo first, then the right password.
    page.goto(f"{base}/admin/")
    page.wait_for_selector("#kc-form-login")
    page.fill("#username", "bob")
    page.fill("#password", "not-his-password")
    page.click("#kc-login")
    assert "Invalid username or password" in page.locator("#input-error").inner_text()
    page.fill("#password", bob["password"])
    page.click("#kc-login")
    page.wait_for_url(re.compile(r".*/admin/albums$"))
    assert "Bob" in page.locator(".who").inner_text()

    # 2. Create an album.
    page.fill("#album-name", "Lung CT follow-up")
    page.fill("#album-description", "Patients of the 2026 follow-up study")
    page.click("#create-album")
    page.wait_for_url(re.compile(r".*/admin/albums/[\w-]+$"))
    assert "created" in notice(page)
    album_id = page.url.rsplit("/", 1)[1]

    # 3. Add a study by pasting its UID (plus one that does not exist).
    page.fill("#uids", f"{first_uid}\n1.2.3.999999")
    page.click("#add-studies")
    page.wait_for_selector(".notice")
    assert "1 study added" in notice(page)
    assert "1 not found" in notice(page)
    studies = page.locator("#studies").inner_text()
    assert "Lund, Maria" in studies and "CT chest" in studies
    assert page.locator("#studies a", has_text="Stone viewer").count() == 1
    labels = requests.get(
        f"{orthanc.url}/studies/{_orthanc_id(orthanc, first_uid)}/labels", timeout=10
    ).json()
    assert any(label.startswith("album-") for label in labels)

    # 3b. Or pick one from a search of the archive (Orthanc's own wildcard matching).
    for data in make_study(n_instances=1, patient_name="Nilsson^Eva", study_description="CT neck"):
        requests.post(f"{orthanc.url}/instances", data=data, timeout=30).raise_for_status()
    page.click("#pick-link")
    page.fill("#q", "nilss")
    page.click("button:has-text('Search')")
    page.wait_for_selector("#found")
    found = page.locator("#found").inner_text()
    assert "Nilsson, Eva" in found and "Lund" not in found
    page.check("#found input[type=checkbox]")
    page.click("#add-picked")
    page.wait_for_selector(".notice")
    assert "1 study added" in notice(page)
    assert "Nilsson, Eva" in page.locator("#studies").inner_text()

    # 4. Invite a colleague by e-mail, as a viewer.
    page.select_option("#invite-how", "email")
    page.fill("#invite-who", alice["email"])
    page.select_option("#invite-role", "viewer")
    page.click("#invite")
    page.wait_for_selector(".notice")
    assert "Invitation for" in notice(page)
    shot(page, "album")

    # 5. An upload token, shown once with examples; a script uses it; the study appears.
    page.click("#sharing-link")
    page.select_option("#upload-expires", "3600")
    page.fill("#upload-note", "CT scanner room 2")
    page.click("#create-upload-token")
    page.wait_for_selector("#upload-token-value")
    token = page.input_value("#upload-token-value")
    assert token and f"Bearer {token}" in page.locator("#example-curl").inner_text()
    shot(page, "upload-token")
    second = make_study(
        n_series=1, n_instances=3, patient_name="Berg^Anders", study_description="CT abdomen"
    )
    uploaded = upload_study(base, album_id, token, second)
    assert uploaded.status_code == 200, uploaded.text
    page.goto(f"{base}/admin/albums/{album_id}")
    assert "Berg, Anders" in page.locator("#studies").inner_text()

    # 6. Revoke the token: the next upload is refused.
    page.goto(f"{base}/admin/albums/{album_id}/sharing")
    assert "CT scanner room 2" in page.locator("#upload-tokens").inner_text()
    page.locator("#upload-tokens button", has_text="Revoke").click()
    page.wait_for_selector(".notice")
    assert "revoked" in notice(page)
    shot(page, "sharing")
    refused = upload_study(base, album_id, token, make_study(n_instances=1))
    assert refused.status_code == 401

    # 7. Administrator pages.
    page.goto(f"{base}/admin/status")
    assert page.locator("table").inner_text().count("working") >= 3  # database, Orthanc, OIDC
    shot(page, "status")
    page.goto(f"{base}/admin/audit")
    trail = page.locator("table").inner_text()
    assert "album:create" in trail and "token:upload:revoke" in trail
    shot(page, "audit")
    page.goto(f"{base}/admin/roles")
    page.click("#edit-roles")
    page.fill("input[name=new-role]", "doctor")
    for permission in ("view", "download", "share"):
        page.check(f"input[name=perm-new][value={permission}]")
    page.fill("input[name=labels-new]", "cardiology, oncology")
    page.fill("#group-roles", "radiology: doctor")
    page.click("#save-roles")
    page.wait_for_selector(".notice")
    assert "saved" in notice(page)
    assert "cardiology, oncology" in page.locator("#roles-grid").inner_text()
    plugin_view = requests.get(f"{base}/settings/roles", timeout=10)
    if plugin_view.status_code == 200:  # the plugin's own endpoint needs its Basic password
        assert plugin_view.json()["roles"]["doctor"]["permissions"] == ["download", "share", "view"]
    shot(page, "roles")
    page.goto(f"{base}/admin/api-keys")
    page.fill("#key-name", "nightly export script")
    page.click("#create-api-key")
    page.wait_for_selector("#api-key-value")
    api_key = page.input_value("#api-key-value")
    shot(page, "api-keys")
    mine = requests.get(
        f"{base}/api/albums", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    )
    assert mine.status_code == 200, mine.text
    assert album_id in mine.text
    page.goto(f"{base}/admin/albums")
    shot(page, "albums")

    # 8. The colleague signs in (another browser) and sees the album, read-only.
    colleague = chromium_browser.new_context(viewport={"width": 1024, "height": 768})
    try:
        other = colleague.new_page()
        sign_in(other, base, "alice", alice["password"])
        assert "Lung CT follow-up" in other.locator("#albums").inner_text()
        other.click("text=Lung CT follow-up")
        other.wait_for_url(re.compile(rf".*/admin/albums/{album_id}$"))
        assert "Lund, Maria" in other.locator("#studies").inner_text()
        for control in (
            "#add-studies",
            "#invite",
            "#delete-album",
            "#sharing-link",
            "#remove-studies",
        ):
            assert other.locator(control).count() == 0, control
        assert other.locator("text=Roles & permissions").count() == 0
        shot(other, "album-viewer")
        # A forged management POST (with her valid CSRF token) is refused by the server.
        csrf = other.locator("input[name=csrf_token]").first.get_attribute("value")
        forged = other.request.post(
            f"{base}/admin/albums/{album_id}/members/invite",
            form={
                "csrf_token": csrf,
                "how": "email",
                "who": "mallory@example.test",
                "role": "owner",
            },
            max_redirects=0,
        )
        assert forged.status == 403
        # A POST without the CSRF token is refused too, before anything else runs.
        no_csrf = other.request.post(
            f"{base}/admin/albums/{album_id}/leave", form={}, max_redirects=0
        )
        assert no_csrf.status == 403
        assert "did not come from this site" in no_csrf.text()
        other.reload()
        assert (
            "Alice" in other.locator("#members").inner_text()
            or other.locator("#members").inner_text().count("viewer") >= 1
        )
        admin_only = other.request.get(f"{base}/admin/audit", max_redirects=0)
        assert admin_only.status == 403
    finally:
        colleague.close()

    # 9. Sign out: the session ends here and at the provider.
    page.goto(f"{base}/admin/albums")
    page.click("#sign-out")
    page.wait_for_url(re.compile(r".*/admin/signed-out(\?.*)?$"))
    assert "You are signed out" in page.locator("h1").inner_text()
    shot(page, "signed-out")
    page.goto(f"{base}/admin/albums")
    page.wait_for_selector("#kc-form-login")  # asked for a password again, not let in
    still_out = page.request.get(f"{base}/admin/albums", max_redirects=0)
    assert still_out.status == 302


def _orthanc_id(orthanc: processes.OrthancService, uid: str) -> str:
    found = requests.post(f"{orthanc.url}/tools/lookup", data=uid, timeout=10).json()
    return str(found[0]["ID"])


def test_sign_in_page_screenshot(authsvc_server: processes.Service, browser_context: Any) -> None:
    """The first thing a user sees: the provider's sign-in form, reached from /admin/."""
    page = browser_context.new_page()
    page.goto(f"{authsvc_server.url}/admin/")
    page.wait_for_selector("#kc-form-login")
    assert "/protocol/openid-connect/" in page.url or "/login-actions/" in page.url
    shot(page, "sign-in")
