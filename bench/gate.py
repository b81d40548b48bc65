"""Benchmark the nginx gate: a viewer-like session straight to Orthanc, through nginx alone, and
through nginx with the authsvc gate, in one run; then the gate's own decision latency.

Everything is real and local: Orthanc (scripts/testenv), the test OIDC provider, authsvc under
gunicorn, nginx twice (scripts/testenv/nginx.conf.template as the plain proxy,
nginx/gate.conf.template as deployed). The viewer is a user who is a *viewer* of the album
holding the study, with a real Keycloak-shaped token.

A session = one QIDO (the study by UID), the study metadata, then ``--frames`` frame requests
cycling over the study's instances, sequentially on one keep-alive connection, as a viewer
does. Each variant runs ``--rounds`` times; the median wall time is reported, and the gate's
overhead is given relative to nginx alone (target: at most +15 %).

Decision latency: ``GET /gate/auth`` for a frame URI sent straight to gunicorn (warm caches,
keep-alive) next to the no-op ``/healthz`` over the same path, and the decision inside the
process (the view alone, no WSGI, no network), p50/p99 (target p99 < 2 ms). The load generator
shares the machine with everything it measures: compare ratios within one run. Prints
numbers; asserts nothing.

OHIF session (``--ohif``): the DICOMweb requests OHIF 3 really made to open one album study
through the gate, recorded by tests/integration/test_ohif.py into bench/ohif_session.json
(method, path shape, query, Accept, start and end), replayed on a study of the recorded shape
against the same three doors. Requests that overlapped in the browser run concurrently (one
connection each, as a browser does), the others after them; the session's wall time is the
figure. ``--ohif-only`` skips everything else.

Usage: ``python bench/gate.py [--frames 200] [--rounds 5] [--decisions 2000] [--ohif]``
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsvc import albums  # noqa: E402
from authsvc.app import create_app  # noqa: E402
from authsvc.credentials.sealing import generate_key  # noqa: E402
from authsvc.database import init_db  # noqa: E402
from authsvc.extensions import db  # noqa: E402
from authsvc.policy import Actor  # noqa: E402
from authsvc.services import services  # noqa: E402
from tests import deploy_kit  # noqa: E402
from tests import processes  # noqa: E402
from tests.dicom_factory import make_study  # noqa: E402

INSECURE_SECRET = "insecure-bench-gate-secret-key-0123456789abcdef"


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Study:
    """The study the viewer session reads."""

    def __init__(self, orthanc: processes.OrthancService, n_instances: int) -> None:
        import pydicom

        self.instances: list[tuple[str, str]] = []
        answer: dict[str, Any] = {}
        for blob in make_study(n_series=1, n_instances=n_instances, study_description="bench"):
            stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
            stored.raise_for_status()
            answer = stored.json()
            ds = pydicom.dcmread(io.BytesIO(blob))
            self.uid = ds.StudyInstanceUID
            self.instances.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))
        self.id = answer["ParentStudy"]

    def frame_path(self, i: int = 0) -> str:
        """Return the WADO-RS path of frame 1 of the ``i``-th instance (cycling)."""
        series, instance = self.instances[i % len(self.instances)]
        return f"/dicom-web/studies/{self.uid}/series/{series}/instances/{instance}/frames/1"


FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"'}


def _frames(base: str, study: Study, indexes: range, headers: dict[str, str]) -> None:
    """Fetch the frames ``indexes`` (cycling over the instances) on one connection."""
    with requests.Session() as http:
        http.headers.update(headers)
        for i in indexes:
            frame = http.get(f"{base}{study.frame_path(i)}", headers=FRAME_ACCEPT, timeout=30)
            if frame.status_code != 200:
                raise RuntimeError(f"frame request answered {frame.status_code} at {base}")
            _ = frame.content


def session(
    base: str, study: Study, frames: int, headers: dict[str, str], concurrency: int = 1
) -> float:
    """Run one viewer-like session against ``base``; return its wall time in seconds.

    QIDO and metadata first, then the frames over ``concurrency`` connections (a browser
    opens up to 6 per host; 1 is the strictest, sequential case).
    """
    from concurrent.futures import ThreadPoolExecutor

    with requests.Session() as http:
        http.headers.update(headers)
        start = time.perf_counter()
        qido = http.get(f"{base}/dicom-web/studies?StudyInstanceUID={study.uid}", timeout=30)
        qido.raise_for_status()
        meta = http.get(f"{base}/dicom-web/studies/{study.uid}/metadata", timeout=30)
        meta.raise_for_status()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        jobs = [
            pool.submit(_frames, base, study, range(k, frames, concurrency), headers)
            for k in range(concurrency)
        ]
        for job in jobs:
            job.result()
    return time.perf_counter() - start


OHIF_SESSION = ROOT / "bench" / "ohif_session.json"


class OhifSession:
    """OHIF's recorded requests and a study of the recorded shape to replay them on."""

    def __init__(self, fixture: dict[str, Any], orthanc: processes.OrthancService) -> None:
        import pydicom

        shape = fixture["study"]
        blobs = make_study(
            n_series=max(1, shape["series"]),
            n_instances=max(1, shape["instances"] // max(1, shape["series"])),
            study_description="bench OHIF",
            size=shape.get("size", 8),
        )
        names: dict[str, str] = {}
        series_seen: list[str] = []
        answer: dict[str, Any] = {}
        for number, blob in enumerate(blobs):
            stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
            stored.raise_for_status()
            answer = stored.json()
            ds = pydicom.dcmread(io.BytesIO(blob))
            names["{study}"] = str(ds.StudyInstanceUID)
            names["{patient}"] = str(ds.PatientID)
            if ds.SeriesInstanceUID not in series_seen:
                names[f"{{series{len(series_seen)}}}"] = str(ds.SeriesInstanceUID)
                series_seen.append(str(ds.SeriesInstanceUID))
            names[f"{{instance{number}}}"] = str(ds.SOPInstanceUID)
        self.id = str(answer["ParentStudy"])
        self.requests = [self._fill(r, names) for r in fixture["requests"]]
        self.waves = self._waves(self.requests)

    @staticmethod
    def _fill(recorded: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
        target = recorded["path"] + ("?" + recorded["query"] if recorded["query"] else "")
        for name, value in names.items():
            target = target.replace(name, value)
        return {**recorded, "target": target}

    @staticmethod
    def _waves(recorded: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Group requests that overlapped in the browser; a wave starts once all before end."""
        waves: list[list[dict[str, Any]]] = []
        ends = 0.0
        for request in sorted(recorded, key=lambda r: r["start"]):
            if not waves or request["start"] >= ends:
                waves.append([])
            waves[-1].append(request)
            ends = max(ends, request["end"])
        return waves

    def replay(self, base: str, headers: dict[str, str]) -> float:
        """Replay the session against ``base``; return its wall time in seconds."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        local = threading.local()  # one kept-alive connection per browser "socket"
        clients: list[requests.Session] = []

        def one(request: dict[str, Any]) -> None:
            if not hasattr(local, "http"):
                local.http = requests.Session()
                clients.append(local.http)
            answer = local.http.request(
                request["method"],
                base + request["target"],
                headers={**headers, "Accept": request["accept"]},
                timeout=30,
            )
            if answer.status_code >= 500:
                raise RuntimeError(f"{request['path']} answered {answer.status_code} at {base}")
            _ = answer.content

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=6) as pool:
            for wave in self.waves:
                for job in [pool.submit(one, request) for request in wave]:
                    job.result()
        wall = time.perf_counter() - start
        for client in clients:
            client.close()
        return wall


def timed(call: Callable[[], Any], count: int) -> list[float]:
    """Return ``count`` latencies of ``call`` in milliseconds."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=4, help="authsvc threads per worker (>1: gthread)"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="parallel frame connections")
    parser.add_argument(
        "--ohif", action="store_true", help=f"also replay OHIF's session ({OHIF_SESSION.name})"
    )
    parser.add_argument("--ohif-only", action="store_true", help="only the OHIF session")
    parser.add_argument("--ohif-rounds", type=int, default=20)
    args = parser.parse_args()
    args.ohif = args.ohif or args.ohif_only
    ohif_fixture = json.loads(OHIF_SESSION.read_text()) if args.ohif else None

    with tempfile.TemporaryDirectory(prefix="authsvc-bench-gate-") as tmp:
        state = Path(tmp)
        started: list[processes.Service] = []
        try:
            orthanc = processes.start_orthanc(state / "orthanc", processes.free_port())
            started.append(orthanc)
            idp = processes.start_idp(state / "idp", processes.free_port())
            started.append(idp)
            settings = {
                "env": "testing",
                "data_dir": str(state / "data"),
                "secret_key": INSECURE_SECRET,
                "orthanc_url": orthanc.url,
                "oidc_issuer": idp.issuer,
                "oidc_client_id": "authsvc",
                "admin_roles": "admin",
                "upload_token_keys": generate_key("bench"),
                "proxy_count": "1",
                "log_level": "warning",
            }
            app = create_app(settings)
            with app.app_context():
                init_db(db.engine)
            study = Study(orthanc, args.instances)
            ohif = OhifSession(ohif_fixture, orthanc) if ohif_fixture is not None else None
            token = idp.password_token("carol")["access_token"]
            admin_token = idp.password_token("bob")["access_token"]
            with app.app_context():
                admin = albums.Caller(Actor(_subject(admin_token), is_global_admin=True))
                album = albums.create_album(services().archive, admin, "bench").album.id
                albums.add_studies(
                    services().archive, admin, album, [study.id, *([ohif.id] if ohif else [])]
                )
                albums.invite_member(admin, album, "user", _subject(token), "viewer")

            authsvc_port = processes.free_port()
            env = {f"AUTHSVC_{k.upper()}": v for k, v in settings.items()}
            env["AUTHSVC_WORKERS"] = str(args.workers)
            env["AUTHSVC_THREADS"] = str(args.threads)
            gunicorn = processes.start_gunicorn_app(state / "authsvc", authsvc_port, env)
            started.append(gunicorn)
            plain = processes.start_nginx(
                state / "nginx-plain", processes.free_port(), upstreams={"orthanc": orthanc.port}
            )
            started.append(plain)
            gate_port = processes.free_port()
            gated = deploy_kit.start_nginx_templates(
                state / "nginx-gate",
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
            started.append(gated)

            bearer = {"Authorization": f"Bearer {token}"}
            variants = [
                ("Orthanc directly", orthanc.url, {}),
                ("nginx, no gate", f"{plain.url}/orthanc", {}),
                ("nginx + authsvc gate", f"http://127.0.0.1:{gate_port}", bearer),
            ]
            ohif_walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            if ohif is not None:
                for _, base, headers in variants:  # warm-up
                    ohif.replay(base, headers)
                for _ in range(args.ohif_rounds):  # interleaved, as below
                    for name, base, headers in variants:
                        ohif_walls[name].append(ohif.replay(base, headers))
            if args.ohif_only:
                _print_ohif(args, ohif, ohif_walls)
                return
            for _, base, headers in variants:  # warm-up: caches, connections, page cache
                session(base, study, min(args.frames, 20), headers)
            walls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
                for name, base, headers in variants:
                    walls[name].append(session(base, study, args.frames, headers, args.concurrency))

            # One frame at a time, the variants interleaved request by request on kept-alive
            # connections: the per-frame cost of the gate, free of the drift between rounds.
            frame_path = study.frame_path()
            per_frame: dict[str, list[float]] = {name: [] for name, _, _ in variants}
            clients = {name: requests.Session() for name, _, _ in variants}
            for _ in range(args.frames * 2):
                for name, base, headers in variants:
                    started_at = time.perf_counter()
                    clients[name].get(
                        f"{base}{frame_path}", headers={**FRAME_ACCEPT, **headers}, timeout=30
                    ).raise_for_status()
                    per_frame[name].append((time.perf_counter() - started_at) * 1000)
            for client in clients.values():
                client.close()

            log = gated.log_path.read_text(errors="replace")
            reused = log.count(" gate=HIT")
            asked = sum(log.count(f" gate={word}") for word in ("MISS", "EXPIRED", "BYPASS"))

            gate_headers = {**bearer, "X-Original-Method": "GET", "X-Original-URI": frame_path}
            with requests.Session() as http:

                def over_http() -> None:
                    answer = http.get(
                        f"http://127.0.0.1:{authsvc_port}/gate/auth", headers=gate_headers
                    )
                    if answer.status_code != 200:
                        raise RuntimeError(f"gate answered {answer.status_code}")

                def noop_over_http() -> None:
                    http.get(f"http://127.0.0.1:{authsvc_port}/healthz").raise_for_status()

                timed(over_http, 200)
                http_ms = timed(over_http, args.decisions)
                noop_ms = timed(noop_over_http, args.decisions)
            from authsvc.views import gate as gate_view

            def in_process() -> None:
                # The view alone: credentials, caches, classification, policy (no WSGI).
                with app.test_request_context("/gate/auth", headers=gate_headers):
                    if gate_view.auth().status_code != 200:
                        raise RuntimeError("in-process gate refused the viewer")

            timed(in_process, 200)
            local_ms = timed(in_process, args.decisions)
        finally:
            for service in reversed(started):
                service.stop()

    print(
        f"\nviewer session: QIDO + metadata + {args.frames} frames over {args.concurrency} "
        f"connection(s), {args.rounds} rounds; authsvc {args.workers} workers x "
        f"{args.threads} threads"
    )
    print(f"{'variant':<24}{'median s':>10}{'min s':>9}{'vs nginx':>10}")
    reference = statistics.median(walls["nginx, no gate"])
    for name, values in walls.items():
        median = statistics.median(values)
        print(
            f"{name:<24}{median:>10.3f}{min(values):>9.3f}{(median / reference - 1) * 100:>+9.1f}%"
        )
    print(f"\none frame, {args.frames * 2} requests per variant, interleaved request by request")
    print(f"{'variant':<24}{'p50 ms':>8}{'p90 ms':>8}{'p50 vs nginx':>14}")
    plain_p50 = _percentile(per_frame["nginx, no gate"], 50)
    for name, values in per_frame.items():
        p50 = _percentile(values, 50)
        print(
            f"{name:<24}{p50:>8.2f}{_percentile(values, 90):>8.2f}"
            f"{(p50 / plain_p50 - 1) * 100:>+13.1f}%"
        )
    print(
        f"gated requests: {reused} answered from nginx's decision cache, {asked} asked authsvc "
        "(gate_cache_seconds, nginx/authsvc_gate.js)"
    )
    print(f"\ngate decision, {args.decisions} requests, warm caches")
    print(f"{'path':<34}{'p50 ms':>8}{'p99 ms':>8}")
    for name, values in (
        ("GET /healthz over HTTP (no-op)", noop_ms),
        ("GET /gate/auth over HTTP (gunicorn)", http_ms),
        ("the view in process (no WSGI)", local_ms),
    ):
        print(f"{name:<34}{_percentile(values, 50):>8.2f}{_percentile(values, 99):>8.2f}")
    if ohif is not None:
        _print_ohif(args, ohif, ohif_walls)


def _print_ohif(args: Any, ohif: OhifSession | None, walls: dict[str, list[float]]) -> None:
    """Print the OHIF session's figures."""
    assert ohif is not None
    frames = sum(1 for r in ohif.requests if "/frames/" in r["path"])
    print(
        f"\nOHIF {ohif_version()} session ({OHIF_SESSION.name}): {len(ohif.requests)} requests "
        f"({frames} frames) in {len(ohif.waves)} waves, {args.ohif_rounds} rounds; "
        f"authsvc {args.workers} workers x {args.threads} threads"
    )
    print(f"{'variant':<24}{'median s':>10}{'min s':>9}{'vs nginx':>10}")
    reference = statistics.median(walls["nginx, no gate"])
    for name, values in walls.items():
        median = statistics.median(values)
        print(
            f"{name:<24}{median:>10.3f}{min(values):>9.3f}{(median / reference - 1) * 100:>+9.1f}%"
        )


def ohif_version() -> str:
    """Return the OHIF version the session was recorded with."""
    return str(json.loads(OHIF_SESSION.read_text()).get("ohif", "?"))


if __name__ == "__main__":
    main()
