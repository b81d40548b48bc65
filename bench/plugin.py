"""Benchmark the plugin path: a viewer-like session through Orthanc + the authorization plugin +
authsvc, next to Orthanc + the plugin + a no-op web service, in one run.

Everything is real and local: two Orthanc instances (scripts/testenv) with the real Advanced
Authorization plugin, configured as deployments do (``StandardConfigurations`` OE2 + Stone +
OHIF, ``CheckedLevel: studies``, ``TokenHttpHeaders: ["api-key"]``), the same study stored in
both. Orthanc **A** asks authsvc under gunicorn (sync workers, SQLite, the test OIDC provider,
a roles file giving alice's realm role ``doctor`` ``view`` on the study's label); Orthanc **B**
asks a no-op service (a tiny ``http.server`` child process answering every profile with a full
``["*"]`` profile and every validation with ``granted``), so B is Orthanc + plugin alone.

A session = QIDO for the study, the study metadata, the series metadata, then ``--frames``
frame requests cycling over the instances, sequentially on one keep-alive connection, as a
viewer does. The plugin caches profiles and decisions for ``validity`` seconds (protocol spec
§3.8), so three cases are run, each on A and on B:

* warm JWT: alice's one real JWT (``Authorization: Bearer``), after a warm-up session;
* cold JWT: a new JWT per session (another password grant, fetched before the timing), so the
  plugin must ask the service for the new token's profile inside the session;
* API key: an authsvc API key of alice's in the ``api-key`` header (warm).

Rounds are interleaved (A, B, A, B, ...) so drift hits both alike; per case the median wall
time of ``--rounds`` sessions, the ratio A/B (target: A at most 10 % slower) and the callbacks
each service received are printed. Then where authsvc's time goes: its per-callback latency
(gunicorn's access log, and profile callbacks sent straight to it the way the plugin sends them,
next to the no-op service). The load generator shares the machine with everything it measures:
compare ratios within one run. Prints numbers; asserts nothing.

Usage: ``python bench/plugin.py [--frames 200] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gate import FRAME_ACCEPT  # noqa: E402
from bench.gate import Study  # noqa: E402
from bench.gate import _percentile  # noqa: E402
from tests import processes  # noqa: E402
from tests.dicom_factory import make_study  # noqa: E402
from tests.plugin_client import basic  # noqa: E402
from tests.plugin_client import chunked  # noqa: E402

INSECURE_SECRET = "insecure-bench-plugin-secret-key-0123456789abcdef"
PLUGIN_USER, PLUGIN_PASSWORD = "orthanc-plugin", "insecure-bench-plugin-password"
LABEL = "bench"
ROLES = {
    "roles": {
        "doctor": {"permissions": ["view"], "authorized-labels": [LABEL]},
        "admin": {"permissions": ["all"], "authorized-labels": ["*"]},
    },
    "available-labels": [],
}
NOOP_PROFILE = {
    "name": "x",
    "user-id": "x",
    "permissions": ["all", "view"],
    "authorized-labels": ["*"],
    "groups": [],
    "validity": 60,
}
NOOP_GRANTED = {"granted": True, "validity": 60}
CALLBACKS = ("/user/get-profile", "/tokens/validate")


# --- the no-op web service ----------------------------------------------------------------------


def serve_noop(port: int) -> None:
    """Answer every plugin callback at once with a fixed answer; GET /counts tells how many."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    profile, granted = json.dumps(NOOP_PROFILE).encode(), json.dumps(NOOP_GRANTED).encode()

    class Handler(BaseHTTPRequestHandler):
        def _drain(self) -> None:
            """Read the body: chunked (as the plugin sends it) or with a Content-Length."""
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                self.rfile.read(size + 2)  # the chunk and its CRLF
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers

        def _send(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            self._drain()
            with lock:
                counts[self.path] = counts.get(self.path, 0) + 1
            self._send(profile if self.path == "/user/get-profile" else granted)

        def do_GET(self) -> None:
            with lock:
                self._send(json.dumps(counts).encode())

        def log_message(self, format: str, *args: Any) -> None:
            """No access log: B must be as cheap as possible."""

    with ThreadingHTTPServer((processes.LOOPBACK, port), Handler) as server:
        server.serve_forever()


def start_noop(state: Path) -> processes.Service:
    """Run :func:`serve_noop` as a child process (its own interpreter, as authsvc has)."""
    port = processes.free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--noop-server", str(port)]
    return processes.Service(
        "noop", argv, port, state / "noop.log", ready_path="/counts", cwd=ROOT
    ).start()


class Counter:
    """Callbacks a service received so far, by path."""

    def __init__(self, service: processes.Service, *, access_log: bool) -> None:
        self.service = service
        self.access_log = access_log

    def counts(self) -> dict[str, int]:
        if not self.access_log:
            return dict(requests.get(f"{self.service.url}/counts", timeout=10).json())
        counts: dict[str, int] = {}
        for path, _ in callback_log(self.service):
            counts[path] = counts.get(path, 0) + 1
        return counts


ACCESS_LINE = re.compile(r'"POST (/[a-z/-]+)" (\d{3}) \S+ (\d+)ms')


def callback_log(service: processes.Service) -> list[tuple[str, int]]:
    """Return (path, ms) of every plugin callback in gunicorn's access log."""
    text = service.log_path.read_text(errors="replace")
    return [(m[1], int(m[3])) for m in ACCESS_LINE.finditer(text) if m[1] in CALLBACKS]


# --- the study and the session ------------------------------------------------------------------


class PluginStudy(Study):
    """The same study stored in every Orthanc, through the plugin, with the bench label."""

    def __init__(self, targets: list[tuple[str, dict[str, str]]], n_instances: int) -> None:
        import pydicom

        self.instances = []
        blobs = make_study(n_series=1, n_instances=n_instances, study_description="bench")
        for url, headers in targets:
            answer: dict[str, Any] = {}
            for blob in blobs:
                stored = requests.post(f"{url}/instances", data=blob, headers=headers, timeout=30)
                stored.raise_for_status()
                answer = stored.json()
            self.id = answer["ParentStudy"]
            labelled = requests.put(
                f"{url}/studies/{self.id}/labels/{LABEL}", headers=headers, timeout=30
            )
            labelled.raise_for_status()
        for blob in blobs:
            ds = pydicom.dcmread(io.BytesIO(blob))
            self.uid = ds.StudyInstanceUID
            self.instances.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))


def session(base: str, study: Study, frames: int, headers: dict[str, str]) -> float:
    """Run one viewer-like session against ``base`` on one connection; return its seconds."""
    series = study.instances[0][0]
    with requests.Session() as http:
        http.headers.update(headers)
        start = time.perf_counter()
        for path in (
            f"/dicom-web/studies?StudyInstanceUID={study.uid}",
            f"/dicom-web/studies/{study.uid}/metadata",
            f"/dicom-web/studies/{study.uid}/series/{series}/metadata",
        ):
            answer = http.get(f"{base}{path}", timeout=30)
            if answer.status_code != 200 or not answer.json():
                raise RuntimeError(f"{path} answered {answer.status_code} at {base}")
        for i in range(frames):
            frame = http.get(f"{base}{study.frame_path(i)}", headers=FRAME_ACCEPT, timeout=30)
            if frame.status_code != 200:
                raise RuntimeError(f"frame request answered {frame.status_code} at {base}")
            _ = frame.content
        return time.perf_counter() - start


def paired_session(
    sides: list[tuple[str, dict[str, str]]], study: Study, frames: int, flip: bool
) -> list[float]:
    """Run the session of :func:`session` on every side in lock-step, request by request.

    Each side keeps its own keep-alive connection and its own clock (the sum of its requests'
    times), and the order alternates at every step: a burst of load from elsewhere on the
    machine hits every side alike instead of one whole session. Return the seconds per side.
    """
    series = study.instances[0][0]
    paths: list[tuple[str, dict[str, str]]] = [
        (f"/dicom-web/studies?StudyInstanceUID={study.uid}", {}),
        (f"/dicom-web/studies/{study.uid}/metadata", {}),
        (f"/dicom-web/studies/{study.uid}/series/{series}/metadata", {}),
    ] + [(study.frame_path(i), FRAME_ACCEPT) for i in range(frames)]
    clients = [requests.Session() for _ in sides]
    totals = [0.0 for _ in sides]
    try:
        for step, (path, accept) in enumerate(paths):
            order = list(range(len(sides)))
            if (step % 2 == 1) != flip:
                order.reverse()
            for k in order:
                base, headers = sides[k]
                start = time.perf_counter()
                answer = clients[k].get(f"{base}{path}", headers={**accept, **headers}, timeout=30)
                _ = answer.content
                totals[k] += time.perf_counter() - start
                if answer.status_code != 200:
                    raise RuntimeError(f"{path} answered {answer.status_code} at {base}")
    finally:
        for client in clients:
            client.close()
    return totals


# --- callbacks sent straight to a service -------------------------------------------------------


def profile_callback_ms(port: int, token: str) -> float:
    """Send one profile callback as the plugin does (new connection, Basic, chunked JSON)."""
    body = json.dumps({"server-id": None, "token-key": "Authorization", "token-value": token})
    head = (
        f"POST /user/get-profile HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: {basic(PLUGIN_USER, PLUGIN_PASSWORD)}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    payload = head.encode() + chunked(body.encode(), 64)
    start = time.perf_counter()
    with socket.create_connection((processes.LOOPBACK, port), timeout=10) as sock:
        sock.sendall(payload)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    elapsed = (time.perf_counter() - start) * 1000
    if not response.startswith(b"HTTP/1.1 200") and not response.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"profile callback answered {response[:80]!r}")
    return elapsed


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {path: after.get(path, 0) - before.get(path, 0) for path in after}


def _callbacks(counts: dict[str, int]) -> str:
    profile = counts.get("/user/get-profile", 0)
    validate = counts.get("/tokens/validate", 0)
    other = sum(counts.values()) - profile - validate
    return f"{profile}p+{validate}v" + (f"+{other}o" if other else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="authsvc gunicorn sync workers")
    parser.add_argument("--callbacks", type=int, default=200, help="direct profile callbacks")
    parser.add_argument("--noop-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_server:
        serve_noop(args.noop_server)
        return

    with tempfile.TemporaryDirectory(prefix="authsvc-bench-plugin-") as tmp:
        state = Path(tmp)
        started: list[processes.Service] = []
        try:
            idp = processes.start_idp(state / "idp", processes.free_port())
            started.append(idp)
            noop = start_noop(state)
            started.append(noop)
            roles_file = state / "roles.json"
            roles_file.write_text(json.dumps(ROLES))
            env = {
                "AUTHSVC_ENV": "testing",
                "AUTHSVC_DATA_DIR": str(state / "data"),
                "AUTHSVC_SECRET_KEY": INSECURE_SECRET,
                "AUTHSVC_OIDC_ISSUER": idp.issuer,
                "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
                "AUTHSVC_PLUGIN_USERNAME": PLUGIN_USER,
                "AUTHSVC_PLUGIN_PASSWORD": PLUGIN_PASSWORD,
                "AUTHSVC_ROLES_FILE": str(roles_file),
                "AUTHSVC_ADMIN_ROLES": "admin",
                "AUTHSVC_WORKERS": str(args.workers),
                "AUTHSVC_THREADS": "1",
                "AUTHSVC_LOG_LEVEL": "warning",
            }
            init_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
            subprocess.run(
                [str(Path(sys.prefix) / "bin" / "authsvc"), "init-db"],
                env={**init_env, **env},
                check=True,
                capture_output=True,
            )
            authsvc = processes.start_gunicorn_app(state / "authsvc", processes.free_port(), env)
            started.append(authsvc)

            def plugin_config(url: str) -> dict[str, Any]:
                return processes.authorization_section(url, PLUGIN_USER, PLUGIN_PASSWORD)

            orthanc_a = processes.start_orthanc(
                state / "orthanc-a", processes.free_port(), authorization=plugin_config(authsvc.url)
            )
            started.append(orthanc_a)
            orthanc_b = processes.start_orthanc(
                state / "orthanc-b", processes.free_port(), authorization=plugin_config(noop.url)
            )
            started.append(orthanc_b)

            admin = {"Authorization": f"Bearer {idp.password_token('bob')['access_token']}"}
            study = PluginStudy([(orthanc_a.url, admin), (orthanc_b.url, admin)], args.instances)
            jwt = idp.password_token("alice")["access_token"]
            api_key = requests.post(
                f"{authsvc.url}/api/api-keys",
                json={"name": "bench"},
                headers={"Authorization": f"Bearer {jwt}"},
                timeout=10,
            )
            api_key.raise_for_status()
            # One fresh JWT per cold session (and its warm-up), fetched before any timing.
            fresh = [idp.password_token("alice")["access_token"] for _ in range(args.rounds + 1)]

            def headers_for(case: str, round_: int) -> dict[str, str]:
                if case == "warm JWT":
                    return {"Authorization": f"Bearer {jwt}"}
                if case == "cold JWT":
                    return {"Authorization": f"Bearer {fresh[round_]}"}
                return {"api-key": api_key.json()["key"]}

            cases = ["warm JWT", "cold JWT", "API key"]
            sides = [
                ("A", orthanc_a.url, Counter(authsvc, access_log=True)),
                ("B", orthanc_b.url, Counter(noop, access_log=False)),
            ]
            for case in cases:  # warm-up: page cache, plugin caches for the warm cases
                for _, base, _ in sides:
                    session(base, study, min(args.frames, 20), headers_for(case, args.rounds))
            walls: dict[tuple[str, str], list[float]] = {}
            calls: dict[tuple[str, str], dict[str, int]] = {}
            for round_ in range(args.rounds):
                for case in cases:
                    before = [counter.counts() for _, _, counter in sides]
                    times = paired_session(
                        [(base, headers_for(case, round_)) for _, base, _ in sides],
                        study,
                        args.frames,
                        flip=round_ % 2 == 1,
                    )
                    for (side, _, counter), wall, old in zip(sides, times, before, strict=True):
                        walls.setdefault((case, side), []).append(wall)
                        total = calls.setdefault((case, side), {})
                        for path, n in _delta(counter.counts(), old).items():
                            total[path] = total.get(path, 0) + n

            # One frame at a time, interleaved request by request on kept-alive connections (warm
            # tokens): the per-frame difference, free of the drift between rounds. "A, admin" is
            # bob, whose authsvc profile has ["*"] like the no-op one: A/B for him is the plugin
            # and Orthanc alone, so a gap for alice (labels ["bench"]) is the plugin's label check.
            streams = [
                ("A, alice (labels bench)", orthanc_a.url, headers_for("warm JWT", 0)),
                ("A, bob (labels *)", orthanc_a.url, admin),
                ("B, alice (no-op, *)", orthanc_b.url, headers_for("warm JWT", 0)),
            ]
            for _, base, headers in streams:
                session(base, study, min(args.frames, 20), headers)
            per_frame: dict[str, list[float]] = {name: [] for name, _, _ in streams}
            clients = {name: requests.Session() for name, _, _ in streams}
            for i in range(args.frames * 2):
                for name, base, headers in streams if i % 2 == 0 else streams[::-1]:
                    started_at = time.perf_counter()
                    clients[name].get(
                        f"{base}{study.frame_path(i)}",
                        headers={**FRAME_ACCEPT, **headers},
                        timeout=30,
                    ).raise_for_status()
                    per_frame[name].append((time.perf_counter() - started_at) * 1000)
            for client in clients.values():
                client.close()

            # Where authsvc's time goes: the callbacks as gunicorn timed them, and profile
            # callbacks sent straight to each service (new connection, chunked, like the plugin).
            logged = callback_log(authsvc)
            profile_callback_ms(authsvc.port, jwt)
            direct = {
                "no-op service, any token": [
                    profile_callback_ms(noop.port, jwt) for _ in range(args.callbacks)
                ],
                "authsvc, JWT seen before": [
                    profile_callback_ms(authsvc.port, jwt) for _ in range(args.callbacks)
                ],
            }
            first_seen = [idp.password_token("alice")["access_token"] for _ in range(50)]
            direct["authsvc, first-seen JWT"] = [
                profile_callback_ms(authsvc.port, token) for token in first_seen
            ]
        finally:
            for service in reversed(started):
                service.stop()

    print(
        f"\nplugin path: viewer session = QIDO + study metadata + series metadata + "
        f"{args.frames} frames on one connection per side, A and B in lock-step request by "
        f"request, {args.rounds} rounds; "
        f"A = Orthanc + plugin + authsvc (gunicorn -w {args.workers} sync, SQLite), "
        f"B = Orthanc + plugin + no-op service"
    )
    print(
        f"{'case':<10}{'A median s':>12}{'B median s':>12}{'A min s':>9}{'B min s':>9}"
        f"{'A/B':>7}{'paired':>8}{'A callbacks':>13}{'B callbacks':>13}"
    )
    ratios: dict[str, float] = {}
    for case in cases:
        a, b = statistics.median(walls[(case, "A")]), statistics.median(walls[(case, "B")])
        ratios[case] = a / b
        # The median of each round's A/B: the two sessions of a pair ran side by side.
        paired = statistics.median(
            x / y for x, y in zip(walls[(case, "A")], walls[(case, "B")], strict=True)
        )
        print(
            f"{case:<10}{a:>12.3f}{b:>12.3f}{min(walls[(case, 'A')]):>9.3f}"
            f"{min(walls[(case, 'B')]):>9.3f}{a / b:>7.3f}{paired:>8.3f}"
            f"{_callbacks(calls[(case, 'A')]):>13}{_callbacks(calls[(case, 'B')]):>13}"
        )
    print(
        f"A/B = ratio of the medians; paired = median of the rounds' A/B; callbacks = what each "
        f"service received in the {args.rounds} timed sessions (p = profile, v = validate)"
    )
    for case in cases:
        verdict = "met" if ratios[case] <= 1.10 else "not met"
        print(f"target ≤ 1.10 ({case}): {verdict} (A/B = {ratios[case]:.3f})")

    print(f"\none frame, {args.frames * 2} requests per stream, interleaved request by request")
    print(f"{'stream':<26}{'p50 ms':>8}{'p90 ms':>8}{'p50 vs B':>10}")
    b50 = _percentile(per_frame["B, alice (no-op, *)"], 50)
    for name, values in per_frame.items():
        p50 = _percentile(values, 50)
        print(f"{name:<26}{p50:>8.2f}{_percentile(values, 90):>8.2f}{p50 / b50:>10.3f}")

    cold_extra = statistics.median(walls[("cold JWT", "A")]) - statistics.median(
        walls[("warm JWT", "A")]
    )
    cold_calls = sum(calls[("cold JWT", "A")].values()) / args.rounds
    # authsvc's share of a cold session: its callbacks times what one costs sent straight to it.
    share = cold_calls * _percentile(direct["authsvc, first-seen JWT"], 50) / 1000
    print(
        f"\nauthsvc in a cold session: {cold_calls:.1f} callbacks x first-seen p50 = "
        f"{share * 1000:.1f} ms, {share / statistics.median(walls[('cold JWT', 'B')]) * 100:.1f} % "
        f"of B's session; cold minus warm session on A: {cold_extra * 1000:+.1f} ms (noise-bound)"
    )
    for path in CALLBACKS:
        ms = [float(m) for p, m in logged if p == path]
        if ms:
            print(
                f"gunicorn access log, {path}: {len(ms)} callbacks, "
                f"p50 {_percentile(ms, 50):.0f} ms, max {max(ms):.0f} ms (whole ms)"
            )
    print("\nprofile callback sent straight to the service (one connection each, chunked)")
    print(f"{'service':<28}{'n':>5}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}")
    for name, values in direct.items():
        print(
            f"{name:<28}{len(values):>5}{_percentile(values, 50):>8.2f}"
            f"{_percentile(values, 90):>8.2f}{_percentile(values, 99):>8.2f}"
        )


if __name__ == "__main__":
    main()
