"""OHIF 3 (the real ``@ohif/app`` 3.13 build) in Chromium, through each way authsvc serves it.

The viewer is served by its own nginx (tests/integration/ohif_site.py) at the root of one
origin, which proxies DICOMweb and the API to the stack under test, so the browser talks to one
origin. Each scenario checks what a person would: the study list shows exactly the album's
studies, a study opens and its image is drawn (pixels read back from OHIF's viewport canvas), a
study of another album never appears.

Scenarios (one stack for the first three: authsvc under gunicorn, nginx/gate.conf.template in
front of a stock Orthanc, the test IdP):

* an album's own DICOMweb root with a member's Keycloak token and with an album read token;
* the album page's OHIF link, clicked after signing in, with config/ohif/app-config.js served
  as OHIF's configuration;
* the gate: its listing refused, so the study list comes from the album root; a study opened
  with everything through the gate from the stock Orthanc; a revoked read token stops opening
  studies within gate_cache_seconds. This run also records OHIF's DICOMweb session
  (bench/ohif_session.json with UPDATE_OHIF_SESSION=1, replayed by ``bench/gate.py --ohif``);
* an OHIF share link made through the real plugin's ``PUT /tokens/ohif-viewer-publication``
  (tests/integration/plugin_stack.py), opened anonymously.

The member's Keycloak token reaches OHIF as a header the browser context adds: it stands in for
OHIF's own OIDC sign-in, which is not exercised here. Screenshots go to docs/screenshots with
UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest
import requests

from authsvc import albums
from authsvc.app import create_app
from authsvc.credentials.sealing import generate_key
from authsvc.database import init_db
from authsvc.extensions import db
from authsvc.policy import Actor
from authsvc.services import services
from tests import deploy_kit
from tests import processes
from tests.dicom_factory import make_study
from tests.integration import ohif_site
from tests.integration import plugin_stack

INSECURE_SECRET = "insecure-ohif-test-secret-key-0123456789abcdef"
#: How long the gate's nginx may reuse a "yes" (docs/gate.md: revocations take up to this long).
GATE_CACHE_SECONDS = 2
#: Slack on top of every bound, for a loaded 2-core machine.
SLACK = 5.0
#: How long OHIF may take to show a list or draw an image on this machine.
UI_TIMEOUT_MS = 60_000
IMAGE_SIZE = 128
#: Slices of the study whose DICOMweb session is recorded for bench/gate.py.
SESSION_INSTANCES = 40
REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "config" / "ohif" / "app-config.js"
SCREENSHOTS = REPO / "docs" / "screenshots"


@dataclass
class Study:
    """One study stored in Orthanc for these tests."""

    id: str
    uid: str
    description: str


@dataclass
class Stack:
    """authsvc, the gate's nginx, the stock Orthanc, the IdP, and OHIF's site in front."""

    gate: str  # the gate's nginx
    site: ohif_site.OhifSite
    orthanc: processes.OrthancService
    idp: processes.IdpService
    album_a: str
    album_b: str
    studies: dict[str, Study]
    tokens: dict[str, str]
    requests_seen: list[dict[str, Any]] = field(default_factory=list)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def read_token(self, album: str) -> tuple[str, str]:
        """Create an album read token as alice (manager); return (id, token)."""
        created = requests.post(
            f"{self.gate}/api/albums/{album}/read-tokens",
            json={"lifetime": 3600, "note": "OHIF test"},
            headers=self.auth("alice"),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        return created.json()["id"], created.json()["token"]


def _store(orthanc: processes.OrthancService, description: str, n_instances: int = 3) -> Study:
    instances = make_study(
        n_series=1, n_instances=n_instances, study_description=description, size=IMAGE_SIZE
    )
    answer: dict[str, Any] = {}
    for blob in instances:
        stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
        stored.raise_for_status()
        answer = stored.json()
    ds = pydicom.dcmread(io.BytesIO(instances[-1]))
    return Study(answer["ParentStudy"], str(ds.StudyInstanceUID), description)


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


def _until(check: Callable[[], bool], limit: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"{what}: not seen within {limit:.1f}s"
        time.sleep(0.25)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: processes.OrthancService,
    idp: processes.IdpService,
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("ohif")
    authsvc_port, gate_port, site_port = (processes.free_port() for _ in range(3))
    settings = {
        "env": "testing",
        "data_dir": str(state / "data"),
        "secret_key": INSECURE_SECRET,
        "orthanc_url": orthanc.url,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": "authsvc",
        "admin_roles": "admin",
        "upload_token_keys": generate_key("it"),
        # Two nginx in front (OHIF's site, then the gate's).
        "proxy_count": "2",
        "gate_cache_seconds": str(GATE_CACHE_SECONDS),
        "threads": "4",
        # The admin pages (the album page's OHIF link), signed in at the test IdP over HTTP.
        "admin_client_secret": idp.clients["authsvc"]["secret"],
        "admin_cookie_secure": "false",
        "public_ohif_root": f"http://127.0.0.1:{site_port}/",
    }
    app = create_app(settings)
    with app.app_context():
        init_db(db.engine)
    server = processes.start_gunicorn_app(
        state / "authsvc",
        authsvc_port,
        {f"AUTHSVC_{key.upper()}": value for key, value in settings.items()},
    )
    gate = deploy_kit.start_nginx_templates(
        state / "gate",
        gate_port,
        {
            "gate.conf.template": {
                "GATE_LISTEN": f"127.0.0.1:{gate_port}",
                "SERVER_NAME": "_",
                "AUTHSVC_UPSTREAM": f"127.0.0.1:{authsvc_port}",
                "ORTHANC_UPSTREAM": f"127.0.0.1:{orthanc.port}",
                "KEYCLOAK_UPSTREAM": f"127.0.0.1:{idp.port}",
            }
        },
        ready_path="/app/explorer.html",
    )
    gate_url = f"http://127.0.0.1:{gate_port}"
    site = ohif_site.start_ohif_site(
        state / "site",
        site_port,
        "/dicom-web",
        {"/dicom-web/": gate_url, "/api/": gate_url, "/admin": gate_url, "/static/": gate_url},
    )
    tokens = {u: idp.password_token(u)["access_token"] for u in ("alice", "bob", "carol")}
    studies = {
        "A1": _store(orthanc, "OHIF album A one"),
        # The study whose session bench/gate.py replays: a CT-like stack of slices.
        "A2": _store(orthanc, "OHIF album A two", SESSION_INSTANCES),
        "B": _store(orthanc, "OHIF album B only"),
    }
    with app.app_context():
        admin = albums.Caller(Actor(_subject(tokens["bob"]), is_global_admin=True))
        album_a = albums.create_album(services().archive, admin, "OHIF album A").album.id
        album_b = albums.create_album(services().archive, admin, "OHIF album B").album.id
        albums.add_studies(services().archive, admin, album_a, [studies["A1"].id, studies["A2"].id])
        albums.add_studies(services().archive, admin, album_b, [studies["B"].id])
        albums.invite_member(admin, album_a, "user", _subject(tokens["carol"]), "viewer")
        albums.invite_member(admin, album_a, "user", _subject(tokens["alice"]), "manager")
    try:
        yield Stack(gate_url, site, orthanc, idp, album_a, album_b, studies, tokens)
    finally:
        site.stop()
        gate.stop()
        server.stop()
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def context(chromium_browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies, no storage) per test."""
    ctx = chromium_browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@dataclass
class Page:
    """A browser page, and what it logged and asked for (for assertions and failure reports)."""

    page: Any
    log: list[str] = field(default_factory=list)
    dicomweb: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def goto(self, url: str) -> None:
        self.started = time.monotonic()
        self.page.goto(url)

    def statuses(self, fragment: str) -> list[int]:
        """Return the HTTP statuses of the DICOMweb answers whose URL contains ``fragment``."""
        return [r["status"] for r in self.dicomweb if fragment in r["url"] and "status" in r]

    def report(self) -> str:
        lines = [*self.log[-30:]]
        lines += [f"{r.get('status')} {r['method']} {r['url'][:160]}" for r in self.dicomweb[-30:]]
        return "\n".join(lines)


def _open(context: Any) -> Page:
    """Open a page that records its console and every DICOMweb request and answer."""
    page = Page(context.new_page())

    def requested(request: Any) -> None:
        if "/dicom-web/" in request.url:
            page.dicomweb.append(
                {
                    "method": request.method,
                    "url": request.url,
                    "t": round(time.monotonic() - page.started, 4),
                    "request": request,
                }
            )

    def answered(response: Any) -> None:
        for entry in page.dicomweb:
            if entry["request"] is response.request:
                entry["status"] = response.status

    def finished(request: Any) -> None:
        for entry in page.dicomweb:
            if entry["request"] is request:
                entry["end"] = round(time.monotonic() - page.started, 4)

    page.page.on("console", lambda m: page.log.append(f"console {m.type}: {m.text[:300]}"))
    page.page.on("request", requested)
    page.page.on("response", answered)
    page.page.on("requestfinished", finished)
    page.page.on("requestfailed", finished)
    return page


def _study_list(page: Page, stack: Stack) -> set[str]:
    """Return which of the stack's studies OHIF's study list shows (by description)."""
    try:
        page.page.get_by_text(stack.studies["A1"].description).first.wait_for()
    except Exception as exc:
        raise AssertionError(f"no study list:\n{page.report()}") from exc
    return _listed(page, stack)


def _listed(page: Page, stack: Stack) -> set[str]:
    """Return which of the stack's studies the page shows right now (by description)."""
    text = page.page.locator("body").inner_text()
    return {name for name, study in stack.studies.items() if study.description in text}


def _wait_rendered(page: Page) -> dict[str, Any]:
    """Wait until OHIF's viewport shows an image; return the canvas statistics."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    stats = None
    while time.monotonic() < deadline:
        stats = ohif_site.canvas_stats(page.page)
        if ohif_site.rendered(stats):
            return stats  # type: ignore[return-value]
        page.page.wait_for_timeout(250)
    raise AssertionError(f"OHIF drew no image; canvas: {stats}\n{page.report()}")


def _refused(page: Page, study_uid: str, statuses: set[int]) -> None:
    """Wait until OHIF's first request below ``studies/<uid>`` came back refused (one of
    ``statuses``); check that no request below it succeeded and that no image shows."""
    fragment = f"/studies/{study_uid}"
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while not set(page.statuses(fragment)) & statuses:
        assert time.monotonic() < deadline, f"no refusal for {fragment}:\n{page.report()}"
        page.page.wait_for_timeout(250)
    assert not any(s == 200 for s in page.statuses(fragment)), page.report()
    assert not ohif_site.rendered(ohif_site.canvas_stats(page.page)), page.report()


def _opens(context: Any, url: str, study_uid: str) -> bool:
    """Open ``url`` in a new page: True once OHIF draws the image, False once a request below
    ``studies/<uid>`` is refused (401, 403 or 404)."""
    attempt = _open(context)
    attempt.goto(url)
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    try:
        while time.monotonic() < deadline:
            if {401, 403, 404} & set(attempt.statuses(f"/studies/{study_uid}")):
                return False
            if ohif_site.rendered(ohif_site.canvas_stats(attempt.page)):
                return True
            attempt.page.wait_for_timeout(250)
        raise AssertionError(f"neither an image nor a refusal:\n{attempt.report()}")
    finally:
        attempt.page.close()


_UID_PATH = re.compile(r"/studies/([0-9.]+)(?:/series/([0-9.]+))?(?:/instances/([0-9.]+))?")


def _save_session(page: Page, study_uid: str) -> None:
    """Write the DICOMweb requests OHIF made to open one study (bench/gate.py replays them).

    UIDs become placeholders (``{study}``, ``{series0}``, ``{instance0}``… in order of first
    use), the credential is left out. Written to bench/ohif_session.json with
    UPDATE_OHIF_SESSION=1, else to the temp directory (so the code always runs).
    """
    names: dict[str, str] = {study_uid: "{study}"}
    counts = {"series": 0, "instance": 0}
    recorded = []
    for entry in sorted(page.dicomweb, key=lambda e: e["t"]):
        split = urlsplit(entry["url"])
        path = split.path
        for match in _UID_PATH.finditer(path):
            for kind, uid in (("series", match.group(2)), ("instance", match.group(3))):
                if uid and uid not in names:
                    names[uid] = f"{{{kind}{counts[kind]}}}"
                    counts[kind] += 1
        query = "&".join(
            re.sub(r"^(00100020|PatientID)=.*", r"\1={patient}", f)
            for f in split.query.split("&")
            if f and not f.startswith("token=")
        )
        for uid, name in sorted(names.items(), key=lambda item: -len(item[0])):
            path = path.replace(uid, name)
            query = query.replace(uid, name)
        recorded.append(
            {
                "method": entry["method"],
                "path": path,
                "query": query,
                "accept": entry["request"].headers.get("accept", ""),
                "start": entry["t"],
                "end": entry.get("end", entry["t"]),
                "status": entry.get("status"),
            }
        )
    fixture = {
        "what": "the DICOMweb requests OHIF made to open one album study through the gate",
        "recorded_by": "tests/integration/test_ohif.py (UPDATE_OHIF_SESSION=1)",
        "ohif": ohif_site.OHIF_VERSION,
        "study": {
            "series": counts["series"],
            "instances": counts["instance"],
            "size": IMAGE_SIZE,
        },
        "requests": recorded,
    }
    target = (
        REPO / "bench" / "ohif_session.json"
        if os.environ.get("UPDATE_OHIF_SESSION") == "1"
        else Path(tempfile.gettempdir()) / "authsvc-ohif-session.json"
    )
    target.write_text(json.dumps(fixture, indent=2) + "\n")
    assert counts["instance"] >= 1 and any("/frames/" in r["path"] for r in recorded)


def _dismiss_tour(page: Page) -> None:
    """Close OHIF's first-visit tour, so screenshots show the image."""
    skip = page.page.get_by_text("Skip all")
    if skip.count():
        skip.first.click()


def _shot(page: Page, name: str) -> None:
    """Save a screenshot for the README when UPDATE_SCREENSHOTS=1."""
    if ohif_site.screenshots_wanted():
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        _dismiss_tour(page)
        page.page.wait_for_timeout(500)
        page.page.screenshot(path=str(SCREENSHOTS / name))


# --- album DICOMweb ----------------------------------------------------------------------------


def test_member_sees_the_album_in_the_study_list_and_opens_a_study(
    stack: Stack, context: Any
) -> None:
    stack.site.configure(f"/dicom-web/albums/{stack.album_a}")
    # Stands in for OHIF's own OIDC sign-in: the member's Keycloak token on every request.
    context.set_extra_http_headers(stack.auth("carol"))
    page = _open(context)
    page.goto(f"{stack.site.url}/")
    assert _study_list(page, stack) == {"A1", "A2"}
    page.page.get_by_text("OHIF album A two").first.wait_for()
    _shot(page, "ohif-study-list.png")

    a1 = stack.studies["A1"]
    page.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={a1.uid}")
    stats = _wait_rendered(page)
    assert stats["width"] >= 200 and stats["height"] >= 200
    # Every DICOMweb call went to the album root and was answered.
    assert page.dicomweb and all(
        f"/dicom-web/albums/{stack.album_a}/" in r["url"] for r in page.dicomweb
    )
    assert all(r.get("status") in (200, 204, None) for r in page.dicomweb), page.report()
    _shot(page, "ohif-album-study.png")


def test_member_of_another_album_sees_nothing_of_this_one(stack: Stack, context: Any) -> None:
    # carol is no member of album B: its root does not exist for her, and A's study is not B's.
    stack.site.configure(f"/dicom-web/albums/{stack.album_b}")
    context.set_extra_http_headers(stack.auth("carol"))
    page = _open(context)
    page.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={stack.studies['B'].uid}")
    _refused(page, stack.studies["B"].uid, {404})


def test_read_token_opens_its_album_and_nothing_else(stack: Stack, context: Any) -> None:
    _, token = stack.read_token(stack.album_a)
    stack.site.configure(f"/dicom-web/albums/{stack.album_a}")
    # The study list with the token as a header; the viewer with OHIF's own ?token=.
    listing = context.new_page()
    listing.set_extra_http_headers({"Authorization": f"Bearer {token}"})
    listed = Page(listing)
    listed.goto(f"{stack.site.url}/")
    assert _study_list(listed, stack) == {"A1", "A2"}
    listing.close()

    a2 = stack.studies["A2"]
    page = _open(context)
    page.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={a2.uid}&token={token}")
    _wait_rendered(page)
    # OHIF took the token out of the address bar and sent it as a bearer token.
    assert "token=" not in page.page.url

    # The same token on album B's root, for B's study: refused, nothing drawn.
    stack.site.configure(f"/dicom-web/albums/{stack.album_b}")
    other = _open(context)
    other.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={stack.studies['B'].uid}&token={token}")
    _refused(other, stack.studies["B"].uid, {404})
    # And B's study asked for at A's root: not in the album, refused.
    stack.site.configure(f"/dicom-web/albums/{stack.album_a}")
    probe = _open(context)
    probe.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={stack.studies['B'].uid}&token={token}")
    _refused(probe, stack.studies["B"].uid, {404})


def test_album_page_ohif_link_opens_the_study_in_ohif(stack: Stack, context: Any) -> None:
    # The OHIF site serves the shipped config, adjusted to this layout (Orthanc at the root).
    shipped = SHIPPED_CONFIG.read_text()
    assert "const ORTHANC_DICOMWEB = '/orthanc/dicom-web';" in shipped
    stack.site.use_config(
        shipped.replace(
            "const ORTHANC_DICOMWEB = '/orthanc/dicom-web';",
            "const ORTHANC_DICOMWEB = '/dicom-web';",
        )
    )
    page = _open(context)
    page.goto(f"{stack.site.url}/admin/albums/{stack.album_a}")
    page.page.wait_for_selector("#kc-form-login")
    page.page.fill("#username", "alice")
    page.page.fill("#password", stack.idp.users["alice"]["password"])
    page.page.click("#kc-login")
    page.page.wait_for_url(f"**/admin/albums/{stack.album_a}*")
    a1 = stack.studies["A1"]
    link = page.page.locator(f'a[href*="StudyInstanceUIDs={a1.uid}"]', has_text="OHIF")
    assert link.get_attribute("href") == (
        f"{stack.site.url}/viewer?StudyInstanceUIDs={a1.uid}&album={stack.album_a}"
    )
    # Stands in for OHIF's own Keycloak sign-in (config/ohif/app-config.js, "oidc"): alice's
    # access token on the viewer's requests.
    context.set_extra_http_headers(stack.auth("alice"))
    with context.expect_page() as opened:
        link.click()
    viewer = Page(opened.value)
    viewer.page.on(
        "request",
        lambda r: (
            viewer.dicomweb.append({"method": r.method, "url": r.url, "request": r})
            if "/dicom-web/" in r.url
            else None
        ),
    )
    _wait_rendered(viewer)
    assert viewer.dicomweb and all(
        f"/dicom-web/albums/{stack.album_a}/" in r["url"] for r in viewer.dicomweb
    )


# --- the gate in front of a stock Orthanc ------------------------------------------------------


def test_gate_read_token_opens_a_study_until_revoked(stack: Stack, context: Any) -> None:
    token_id, token = stack.read_token(stack.album_a)
    bearer = {"Authorization": f"Bearer {token}"}
    # The gate answers no listing for non-admins (docs/gate.md): OHIF's study list on Orthanc's
    # root stays empty, with the search refused...
    stack.site.configure("/dicom-web")
    listing = _open(context)
    listing.page.set_extra_http_headers(bearer)
    listing.goto(f"{stack.site.url}/")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while 403 not in listing.statuses("/dicom-web/studies?"):
        assert time.monotonic() < deadline, listing.report()
        listing.page.wait_for_timeout(250)
    assert not _listed(listing, stack)
    listing.page.close()
    # ... so a gate site searches the album root and retrieves through the gate.
    stack.site.configure(f"/dicom-web/albums/{stack.album_a}", "/dicom-web")
    listing = _open(context)
    listing.page.set_extra_http_headers(bearer)
    listing.goto(f"{stack.site.url}/")
    assert _study_list(listing, stack) == {"A1", "A2"}
    listing.page.close()

    # Everything through the gate: OHIF reads the stock Orthanc's own DICOMweb root.
    stack.site.configure("/dicom-web")
    a1 = stack.studies["A1"]
    viewer = f"{stack.site.url}/viewer?StudyInstanceUIDs={a1.uid}&token={token}"
    page = _open(context)
    page.goto(viewer)
    _wait_rendered(page)
    assert all("/dicom-web/albums/" not in r["url"] for r in page.dicomweb)
    # OHIF's real request pattern for a 40-slice study, opened and scrolled through, for
    # bench/gate.py (OHIF fetches the slices near the one shown, the others as you scroll).
    a2 = stack.studies["A2"]
    recorded = _open(context)
    recorded.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={a2.uid}&token={token}")
    _wait_rendered(recorded)
    box = recorded.page.locator("canvas.cornerstone-canvas").first.bounding_box()
    assert box is not None
    recorded.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000

    def frames() -> set[str]:
        return {r["url"] for r in recorded.dicomweb if "/frames/" in r["url"]}

    while len(frames()) < SESSION_INSTANCES:
        assert time.monotonic() < deadline, recorded.report()
        recorded.page.mouse.wheel(0, 120)
        recorded.page.wait_for_timeout(100)
    recorded.page.wait_for_load_state("networkidle")
    assert len(frames()) == SESSION_INSTANCES, recorded.report()
    assert set(recorded.statuses("/frames/")) == {200}, recorded.report()
    _save_session(recorded, a2.uid)
    # A study of another album, through the gate with the same token: refused.
    other = _open(context)
    other.goto(f"{stack.site.url}/viewer?StudyInstanceUIDs={stack.studies['B'].uid}&token={token}")
    _refused(other, stack.studies["B"].uid, {403})

    revoked = requests.delete(
        f"{stack.gate}/api/albums/{stack.album_a}/read-tokens/{token_id}",
        headers=stack.auth("alice"),
        timeout=30,
    )
    assert revoked.status_code == 200

    # docs/gate.md: a revocation reaches the gate within gate_cache_seconds.
    _until(
        lambda: not _opens(context, viewer, a1.uid),
        GATE_CACHE_SECONDS + SLACK,
        "revoked read token refused through the gate",
    )


# --- an OHIF share link made through the real plugin ------------------------------------------


@dataclass
class PluginSite:
    """The plugin stack (tests/integration/plugin_stack.py) and OHIF's site in front of it."""

    stack: plugin_stack.PluginStack
    site: ohif_site.OhifSite


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginSite]:
    state = tmp_path_factory.mktemp("ohif-plugin")
    site_port = processes.free_port()
    overrides = {
        # authsvc builds OHIF share links on this root: the OHIF site below.
        "AUTHSVC_PUBLIC_OHIF_ROOT": f"http://127.0.0.1:{site_port}/",
        # OHIF opens a shared study with parallel requests; when the plugin sends no labels
        # authsvc reads them from Orthanc, whose plugin then asks authsvc for the service
        # key's profile. Sync workers all busy in such validations could not answer that
        # nested call (docs/ohif.md): threads can.
        "AUTHSVC_THREADS": "4",
    }
    with plugin_stack.running_stack(state / "stack", overrides) as stack:
        site = ohif_site.start_ohif_site(
            state / "site", site_port, "/orthanc/dicom-web", {"/orthanc/": stack.nginx_url}
        )
        try:
            yield PluginSite(stack, site)
        finally:
            site.stop()


def test_plugin_share_link_opens_its_study_anonymously_and_nothing_else(
    plugin: PluginSite, context: Any
) -> None:
    stack = plugin.stack
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    assert cardio.patient_id == neuro.patient_id  # neuro would be a "prior" of cardio
    made = stack.nginx_call(
        "PUT",
        "/orthanc/auth/tokens/ohif-viewer-publication",
        {"Authorization": f"Bearer {stack.jwt('alice')}"},
        json={
            "Resources": [
                {"DicomUid": cardio.uid, "OrthancId": cardio.orthanc_id, "Level": "study"}
            ],
            "ValidityDuration": 3600,
        },
    )
    assert made.status_code == 200, made.text
    url = made.json()["Url"]
    assert url.startswith(f"{plugin.site.url}/viewer?StudyInstanceUIDs={cardio.uid}&token=sh1.")

    page = _open(context)  # a fresh context: no cookie, no header, only the link
    page.goto(url)
    _wait_rendered(page)
    # OHIF's prior-study search (same PatientID) found the shared study only.
    searches = [
        r for r in page.dicomweb if "/dicom-web/studies?" in r["url"] and r.get("status") == 200
    ]
    assert any(cardio.patient_id in r["url"] for r in searches), page.report()
    for search in searches:
        found = search["request"].response().json() if search["request"].response() else []
        assert {dataset["0020000D"]["Value"][0] for dataset in found} <= {cardio.uid}
    assert "neuro study" not in page.page.locator("body").inner_text()
    _shot(page, "ohif-share-link.png")

    # The link's token does not open the patient's other study.
    other = _open(context)
    other.goto(url.replace(cardio.uid, neuro.uid))
    _refused(other, neuro.uid, {403})
