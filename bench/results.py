"""Write docs/results.md: the hardening suites' figures and the benchmarks, with the machine.

Runs the attack, fuzz, fault and scale-out tests under pytest with a small plugin that counts,
per family (the test's name: ``test_<family>_…``), the tests, the requests they sent (Flask
test-client calls and real HTTP calls made by the test itself, during the test body only) and
the outcomes. Then it reads the benchmark outputs in build/bench/ (``--bench`` runs the
benchmarks first, shortened) and writes everything to docs/results.md with ``uname -a``, the
CPU count and the date.

Usage: ``python bench/results.py [--bench] [--fuzz-examples N] [--output docs/results.md]``
(``make results``).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_OUT = ROOT / "build" / "bench"
SUITES = [
    "tests/functional/test_attacks.py",
    "tests/functional/test_attacks_credentials.py",
    "tests/functional/test_attacks_review.py",
    "tests/functional/test_fuzz.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_scale_out.py",
]
# What each family tries, for the table.
FAMILIES = {
    "escalation": "every role of album A × every album action on album B (API, uploads, "
    "DICOMweb, gate)",
    "idor": "album B's member/token/study ids through album A's routes; forged ids",
    "confusion": "upload ⇄ read ⇄ share tokens, album A's token on B, server X's on Y, "
    "another deployment's keys",
    "jwt": "alg none, HS256 keyed with the public key, wrong iss/aud, expired, future nbf, "
    "foreign key, unknown-kid flood",
    "tamper": "every character of every token kind changed (read, share, API key, JWT, upload)",
    "replay": "revoked read/upload/share tokens and API keys on every path",
    "lifecycle": "credentials whose maker lost the right: removed, demoted, album deleted, "
    "owner disabled, share-link maker no longer sees the study",
    "injection": "hostile album names (labels, paths, markup, SQL)",
    "paths": "gate path tricks: .., %2F, //, case, trailing dots, query-string tokens",
    "bodies": "oversized and deeply nested bodies",
    "secrets": "every secret used, grepped in the captured logs",
    "csrf": "admin forms without the session's token; a planted session before sign-in",
    "session": "admin sign-in: redirect target after sign-in, idle timeout, framing and caching "
    "headers",
    "fuzz": "schemathesis, positive and negative cases, every JSON operation",
    "faults": "Orthanc, PostgreSQL, OIDC provider stopped mid-traffic; uploads cut mid-body",
    "scale-out": "two instances behind nginx: revocation, membership, concurrent edits",
}
BENCHES = {
    "run": ["bench/run.py", "--duration", "3", "--rounds", "1"],
    "albums": ["bench/albums.py", "--lookups", "500", "--studies", "1000", "--rounds", "5"],
    # --ohif: the recorded OHIF 3.13 session (bench/ohif_session.json) through the same doors.
    "gate": ["bench/gate.py", "--frames", "200", "--rounds", "5", "--decisions", "500", "--ohif"],
    "upload": [
        "bench/upload.py",
        "--total-mb",
        "128",
        "--batch-mb",
        "32",
        "--rounds",
        "4",
    ],
    "browser-upload": ["bench/browser_upload.py", "--files", "200", "--rounds", "3"],
}


# What the suites found and fixed, and what they found that is still open (kept out of the
# suite so it stays green; each has a reproduction in the named place).
FOUND_AND_FIXED = [
    "member ids took any `int()` spelling (`１`, `+1`, `1_0`) and 19+ digits overflowed "
    "PostgreSQL's bigint (500) — idor",
    "a NUL byte in a URL path reached PostgreSQL as a 500 — idor",
    "a deeply nested JSON body raised RecursionError (500) — bodies",
    "a stopped PostgreSQL made every API call a 500; now a JSON 503 — faults",
    "the /api OpenAPI document lacked the 400 of every operation with a body — fuzz",
    "nginx templates streamed every request body to authsvc, so a dozen clients trickling JSON "
    "bodies held every authsvc thread; now only the upload routes stream, the rest is buffered "
    "by nginx, with a `client_body_timeout` — scale-out",
    "any token whose `aud` held `account` was accepted, which Keycloak writes into the tokens "
    "of every client of the realm: a token minted for another application worked here; now "
    "`account` counts only with an `azp` in `oidc_trusted_clients`, and `*` is refused in "
    "production — jwt",
    "upload and album read tokens kept working after their maker was removed from the album, "
    "demoted or the album deleted; share links after their maker lost the study; API keys had "
    "no way to stop with their owner; now each use asks `policy.decide_credential_backing` "
    "(admins can disable a person) — lifecycle",
    "`zipfile` read a ZIP's whole central directory before any limit: a 26 MB archive of "
    "300,000 empty folders grew a worker by 144 MB; the directory is now bounded by the item "
    "limit before it is read (413) — bodies",
    "non-ASCII HTTP Basic credentials were a 500 on the upload routes and plugin callbacks; now "
    "a 401 — bodies",
    "authsvc's own sealed tokens (`up1.`/`ar1.`/`sh1.`) were not masked in log lines — secrets",
    "nginx's error log quoted the request line, so with authsvc down every `?token=` was "
    "logged; the templates log errors at `crit` — secrets",
    "the gate stack forwarded users' bearer tokens, `token`/`api-key` headers and the admin "
    "session cookie to Orthanc; stripped now (HTTP Basic still passes) — secrets",
    "admin pages sent no framing, sniffing or caching headers (pages name patients) — session",
    "a `next=` with CR/LF after sign-in was a 500 and dot segments left /admin — session",
    "admin sign-ins had no idle timeout (8 h on an unattended workstation); now "
    "`admin_session_idle_timeout`, 30 min by default — session",
]
# Each with the decision taken about it.
STILL_OPEN = [
    "**roles frozen in an admin session** for up to `admin_session_lifetime` (authsvc holds no "
    "Keycloak admin credentials to re-read them). Decision: keep; a site lowers the lifetime, "
    "and disabling the person in authsvc ends their sessions and credentials at once.",
    "**`?token=` reaches Orthanc in the URI** (OE2 and viewers put tokens there). Decision: "
    "keep for compatibility; Orthanc logs stay at the default level and nginx's access logs "
    "record paths only.",
    "**a renamed API key header is not stripped at the gate** (only the default `api-key`). "
    "Decision: documented; a site that renames it adds one `proxy_set_header` line.",
    "**the gate does not compare a read token's server id** with the Orthanc it guards (the "
    "plugin path does). Decision: keep; the study would also have to carry that album's random "
    "label, which only authsvc sets.",
    "**`iat` is not checked** on JWTs. Decision: keep; `exp` and `nbf` bound the use, and "
    "Keycloak's lifetimes are minutes.",
]


@dataclass
class Family:
    tests: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)


def family_of(nodeid: str) -> str:
    """Return the family a test counts for, from its file and name."""
    for marker, family in (
        ("test_fuzz.py", "fuzz"),
        ("test_faults.py", "faults"),
        ("test_scale_out.py", "scale-out"),
    ):
        if marker in nodeid:
            return family
    stem = nodeid.rsplit("::", 1)[-1].split("[", 1)[0].removeprefix("test_")
    for family in FAMILIES:
        if stem.startswith(family):
            return family
    return "other"


class Counter:
    """A pytest plugin: requests and outcomes per family, counted during test bodies."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = collections.defaultdict(Family)
        self._active: Family | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._patch()

    def _patch(self) -> None:
        import requests
        import werkzeug.test

        counter = self
        original_open = werkzeug.test.Client.open
        original_request = requests.Session.request

        def counted_open(client: Any, *args: Any, **kwargs: Any) -> Any:
            outer = getattr(counter._local, "depth", 0)
            counter._local.depth = outer + 1
            try:
                response = original_open(client, *args, **kwargs)
            finally:
                counter._local.depth = outer
            if outer == 0:
                counter._count(getattr(response, "status_code", 0))
            return response

        def counted_request(session: Any, *args: Any, **kwargs: Any) -> Any:
            # Calls the app makes while serving a test-client request are not the test's.
            nested = getattr(counter._local, "depth", 0) > 0
            response = original_request(session, *args, **kwargs)
            if not nested:
                counter._count(response.status_code)
            return response

        werkzeug.test.Client.open = counted_open  # type: ignore[method-assign]
        requests.Session.request = counted_request  # type: ignore[method-assign]

    def _count(self, status: int) -> None:
        with self._lock:
            if self._active is not None:
                self._active.requests += 1
                self._active.statuses[status] += 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        family = self.families[family_of(item.nodeid)]
        self._active = family
        start = time.monotonic()
        try:
            yield
        finally:
            family.seconds += time.monotonic() - start
            self._active = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.failed):
            family = self.families[family_of(report.nodeid)]
            family.tests += 1
            if report.passed:
                family.passed += 1
            else:
                family.failed.append(report.nodeid)


def run_suites(fuzz_examples: int) -> tuple[Counter, int, float]:
    os.environ.setdefault("AUTHSVC_ENV", "testing")
    os.environ["FUZZ_EXAMPLES"] = str(fuzz_examples)
    counter = Counter()
    start = time.monotonic()
    code = pytest.main(["-q", "-p", "no:cacheprovider", *SUITES], plugins=[counter])
    return counter, int(code), time.monotonic() - start


def run_benches() -> None:
    BENCH_OUT.mkdir(parents=True, exist_ok=True)
    for name, argv in BENCHES.items():
        print(f"benchmark {name} ...", flush=True)
        result = subprocess.run(
            [sys.executable, *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "AUTHSVC_ENV": "testing"},
        )
        text = result.stdout if result.returncode == 0 else result.stdout + result.stderr
        (BENCH_OUT / f"{name}.txt").write_text(text)


def machine() -> list[str]:
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False)
    return [
        f"- `uname -a`: `{uname.stdout.strip()}`",
        f"- CPUs: {os.cpu_count()}; Python {platform.python_version()}; load average "
        f"{os.getloadavg()[0]:.1f} when the table was written (the machine is shared: "
        "benchmark figures are shortened runs, compare ratios within one run)",
        f"- Generated: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def _script_of(name: str) -> str:
    """Return the script a benchmark output file came from (its BENCHES entry)."""
    return BENCHES[name][0] if name in BENCHES else f"bench/{name}.py"


def render(counter: Counter, exit_code: int, seconds: float, fuzz_examples: int) -> str:
    lines = [
        "# Hardening results",
        "",
        "Generated by `make results` (`python bench/results.py`); do not edit by hand. The",
        f"suites are ordinary tests of `make test` ({', '.join(SUITES)}); every request",
        "counted below got the answer its test demands, or the test failed and is listed.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Attacks, fuzzing, faults and scale-out",
        "",
        f"pytest exit code {exit_code}; {seconds:.0f} s in all; fuzzing at {fuzz_examples} "
        "examples per operation and mode (`make fuzz` runs 200).",
        "",
        "| family | what is tried | tests | passed | requests | answers seen |",
        "|---|---|---:|---:|---:|---|",
    ]
    total_requests = 0
    for name, what in [*FAMILIES.items(), ("other", "")]:
        family = counter.families.get(name)
        if family is None or family.tests == 0:
            continue
        total_requests += family.requests
        seen = ", ".join(f"{status}×{n}" for status, n in sorted(family.statuses.items()))
        lines.append(
            f"| {name} | {what} | {family.tests} | {family.passed} | {family.requests} | {seen} |"
        )
    lines += ["", f"Requests in all: {total_requests}.", ""]
    failed = [nodeid for family in counter.families.values() for nodeid in family.failed]
    if failed:
        lines += ["Failed:", "", *[f"- `{nodeid}`" for nodeid in failed], ""]
    lines += [
        "## Found by these suites",
        "",
        "Fixed:",
        "",
        *[f"- {item}" for item in FOUND_AND_FIXED],
        "",
        "Still open:",
        "",
        *([f"- {item}" for item in STILL_OPEN] or ["- nothing"]),
        "",
        "## Faults injected",
        "",
        "| fault | during the outage | afterwards |",
        "|---|---|---|",
        "| Orthanc stopped | gate 401/403 only, API 503 with a reason, never a 2xx that a "
        "healthy system refuses | healthy answers again without restarting authsvc |",
        "| PostgreSQL stopped (private cluster) | gate 401/403, API and plugin 503 | "
        "healthy again (pool pre-ping reconnects) |",
        "| OIDC provider stopped | known keys keep working, unknown keys 401/503 | tokens of "
        "the restarted provider accepted |",
        "| upload cut inside a part / the delimiter / the closing dashes (4 cuts) | complete "
        "instances stored and in the album (or a pending label), the cut one never stored, "
        "the attempt audited | — |",
        "",
        "## Benchmarks",
        "",
    ]
    outputs = sorted(BENCH_OUT.glob("*.txt")) if BENCH_OUT.is_dir() else []
    if not outputs:
        lines += ["No benchmark output in build/bench/ (run `make results` with `--bench`).", ""]
    for path in outputs:
        stamp = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        lines += [
            f"### {_script_of(path.stem)} (run {stamp.strftime('%Y-%m-%d %H:%M UTC')})",
            "",
            "```",
            path.read_text().rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="run the benchmarks first")
    parser.add_argument("--fuzz-examples", type=int, default=12)
    parser.add_argument("--output", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    if args.bench:
        run_benches()
    counter, code, seconds = run_suites(args.fuzz_examples)
    Path(args.output).write_text(render(counter, code, seconds, args.fuzz_examples))
    print(f"wrote {args.output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
