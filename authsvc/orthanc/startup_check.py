"""authsvc.orthanc.startup_check: once authsvc serves, make sure every Orthanc lets it write labels.

Albums are Orthanc labels that authsvc writes with its own credentials. An Orthanc that
refuses them would make every album look empty and every upload end as "pending": that is a
configuration error, said once at start-up instead of per request.

The check cannot run before authsvc answers HTTP: with ``orthanc_service_key``, Orthanc's
authorization plugin asks authsvc itself for the key's profile while deciding on the probe.
So gunicorn's master (:mod:`authsvc.gunicorn_conf`) starts :func:`start` when it is ready; a
thread waits for ``/healthz`` on the bind address, probes every server
(:func:`authsvc.orthanc.label_write_problems`), and on a refusal writes one sentence per server
to stderr and stops the server with exit status 3 (:data:`EXIT_STATUS`).
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from authsvc.config import Settings
from authsvc.orthanc.client import label_write_problems

__all__ = ["EXIT_STATUS", "start", "wait_until_serving"]

log = logging.getLogger(__name__)

#: Exit status of a server stopped because an Orthanc refuses authsvc's label writes.
EXIT_STATUS = 3
#: Probes before a refusal counts, and the pause between them (seconds).
_ATTEMPTS = 3
_RETRY_DELAY = 2.0
#: The master is told to stop with this signal (gunicorn itself handles none of it).
_STOP_SIGNAL = signal.SIGALRM


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (``bind = unix:/path``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _connection(bind: str, timeout: float) -> http.client.HTTPConnection:
    if bind.startswith("unix:"):
        return _UnixConnection(bind[len("unix:") :], timeout)
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def wait_until_serving(bind: str, *, timeout: float = 60.0) -> bool:
    """Poll ``GET /healthz`` on the bind address until it answers 200 (False on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = _connection(bind, timeout=2.0)
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    return False


def _check(settings: Settings, master_pid: int) -> None:
    # Imported here: building the registry needs only the settings, no app.
    from authsvc.services import orthanc_servers

    if not wait_until_serving(settings.bind):
        log.warning("start-up check skipped: authsvc did not answer /healthz on %s", settings.bind)
        return
    servers = orthanc_servers(settings)
    problems = label_write_problems(servers)
    for _ in range(_ATTEMPTS - 1):
        if not problems:
            return
        # A refusal can be passing: the plugin's own callback to authsvc (for the service key)
        # timed out on a loaded machine. Only a refusal that stays one stops the server.
        time.sleep(_RETRY_DELAY)
        problems = label_write_problems(servers)
    if not problems:
        return
    for problem in problems:
        sys.stderr.write(f"authsvc: start-up check failed: {problem}\n")
    sys.stderr.flush()
    os.kill(master_pid, _STOP_SIGNAL)


def start(arbiter: Any, settings: Settings) -> None:
    """Run the check in a thread of gunicorn's master; a refusal halts it with status 3.

    Called from gunicorn's ``when_ready`` (main thread: signal handlers can only be set
    there). The handler raises gunicorn's ``HaltServer`` in the master's loop, which stops the
    workers gracefully and exits with :data:`EXIT_STATUS`.
    """
    if not settings.orthanc_url and not settings.orthanc_servers:
        return
    from gunicorn.errors import HaltServer  # type: ignore[import-untyped]

    def halt(signum: int, frame: object) -> None:
        raise HaltServer("an Orthanc refuses authsvc's label writes", EXIT_STATUS)

    signal.signal(_STOP_SIGNAL, halt)
    threading.Thread(
        target=_check, args=(settings, os.getpid()), name="authsvc-startup-check", daemon=True
    ).start()
