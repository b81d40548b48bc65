"""Benchmark album uploads: STOW-RS through authsvc next to STOW-RS straight to Orthanc, and
authsvc's peak memory while one request carries ~1 GB.

Everything is real and local: a private Orthanc (scripts/testenv) with the DICOMweb plugin,
authsvc under gunicorn (SQLite), an album and an upload token made in-process on the same
database. The client streams generated instances (``--instance-kb`` of pixel data each, every
one with fresh UIDs so Orthanc really stores each of them) as chunked multipart/related bodies,
so the client holds one instance at a time too.

Throughput: ``--rounds`` alternating runs of ``--batch-mb`` straight to Orthanc's
``/dicom-web/studies`` and through authsvc's ``/dicom-web/albums/<id>/studies``; medians in
MB/s and the ratio authsvc / Orthanc (target >= 0.8). The machine's cores are shared by the
client, authsvc and Orthanc: compare within one run.

Memory: one STOW request of ``--total-mb`` (default 1024) through authsvc while the peak
resident set (VmHWM) of the gunicorn master and workers is read from /proc (target < 150 MB).

Prints numbers; asserts nothing.

Usage: ``python bench/upload.py [--total-mb 1024] [--batch-mb 64] [--rounds 5] [--instance-kb 512]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc import albums  # noqa: E402
from authsvc.app import create_app  # noqa: E402
from authsvc.credentials import upload_token_records as records  # noqa: E402
from authsvc.credentials.sealing import generate_key  # noqa: E402
from authsvc.database import init_db  # noqa: E402
from authsvc.extensions import db  # noqa: E402
from authsvc.policy import Actor  # noqa: E402
from authsvc.services import services  # noqa: E402
from tests import processes  # noqa: E402
from tests.dicom_factory import make_study  # noqa: E402

INSECURE_SECRET = "insecure-bench-upload-secret-key-0123456789abcdef"
BOUNDARY = "authsvc-bench-upload"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
UID_ROOT = "1.2.826.0.1.3680043.8.498."
MB = 1024 * 1024


class InstanceFactory:
    """Makes DICOM instances of one size whose UIDs are all fresh, without re-encoding."""

    def __init__(self, instance_kb: int) -> None:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(make_study(n_instances=1)[0]))
        side = max(8, int((instance_kb * 1024 / 2) ** 0.5))
        ds.Rows = ds.Columns = side
        ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + b"\0" * (
            side * side * 2 % 256
        )
        # Fixed-length placeholders, replaced per instance by UIDs of the same length.
        self.study = self._uid("1")
        self.series = self._uid("2")
        self.sop = self._uid("3")
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = self.sop
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        self.template = buffer.getvalue()
        self.size = len(self.template)

    @staticmethod
    def _uid(kind: str) -> str:
        return UID_ROOT + kind + "." + str(uuid.uuid4().int)[:30].rjust(30, "1")

    def study_stream(self, total_bytes: int, per_study: int = 500) -> Iterator[bytes]:
        """Yield instances until ``total_bytes``; a new study (and series) every ``per_study``."""
        made = 0
        count = 0
        data = self.template
        while made < total_bytes:
            if count % per_study == 0:
                data = self.template.replace(self.study.encode(), self._uid("1").encode())
                data = data.replace(self.series.encode(), self._uid("2").encode())
            yield data.replace(self.sop.encode(), self._uid("3").encode())
            made += self.size
            count += 1


def multipart(instances: Iterator[bytes]) -> Iterator[bytes]:
    """Stream a STOW-RS body, one part at a time (sent chunked by requests)."""
    for instance in instances:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield instance
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def stow(
    url: str,
    factory: InstanceFactory,
    total_bytes: int,
    headers: dict[str, str],
    *,
    chunked: bool = False,
) -> float:
    """Send one STOW request of about ``total_bytes``; return the seconds it took.

    Not ``chunked``: the body is built first and sent with a Content-Length, as curl, 3D
    Slicer and dicomweb-client send a file list (the build is not timed). ``chunked``: the body
    is generated while it is sent, so the client never holds it (the 1 GB run).
    """
    body: bytes | Iterator[bytes] = multipart(factory.study_stream(total_bytes))
    if not chunked:
        body = b"".join(body)
    started = time.perf_counter()
    response = requests.post(
        url,
        data=body,
        headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json", **headers},
        timeout=3600,
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"STOW to {url} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def _pids(master_pid: int) -> list[int]:
    pids = [master_pid]
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        pids += [int(pid) for pid in children]
    except OSError:
        pass
    return pids


def cpu_seconds(master_pid: int) -> float:
    """Return the CPU time (user + system) used so far by gunicorn's master and workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _pids(master_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def peak_rss_kb(master_pid: int) -> tuple[int, int]:
    """Return (largest VmHWM of master and workers, largest current VmRSS) in kB."""
    hwm = rss = 0
    for pid in _pids(master_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                hwm = max(hwm, int(line.split()[1]))
            elif line.startswith("VmRSS:"):
                rss = max(rss, int(line.split()[1]))
    return hwm, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mb", type=int, default=1024, help="size of the memory run")
    parser.add_argument("--batch-mb", type=int, default=64, help="size of each throughput run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instance-kb", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="authsvc-bench-upload-"))
    orthanc = processes.start_orthanc(state / "orthanc", processes.free_port())
    try:
        database = f"sqlite:///{state / 'authsvc.sqlite3'}"
        ring = generate_key("bench")
        config = {
            "env": "testing",
            "data_dir": str(state / "data"),
            "secret_key": INSECURE_SECRET,
            "database_url": database,
            "orthanc_url": orthanc.url,
            "upload_token_keys": ring,
            "log_level": "warning",
        }
        app = create_app(config)
        with app.app_context():
            init_db(db.engine)
            owner = albums.Caller(actor=Actor(subject="bench-owner"))
            album = albums.create_album(services().archive, owner, "bench uploads").album
            issued = records.issue(
                owner,
                album.id,
                {},
                ring=app.extensions["authsvc"].upload_keys,
                limits=records.TokenLimits(default_lifetime=86_400, max_lifetime=86_400),
            )
            album_id, label, token = album.id, album.label, issued.token
        env = {f"AUTHSVC_{key.upper()}": str(value) for key, value in config.items()}
        env["AUTHSVC_WORKERS"] = str(args.workers)
        env["AUTHSVC_WORKER_TIMEOUT"] = "3600"
        server = processes.start_gunicorn_app(state / "gunicorn", processes.free_port(), env)
        try:
            factory = InstanceFactory(args.instance_kb)
            direct_url = f"{orthanc.url}/dicom-web/studies"
            album_url = f"{server.url}/dicom-web/albums/{album_id}/studies"
            auth = {"Authorization": f"Bearer {token}"}
            batch = args.batch_mb * MB
            print(
                f"instance size {factory.size / 1024:.0f} kB, batches of {args.batch_mb} MB, "
                f"{args.rounds} rounds, gunicorn -w {args.workers}"
            )
            stow(direct_url, factory, 4 * MB, {})  # warm-up: both paths, small
            stow(album_url, factory, 4 * MB, auth)
            direct: list[float] = []
            through: list[float] = []
            assert server.pid is not None
            cpu = 0.0
            for _ in range(args.rounds):
                direct.append(batch / MB / stow(direct_url, factory, batch, {}))
                before_cpu = cpu_seconds(server.pid)
                through.append(batch / MB / stow(album_url, factory, batch, auth))
                cpu += cpu_seconds(server.pid) - before_cpu
            d, t = statistics.median(direct), statistics.median(through)
            print(f"{'path':<34}{'median MB/s':>12}{'runs':>30}")
            print(
                f"{'Orthanc STOW-RS (direct)':<34}{d:>12.1f}{str([round(x) for x in direct]):>30}"
            )
            print(f"{'authsvc album STOW-RS':<34}{t:>12.1f}{str([round(x) for x in through]):>30}")
            pairs = sorted(x / y for x, y in zip(through, direct, strict=True))
            print(
                f"ratio authsvc / direct: {t / d:.2f}  (target >= 0.80; round by round "
                f"{pairs[0]:.2f} to {pairs[-1]:.2f})"
            )
            print(
                f"authsvc CPU while uploading: {cpu / (args.rounds * args.batch_mb) * 1024:.1f} s "
                "per GB (it shares the cores with Orthanc and the client)"
            )

            before, _ = peak_rss_kb(server.pid)
            seconds = stow(album_url, factory, args.total_mb * MB, auth, chunked=True)
            after, now = peak_rss_kb(server.pid)
            print(
                f"one {args.total_mb} MB STOW through authsvc: {seconds:.1f} s "
                f"({args.total_mb / seconds:.1f} MB/s)"
            )
            print(
                f"authsvc peak RSS (VmHWM, largest process): {after / 1024:.1f} MB "
                f"(before the run {before / 1024:.1f} MB, now {now / 1024:.1f} MB; "
                "target < 150 MB)"
            )
            labelled = requests.post(
                f"{orthanc.url}/tools/find",
                json={"Level": "Study", "Query": {}, "Labels": [label]},
                timeout=60,
            ).json()
            print(f"studies carrying the album label: {len(labelled)}")
        finally:
            server.stop()
    finally:
        orthanc.stop()


if __name__ == "__main__":
    main()
