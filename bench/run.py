"""Benchmark authsvc's hot paths through gunicorn, next to a no-op endpoint (``make bench``).

Starts gunicorn with the app (SQLite, testing config, a fake OIDC provider served from this
process), then measures requests/s and p50/p99 latency of each endpoint with one TCP connection
per request (Orthanc's HTTP client opens a new connection for every callback) at a fixed
concurrency. Uses ``wrk`` with a Lua script when it is installed, else a small Python load
generator. Prints a table; asserts nothing. Compare ratios to the no-op line of the same run:
the load generator shares the machine's cores (see docs/ performance notes).

Usage: ``python bench/run.py [--duration 10] [--concurrency 16] [--workers 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from multiprocessing import Process
from multiprocessing import Queue
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLUGIN_USER = "orthanc-plugin"
PLUGIN_PASSWORD = "insecure-bench-plugin-password"


@dataclass
class Case:
    """One endpoint to measure."""

    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    expect: int = 200


@dataclass
class Result:
    """What one measurement produced."""

    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if self.p50_ms is not None and q == 50:
            return self.p50_ms
        if self.p99_ms is not None and q == 99:
            return self.p99_ms
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))
        return ordered[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- a fake OIDC provider (discovery + JWKS) served from this process ---------------------------


class FakeIdP:
    """Serves discovery and JWKS on loopback and signs tokens with a generated RSA key."""

    def __init__(self) -> None:
        from joserfc.jwk import RSAKey

        self.key = RSAKey.generate_key(2048, parameters={"kid": "bench", "alg": "RS256"})
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/realms/bench"
        jwks = {"keys": [self.key.as_dict(private=False)]}
        discovery = {"issuer": self.issuer, "jwks_uri": self.issuer + "/certs"}
        routes = {
            "/realms/bench/.well-known/openid-configuration": discovery,
            "/realms/bench/certs": jwks,
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                doc = routes.get(self.path)
                body = json.dumps(doc).encode()
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, username: str, roles: list[str], *, lifetime: int = 3600) -> str:
        from joserfc import jwt

        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": ["account", "orthanc"],
            "azp": "orthanc",
            "typ": "Bearer",
            "sub": f"sub-{username}",
            "preferred_username": username,
            "iat": now,
            "exp": now + lifetime,
            "realm_access": {"roles": roles},
        }
        return jwt.encode({"alg": "RS256", "kid": "bench"}, claims, self.key)

    def close(self) -> None:
        self.server.shutdown()


# --- the server under test -----------------------------------------------------------------------


class Server:
    """gunicorn serving ``authsvc.app:create_app()`` with a throw-away SQLite database."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "AUTHSVC_BIND": f"127.0.0.1:{self.port}"}
        self.env["AUTHSVC_WORKERS"] = str(workers)
        self.env["AUTHSVC_LOG_LEVEL"] = "warning"
        bin_dir = Path(sys.executable).parent
        subprocess.run(
            [str(bin_dir / "authsvc"), "init-db"], env=self.env, check=True, capture_output=True
        )
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "gunicorn"),
                "-c",
                "python:authsvc.gunicorn_conf",
                "--access-logfile",
                "/dev/null",
                "authsvc.app:create_app()",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = request_once(self.port, Case("ready", "GET", "/healthz"))
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("bench: gunicorn did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def raw_request(case: Case, port: int) -> bytes:
    lines = [f"{case.method} {case.path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in case.headers.items()]
    if case.body:
        lines.append(f"Content-Length: {len(case.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + case.body


def request_once(port: int, case: Case, payload: bytes | None = None) -> tuple[int, bytes]:
    """Send one request on a new connection; return (status, response bytes)."""
    data = payload if payload is not None else raw_request(case, port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    return (int(match.group(1)) if match else 0), response


# --- load generators ------------------------------------------------------------------------


def _py_worker(port: int, case: Case, stop_at: float, out: Queue[tuple[list[float], int]]) -> None:
    payload = raw_request(case, port)
    latencies: list[float] = []
    errors = 0
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        try:
            status, _ = request_once(port, case, payload)
        except OSError:
            status = 0
        latencies.append((time.perf_counter() - start) * 1000)
        if status != case.expect:
            errors += 1
    out.put((latencies, errors))


def run_python(port: int, case: Case, duration: float, concurrency: int) -> Result:
    """A small multiprocess load generator (used when wrk is not installed)."""
    out: Queue[tuple[list[float], int]] = Queue()
    stop_at = time.monotonic() + duration
    procs = [
        Process(target=_py_worker, args=(port, case, stop_at, out)) for _ in range(concurrency)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        lat, err = out.get()
        latencies += lat
        errors += err
    for p in procs:
        p.join()
    return Result(case.name, len(latencies), time.monotonic() - start, latencies, errors)


_WRK_LUA = """
wrk.method = "{method}"
wrk.path = "{path}"
wrk.body = {body}
{headers}
wrk.headers["Connection"] = "close"
local errors = 0
response = function(status, headers, body)
  if status ~= {expect} then errors = errors + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH %d %f %f %f %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run_wrk(port: int, case: Case, duration: float, concurrency: int, tmp: Path) -> Result:
    """Measure with wrk (one connection per request: Connection: close)."""
    headers = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in case.headers.items()
    )
    script = tmp / f"{re.sub(r'[^a-z0-9]+', '_', case.name.lower())}.lua"
    script.write_text(
        _WRK_LUA.format(
            method=case.method,
            path=case.path,
            body=_lua_string(case.body.decode()) if case.body else "nil",
            headers=headers,
            expect=case.expect,
        )
    )
    threads = min(concurrency, 2)
    proc = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{int(duration)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"BENCH (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", proc.stdout)
    if not match:
        raise SystemExit(f"bench: cannot read wrk output:\n{proc.stdout}\n{proc.stderr}")
    requests, seconds, p50, p99, errors = match.groups()
    # wrk counts non-2xx/3xx as status errors; the Lua callback does not see them all.
    return Result(
        case.name,
        int(requests),
        float(seconds),
        [],
        int(errors),
        p50_ms=float(p50),
        p99_ms=float(p99),
    )


# --- the cases -----------------------------------------------------------------------------------


def _basic() -> str:
    import base64

    return "Basic " + base64.b64encode(f"{PLUGIN_USER}:{PLUGIN_PASSWORD}".encode()).decode()


def _plugin_case(name: str, path: str, body: dict[str, Any]) -> Case:
    # Sorted keys, as the plugin sends them. wrk sends a Content-Length body (it cannot stream
    # chunked); the chunked path itself is covered by tests/integration/test_gunicorn.py.
    return Case(
        name,
        "POST",
        path,
        headers={"Authorization": _basic(), "Content-Type": "application/json"},
        body=json.dumps(body, sort_keys=True).encode(),
    )


def _json_call(server: Server, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
    data = json.dumps(body).encode()
    case = Case(
        path, method, path, headers={**headers, "Content-Type": "application/json"}, body=data
    )
    status, response = request_once(server.port, case)
    head, _, payload = response.partition(b"\r\n\r\n")
    if status >= 300:
        raise SystemExit(f"bench: setup call {method} {path} answered {status}: {payload[:300]!r}")
    return json.loads(payload)


def build_cases(server: Server, idp: FakeIdP) -> list[Case]:
    """Return the endpoints to measure; the first is the no-op baseline."""
    jwt = idp.token("alice", ["doctor"])
    api_key = _json_call(
        server, "POST", "/api/api-keys", {"Authorization": f"Bearer {jwt}"}, {"name": "bench"}
    )["key"]
    share = _json_call(
        server,
        "PUT",
        "/tokens/viewer-instant-link",
        {"Authorization": _basic()},
        {"resources": [{**STUDY, "level": "study"}], "server-id": None, "validity-duration": 3600},
    )["token"]
    validate = {"method": "get", "level": "study", "server-id": None, **STUDY}
    # An album read token: its maker (alice, the album's owner) is checked at every use.
    bearer = {"Authorization": f"Bearer {jwt}"}
    album = _json_call(server, "POST", "/api/albums", bearer, {"name": "bench"})
    read_token = _json_call(server, "POST", f"/api/albums/{album['id']}/read-tokens", bearer, {})
    return [
        Case("no-op (/healthz)", "GET", "/healthz"),
        _plugin_case(
            "POST /user/get-profile (JWT, warm)",
            "/user/get-profile",
            {"token-key": "token", "token-value": jwt, "server-id": None},
        ),
        _plugin_case(
            "POST /user/get-profile (API key)",
            "/user/get-profile",
            {"token-key": "api-key", "token-value": api_key, "server-id": None},
        ),
        _plugin_case(
            "POST /user/get-profile (anonymous)",
            "/user/get-profile",
            {"token-key": "", "token-value": "", "server-id": None},
        ),
        _plugin_case(
            "POST /tokens/validate (share link)",
            "/tokens/validate",
            {**validate, "token-key": "token", "token-value": share},
        ),
        _plugin_case(
            "POST /tokens/validate (album read token)",
            "/tokens/validate",
            {
                **validate,
                "labels": [album["orthanc_label"]],
                "token-key": "token",
                "token-value": read_token["token"],
            },
        ),
    ]


STUDY = {
    "orthanc-id": "b9c08539-26f93bde-c81ab0d7-bffaf2cb-a4d0bdd0",
    "dicom-uid": "1.2.840.113619.2.176.2025.1499492.7391.1171285944.390",
}

ROLES = {
    "roles": {"doctor": {"permissions": ["view", "download"], "authorized-labels": ["cardio"]}},
    "available-labels": [],
}


def first_seen_jwt_cost(idp: FakeIdP, tmp: Path, count: int = 300) -> tuple[float, float]:
    """Return (median, p99) ms of service time for JWTs never seen before, in-process.

    Measured around the profile callback's work (verify, compose) inside one app, JWKS warm,
    every token distinct so the verifier's cache never helps.
    """
    from authsvc.app import create_app
    from authsvc.identity.authn import Credentials

    app = create_app(
        {
            "env": "testing",
            "data_dir": str(tmp / "inproc"),
            "secret_key": "insecure-bench-secret-key-0123456789abcdef",
            "oidc_issuer": idp.issuer,
            "oidc_client_id": "orthanc",
            "roles_file": str(tmp / "roles.json"),
            "log_level": "warning",
        }
    )
    tokens = [idp.token(f"user{i}", ["doctor"]) for i in range(count + 1)]
    times: list[float] = []
    with app.app_context():
        from authsvc.database import init_db
        from authsvc.extensions import db

        init_db(db.engine)
        authn = app.extensions["authsvc"].authenticator
        authn.profile(authn.authenticate(Credentials(bearer=tokens[0])))  # JWKS + roles warm
        for token in tokens[1:]:
            start = time.perf_counter()
            authn.profile(authn.authenticate(Credentials(bearer=token)))
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--python", action="store_true", help="use the Python load generator")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per endpoint")
    args = parser.parse_args()

    use_wrk = shutil.which("wrk") is not None and not args.python
    idp = FakeIdP()
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {
            "AUTHSVC_ENV": "testing",
            "AUTHSVC_DATA_DIR": str(tmp / "data"),
            "AUTHSVC_SECRET_KEY": "insecure-bench-secret-key-0123456789abcdef",
            "AUTHSVC_OIDC_ISSUER": idp.issuer,
            "AUTHSVC_OIDC_CLIENT_ID": "orthanc",
            "AUTHSVC_PLUGIN_USERNAME": PLUGIN_USER,
            "AUTHSVC_PLUGIN_PASSWORD": PLUGIN_PASSWORD,
            "AUTHSVC_ROLES_FILE": str(tmp / "roles.json"),
        }
        (tmp / "roles.json").write_text(json.dumps(ROLES))
        server = Server(env, args.workers)
        try:
            cases = build_cases(server, idp)
            for case in cases:
                status, response = request_once(server.port, case)
                if status != case.expect:
                    raise SystemExit(
                        f"bench: {case.name} answered {status}, expected {case.expect}:\n"
                        + response.decode(errors="replace")[-500:]
                    )
            # Interleaved rounds: every endpoint is measured in each round, so a burst of
            # background load on the machine hits all of them alike, not just one.
            rounds: dict[str, list[Result]] = {case.name: [] for case in cases}
            slice_seconds = max(1.0, args.duration / args.rounds)
            for _ in range(args.rounds):
                for case in cases:
                    if use_wrk:
                        one = run_wrk(server.port, case, slice_seconds, args.concurrency, tmp)
                    else:
                        one = run_python(server.port, case, slice_seconds, args.concurrency)
                    rounds[case.name].append(one)
            results = [combine(rounds[case.name]) for case in cases]
        finally:
            server.close()
        first_seen = first_seen_jwt_cost(idp, tmp)
        idp.close()
    print_table(results, generator="wrk" if use_wrk else "python", args=args)
    print(
        f"\nfirst-seen JWT (verify RS256 + compose profile, in-process, no HTTP): "
        f"median {first_seen[0]:.3f} ms, p99 {first_seen[1]:.3f} ms"
    )


def combine(results: list[Result]) -> Result:
    """Merge the rounds of one endpoint: total requests and time, median percentiles."""
    first = results[0]
    return Result(
        first.name,
        sum(r.requests for r in results),
        sum(r.seconds for r in results),
        [x for r in results for x in r.latencies_ms],
        sum(r.errors for r in results),
        p50_ms=statistics.median(r.percentile(50) for r in results),
        p99_ms=statistics.median(r.percentile(99) for r in results),
    )


def print_table(results: list[Result], *, generator: str, args: argparse.Namespace) -> None:
    base = results[0].rps if results else 0.0
    print(
        f"\nauthsvc hot paths: gunicorn -w {args.workers} sync, {args.concurrency} concurrent, "
        f"one TCP connection per request, {args.duration:g} s each in {args.rounds} interleaved "
        f"rounds, load generator: {generator}"
    )
    header = (
        f"{'endpoint':<42} {'req/s':>9} {'vs no-op':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.rps / base:.2f}x" if base else "-"
        print(
            f"{r.name:<42} {r.rps:>9.0f} {ratio:>9} {r.percentile(50):>8.2f} "
            f"{r.percentile(99):>8.2f} {r.errors:>7}"
        )
    if results and statistics.fmean(r.rps for r in results) == 0:
        print("no requests completed")


if __name__ == "__main__":
    main()
