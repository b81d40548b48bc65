"""Uploading from the album page in Debian's Chromium: real IdP, Orthanc, PostgreSQL, gunicorn.

A contributor signs in and uploads a folder of 300 small instances (two studies) with the
page's script; one batch's answer is cut off after the server stored it (a loopback proxy
forwards the whole request, then breaks the answer), the script sends it again, and Orthanc
ends up with every instance once, each study labelled for the album, the summary saying what
was stored and what was already present. Then a ZIP archive, and files dropped on the page;
then the same page with JavaScript off, where the plain form answers a summary page. Every
claim is read back from Orthanc itself.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from authsvc.credentials.sealing import generate_key
from tests import processes
from tests.dicom_factory import make_study
from tests.integration.test_admin_browser import SCREENSHOTS
from tests.integration.test_admin_browser import sign_in

LABEL = "album-" + uuid.uuid4().hex[:12]
ALBUM = "browser-upload-" + uuid.uuid4().hex[:8]
SUMMARY_WAIT_MS = 120_000


@pytest.fixture(scope="module")
def database_url(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory, idp: processes.IdpService
) -> Iterator[str]:
    """A private PostgreSQL schema with one album in which alice is invited as contributor."""
    from authsvc.extensions import db
    from authsvc.models import Album
    from authsvc.models import AlbumMember

    def seed() -> None:
        db.session.add(
            Album(
                id=ALBUM,
                name="Browser uploads",
                description="",
                label=LABEL,
                server_id="",
                created_by="test",
            )
        )
        db.session.flush()
        db.session.add(
            AlbumMember(
                album_id=ALBUM,
                principal_kind="email",
                principal=idp.users["alice"]["email"],
                role="contributor",
                added_by="test",
            )
        )
        db.session.commit()

    with processes.private_schema(
        postgres_url, "bupload", tmp_path_factory.mktemp("bupload-db"), seed
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
    state = tmp_path_factory.mktemp("bupload-authsvc")
    env = {
        "AUTHSVC_ENV": "testing",
        "AUTHSVC_DATA_DIR": str(state / "data"),
        "AUTHSVC_SECRET_KEY": "insecure-test-secret-key-for-the-browser-upload-test",
        "AUTHSVC_DATABASE_URL": database_url,
        "AUTHSVC_ORTHANC_URL": orthanc.url,
        "AUTHSVC_OIDC_ISSUER": idp.issuer,
        "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
        "AUTHSVC_ADMIN_CLIENT_SECRET": idp.clients["authsvc"]["secret"],
        "AUTHSVC_ADMIN_COOKIE_SECURE": "false",  # plain HTTP on loopback in this test
        "AUTHSVC_ADMIN_ROLES": "admin",
        "AUTHSVC_UPLOAD_TOKEN_KEYS": generate_key("bupload"),
        "AUTHSVC_LOG_LEVEL": "info",
    }
    server = processes.start_gunicorn_app(state, processes.free_port(), env)
    with server:
        yield server


class CuttingProxy:
    """A loopback TCP proxy in front of authsvc that cuts off the answer of one upload.

    Every byte of every request reaches authsvc; for the ``cut``-th upload request the answer
    is replaced by the start of a response that never ends (the browser sees a broken
    connection, as when a network drops, and cannot resend it silently), so the server has
    stored that batch and the browser does not know it.
    """

    def __init__(self, upstream_port: int, cut: int) -> None:
        self._upstream = upstream_port
        self._cut = cut
        self._marker = f"POST /admin/albums/{ALBUM}/upload ".encode()
        self._lock = threading.Lock()
        self.uploads = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=120)
            doomed = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, doomed), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(upstream, client, doomed), daemon=True
            ).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, doomed: Any) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(self._marker):
                    with self._lock:
                        self.uploads += 1
                        if self.uploads == self._cut:
                            doomed.set()
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, doomed: Any) -> None:
        try:
            while data := upstream.recv(65536):
                if doomed.is_set():
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def cutter(authsvc_server: processes.Service) -> Iterator[CuttingProxy]:
    """The cutting proxy, cutting the third upload's answer."""
    proxy = CuttingProxy(int(authsvc_server.url.rsplit(":", 1)[1]), cut=3)
    try:
        yield proxy
    finally:
        proxy.close()


def write_study(folder: Path, instances: list[bytes]) -> str:
    """Write a study's instances as files of a folder; return its StudyInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(instances):
        (folder / f"IM{index:05d}").write_bytes(data)
    return str(pydicom.dcmread(io.BytesIO(instances[0])).StudyInstanceUID)


def orthanc_study(orthanc: processes.OrthancService, uid: str) -> dict[str, Any]:
    """Return what Orthanc holds of a study: its instance ids and labels."""
    found = requests.post(f"{orthanc.url}/tools/lookup", data=uid, timeout=10).json()
    studies = [f["ID"] for f in found if f["Type"] == "Study"]
    assert len(studies) == 1, found
    study_id = studies[0]
    instances = requests.get(f"{orthanc.url}/studies/{study_id}/instances", timeout=30).json()
    labels = requests.get(f"{orthanc.url}/studies/{study_id}/labels", timeout=10).json()
    return {"instances": [i["ID"] for i in instances], "labels": labels}


def summary_text(page: Any, expected: str) -> str:
    """Wait until the page's upload summary shows ``expected``; return the summary's text."""
    page.wait_for_function(
        "text => { const s = document.getElementById('upload-summary');"
        " return s && !s.hidden && s.innerText.includes(text); }",
        arg=expected,
        timeout=SUMMARY_WAIT_MS,
    )
    return str(page.locator("#upload-summary").inner_text())


def test_folder_and_zip_upload_survive_a_cut_connection(
    authsvc_server: processes.Service,
    cutter: CuttingProxy,
    idp: processes.IdpService,
    orthanc: processes.OrthancService,
    chromium_browser: Any,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "export"
    first = write_study(folder / "CT", make_study(n_series=2, n_instances=100))
    second = write_study(folder / "MR", make_study(n_series=1, n_instances=100, modality="MR"))

    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        # Through the cutting proxy from the start: the session cookie is the proxy origin's.
        sign_in(page, cutter.url, "alice", idp.users["alice"]["password"])
        page.goto(f"{cutter.url}/admin/albums/{ALBUM}")
        assert page.locator("#upload-folder").is_visible()  # the script shows the folder input

        # The third batch reaches authsvc (and is stored), but its answer is cut off.
        page.goto(f"{cutter.url}/admin/albums/{ALBUM}")
        page.set_input_files("#upload-folder", str(folder))
        text = summary_text(page, "refused")
        assert "250 stored, 50 already present, 0 refused, in 2 studies." in text, text
        assert cutter.uploads == 7  # six batches of 50, one of them twice
        assert first in text and second in text
        assert "Done: " in page.locator("#upload-overall-text").inner_text()
        bars = page.locator("#upload-studies progress")
        assert bars.count() == 2
        for i in range(2):
            assert bars.nth(i).get_attribute("value") == bars.nth(i).get_attribute("max")
        # The upload section for the README (docs/screenshots with UPDATE_SCREENSHOTS=1).
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        picture = SCREENSHOTS / "album-upload.png"
        page.locator("#upload").screenshot(path=str(picture))
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        ct, mr = orthanc_study(orthanc, first), orthanc_study(orthanc, second)
        assert len(ct["instances"]) == 200 and len(mr["instances"]) == 100  # nothing twice
        assert LABEL in ct["labels"] and LABEL in mr["labels"]

        # A ZIP archive (a CD export: DICOM files and a README), chosen with the files input.
        archive = tmp_path / "cd-export.zip"
        zipped = make_study(n_series=1, n_instances=20, modality="US")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            for index, data in enumerate(zipped):
                out.writestr(f"DICOM/IM{index:03d}", data)
            out.writestr("README.TXT", "Burned by the CD writer.")
        page.set_input_files("#upload-files", str(archive))
        page.click("#upload-submit")
        text = summary_text(page, "20 stored")
        assert "20 stored, 0 already present, 0 refused, 1 skipped, in 1 study." in text, text
        us_uid = str(pydicom.dcmread(io.BytesIO(zipped[0])).StudyInstanceUID)
        us = orthanc_study(orthanc, us_uid)
        assert len(us["instances"]) == 20 and LABEL in us["labels"]

        # Files dropped on the section (a synthetic drop: Playwright cannot drag from the
        # desktop; Chromium gives such items no file-system entry, so the script takes the
        # DataTransfer's files, as it does for files dragged from a mail attachment).
        dropped = make_study(n_series=1, n_instances=3, modality="XA")
        transfer = page.evaluate_handle(
            "files => { const dt = new DataTransfer();"
            " for (const f of files) dt.items.add(new File([new Uint8Array(f.bytes)], f.name));"
            " return dt; }",
            [{"name": f"XA{i}.dcm", "bytes": list(data)} for i, data in enumerate(dropped)],
        )
        page.dispatch_event("#upload-drop", "drop", {"dataTransfer": transfer})
        text = summary_text(page, "3 stored")
        assert "3 stored, 0 already present, 0 refused, in 1 study." in text, text
        xa_uid = str(pydicom.dcmread(io.BytesIO(dropped[0])).StudyInstanceUID)
        assert LABEL in orthanc_study(orthanc, xa_uid)["labels"]

        # The album's page lists the four studies now.
        page.click("#upload-reload")
        assert "(4)" in page.locator("#studies-title").inner_text()
    finally:
        context.close()


def test_with_javascript_off_the_form_answers_a_summary_page(
    authsvc_server: processes.Service,
    idp: processes.IdpService,
    orthanc: processes.OrthancService,
    chromium_browser: Any,
    tmp_path: Path,
) -> None:
    base = authsvc_server.url
    instances = make_study(n_series=1, n_instances=10, modality="CR")
    uid = write_study(tmp_path / "cr", instances)
    (tmp_path / "cr" / "notes.txt").write_text("not an image")
    files = sorted(str(p) for p in (tmp_path / "cr").iterdir())

    context = chromium_browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, base, "alice", idp.users["alice"]["password"])
        page.goto(f"{base}/admin/albums/{ALBUM}")
        assert not page.locator("#upload-folder").is_visible()  # needs the script
        page.set_input_files("#upload-files", files)
        page.click("#upload-submit")
        page.wait_for_url(re.compile(rf".*/admin/albums/{ALBUM}/upload$"))
        counts = page.locator("#upload-counts").inner_text()
        assert "10 stored, 0 already present, 1 refused, in 1 study." in counts, counts
        assert uid in page.locator("#upload-studies").inner_text()
        assert "notes.txt: Not a DICOM file" in page.locator("#upload-refused").inner_text()
    finally:
        context.close()
    held = orthanc_study(orthanc, uid)
    assert len(held["instances"]) == 10 and LABEL in held["labels"]
