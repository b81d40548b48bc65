"""Benchmark the album page's upload in Chromium next to the same files sent with an upload token.

Everything is real and local: a private Orthanc, the test OIDC provider, authsvc under
gunicorn (SQLite), Debian's Chromium driven by Playwright. An album is made in-process; its
owner signs in to the album page in Chromium and chooses a folder of ``--files`` generated
instances of ``--instance-kb`` each (fresh UIDs every round, so Orthanc really stores each); the
page's script sends them in its batches (album_upload.SCRIPT_BATCH_FILES files /
SCRIPT_BATCH_BYTES). The token path sends the same number of files of the same size with
``requests`` to ``POST /api/albums/<id>/uploads`` (multipart/form-data, one request per batch
of the same size), as a script with an upload token would. Rounds alternate the two paths;
medians in MB/s of DICOM bytes, the ratio browser / token, and authsvc's peak resident set
(VmHWM of the gunicorn master and workers, target < 150 MB).

The browser's time runs from choosing the folder to the summary shown, so it includes the
script reading each file's first bytes. The machine's cores are shared by Chromium, the
client, authsvc and Orthanc: compare within one run. Prints numbers; asserts nothing.

Memory: then one no-script form request of ``--form-mb`` (default 256; the form's limit is
512) to the same route, streamed by the client, while authsvc's VmHWM is read again.

Usage: ``python bench/browser_upload.py [--files 200] [--instance-kb 256] [--rounds 3]
[--form-mb 256]``
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc import albums  # noqa: E402
from authsvc.app import create_app  # noqa: E402
from authsvc.credentials import upload_token_records as records  # noqa: E402
from authsvc.credentials.sealing import generate_key  # noqa: E402
from authsvc.database import init_db  # noqa: E402
from authsvc.extensions import db  # noqa: E402
from authsvc.models import AlbumMember  # noqa: E402
from authsvc.policy import Actor  # noqa: E402
from authsvc.services import services  # noqa: E402
from authsvc.views.album_upload import SCRIPT_BATCH_BYTES  # noqa: E402
from authsvc.views.album_upload import SCRIPT_BATCH_FILES  # noqa: E402
from bench.upload import InstanceFactory  # noqa: E402
from bench.upload import peak_rss_kb  # noqa: E402
from tests import processes  # noqa: E402
from tests.integration.conftest import CHROMIUM  # noqa: E402
from tests.integration.conftest import CHROMIUM_ARGS  # noqa: E402

INSECURE_SECRET = "insecure-bench-browser-upload-secret-key-0123456789"
MB = 1024 * 1024


def write_folder(folder: Path, factory: InstanceFactory, count: int) -> int:
    """Write ``count`` fresh instances into ``folder``; return their total size in bytes."""
    folder.mkdir(parents=True)
    total = 0
    for index, data in enumerate(factory.study_stream(count * factory.size, per_study=100)):
        (folder / f"IM{index:05d}.dcm").write_bytes(data)
        total += len(data)
    return total


def token_upload(url: str, token: str, folder: Path) -> float:
    """Send the folder's files in the page script's batch size; return the seconds it took."""
    files = sorted(folder.iterdir())
    per_batch = max(1, min(SCRIPT_BATCH_FILES, SCRIPT_BATCH_BYTES // files[0].stat().st_size))
    started = time.perf_counter()
    for start in range(0, len(files), per_batch):
        batch = files[start : start + per_batch]
        response = requests.post(
            url,
            headers={"Authorization": f"Bearer {token}"},
            files=[("file", (p.name, p.read_bytes(), "application/dicom")) for p in batch],
            timeout=600,
        )
        if response.status_code != 200:
            raise SystemExit(f"token upload answered {response.status_code}: {response.text}")
    return time.perf_counter() - started


def browser_upload(page: Any, album_url: str, folder: Path, count: int) -> float:
    """Choose the folder on the album page; return the seconds until the summary is shown."""
    page.goto(album_url)
    started = time.perf_counter()
    page.set_input_files("#upload-folder", str(folder))
    page.wait_for_function(
        "n => { const s = document.getElementById('upload-summary');"
        " return s && !s.hidden && s.innerText.includes(n + ' stored, 0 already'); }",
        arg=count,
        timeout=600_000,
    )
    return time.perf_counter() - started


def form_upload(url: str, cookies: list[dict[str, Any]], csrf: str, folder: Path) -> float:
    """Send the whole folder as one no-script form request (streamed); return its seconds."""
    boundary = "authsvc-bench-form"
    files = sorted(folder.iterdir())

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf}\r\n'
        ).encode()
        for path in files:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{path.name}"\r\nContent-Type: application/dicom\r\n\r\n'
            ).encode()
            yield path.read_bytes()
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    jar = {c["name"]: c["value"] for c in cookies}
    started = time.perf_counter()
    response = requests.post(
        url,
        data=body(),
        cookies=jar,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=3600,
    )
    if response.status_code != 200 or "already present" not in response.text:
        raise SystemExit(f"form upload answered {response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200, help="instances per round and path")
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--form-mb", type=int, default=256, help="size of the no-script form memory run (0: none)"
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    state = Path(tempfile.mkdtemp(prefix="authsvc-bench-browser-upload-"))
    orthanc = processes.start_orthanc(state / "orthanc", processes.free_port())
    idp = processes.start_idp(state / "idp", processes.free_port())
    try:
        alice = idp.users["alice"]
        ring = generate_key("bench")
        config = {
            "env": "testing",
            "data_dir": str(state / "data"),
            "secret_key": INSECURE_SECRET,
            "database_url": f"sqlite:///{state / 'authsvc.sqlite3'}",
            "orthanc_url": orthanc.url,
            "upload_token_keys": ring,
            "oidc_issuer": idp.issuer,
            "oidc_client_id": "authsvc",
            "admin_client_secret": idp.clients["authsvc"]["secret"],
            "admin_cookie_secure": "false",
            "log_level": "warning",
        }
        app = create_app(config)
        with app.app_context():
            init_db(db.engine)
            owner = albums.Caller(actor=Actor(subject="bench-owner"))
            album = albums.create_album(services().archive, owner, "bench browser uploads").album
            db.session.add(
                AlbumMember(
                    album_id=album.id,
                    principal_kind="email",
                    principal=alice["email"],
                    role="contributor",
                    added_by="bench",
                )
            )
            db.session.commit()
            issued = records.issue(
                owner,
                album.id,
                {},
                ring=app.extensions["authsvc"].upload_keys,
                limits=records.TokenLimits(default_lifetime=86_400, max_lifetime=86_400),
            )
            album_id, token = album.id, issued.token
        env = {f"AUTHSVC_{key.upper()}": str(value) for key, value in config.items()}
        env["AUTHSVC_WORKERS"] = str(args.workers)
        env["AUTHSVC_WORKER_TIMEOUT"] = "600"
        server = processes.start_gunicorn_app(state / "gunicorn", processes.free_port(), env)
        try:
            assert server.pid is not None
            factory = InstanceFactory(args.instance_kb)
            api_url = f"{server.url}/api/albums/{album_id}/uploads"
            album_url = f"{server.url}/admin/albums/{album_id}"
            print(
                f"{args.files} instances of {factory.size / 1024:.0f} kB per round and path, "
                f"script batches of {SCRIPT_BATCH_FILES} files / {SCRIPT_BATCH_BYTES // MB} MB, "
                f"{args.rounds} rounds, gunicorn -w {args.workers}"
            )
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                page = browser.new_context().new_page()
                page.goto(f"{server.url}/admin/")
                page.fill("#username", "alice")
                page.fill("#password", alice["password"])
                page.click("#kc-login")
                page.wait_for_url(re.compile(r".*/admin/albums.*"))
                warm = state / "warm"
                write_folder(warm, factory, 4)
                browser_upload(page, album_url, warm, 4)
                token_rates: list[float] = []
                browser_rates: list[float] = []
                for round_ in range(args.rounds):
                    folder = state / f"token-{round_}"
                    size = write_folder(folder, factory, args.files)
                    token_rates.append(size / MB / token_upload(api_url, token, folder))
                    folder = state / f"browser-{round_}"
                    size = write_folder(folder, factory, args.files)
                    seconds = browser_upload(page, album_url, folder, args.files)
                    browser_rates.append(size / MB / seconds)
                cookies = page.context.cookies()
                csrf = page.locator("#upload-form input[name=csrf_token]").get_attribute("value")
                browser.close()
            t, b = statistics.median(token_rates), statistics.median(browser_rates)
            print(f"{'path':<40}{'median MB/s':>12}{'runs':>24}")
            runs = str([round(x, 1) for x in token_rates])
            print(f"{'upload token, /api/albums/<id>/uploads':<40}{t:>12.1f}{runs:>24}")
            runs = str([round(x, 1) for x in browser_rates])
            print(f"{'album page in Chromium (script)':<40}{b:>12.1f}{runs:>24}")
            print(f"ratio browser / token: {b / t:.2f}")
            hwm, now = peak_rss_kb(server.pid)
            print(
                f"authsvc peak RSS (VmHWM, largest process): {hwm / 1024:.1f} MB "
                f"(now {now / 1024:.1f} MB; target < 150 MB)"
            )
            if args.form_mb:
                count = max(1, args.form_mb * MB // factory.size)
                folder = state / "form"
                size = write_folder(folder, factory, count)
                seconds = form_upload(
                    f"{server.url}/admin/albums/{album_id}/upload", cookies, str(csrf), folder
                )
                hwm, now = peak_rss_kb(server.pid)
                print(
                    f"one no-script form of {size / MB:.0f} MB ({count} files) to the album page's "
                    f"route: {seconds:.1f} s ({size / MB / seconds:.1f} MB/s); authsvc peak RSS "
                    f"{hwm / 1024:.1f} MB (target < 150 MB)"
                )
        finally:
            server.stop()
    finally:
        idp.stop()
        orthanc.stop()


if __name__ == "__main__":
    main()
