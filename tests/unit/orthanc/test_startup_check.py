"""authsvc.orthanc.startup_check: wait for authsvc, probe label writes, stop on a lasting refusal.

The real thing (gunicorn, the real plugin asking authsvc about its service key, exit status 3)
runs in tests/integration/test_real_plugin.py; here the pieces, with the probe faked.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from authsvc.config import load_settings
from authsvc.orthanc import startup_check

pytestmark = pytest.mark.unit


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"0.0.0.0:{server.server_address[1]}"  # a wildcard bind is reached on loopback
    server.shutdown()
    server.server_close()


def test_wait_until_serving(healthz: str) -> None:
    assert startup_check.wait_until_serving(healthz, timeout=5)
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as closed:
        port = closed.server_address[1]
    assert not startup_check.wait_until_serving(f"127.0.0.1:{port}", timeout=0.3)


@pytest.mark.parametrize(
    ("answers", "stopped"),
    [
        ([[]], False),
        ([["refused"], []], False),  # a passing refusal (the plugin's callback timed out)
        ([["refused"], ["refused"], ["refused"]], True),
    ],
)
def test_only_a_lasting_refusal_stops_the_server(
    healthz: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answers: list[list[str]],
    stopped: bool,
) -> None:
    settings = load_settings({"env": "testing", "bind": healthz, "orthanc_url": "http://o.test"})
    calls: list[int] = []
    kills: list[tuple[int, int]] = []

    def probe(servers: Any) -> list[str]:
        calls.append(1)
        return answers[min(len(calls), len(answers)) - 1]

    monkeypatch.setattr(startup_check, "label_write_problems", probe)
    # Module-wide for the test's length: the check's pause, and its signal to the master.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    startup_check._check(settings, 4242)
    assert kills == ([(4242, signal.SIGALRM)] if stopped else [])
    assert len(calls) == (3 if stopped else len(answers))
    err = capsys.readouterr().err
    assert ("start-up check failed: refused" in err) is stopped
