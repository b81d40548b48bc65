"""Tell gunicorn that a long request is still making progress.

gunicorn's *sync* workers (authsvc's default: the fastest for the plugin's traffic) only report
to the arbiter between requests, so the arbiter kills a worker whose request runs longer than
``worker_timeout``: a multi-gigabyte upload would be cut off in the middle. The upload views
call :func:`progress` whenever bytes arrive from the client or an instance goes to Orthanc; it
forwards to the worker's ``notify`` (installed by ``authsvc.gunicorn_conf``) at most once per
second. A request that stops making progress is still killed after ``worker_timeout``.

Outside gunicorn (tests, ``flask run``) nothing is installed and :func:`progress` does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between two notifications (gunicorn's own loop notifies about as often).
INTERVAL = 1.0

_notify: Callable[[], None] | None = None
_last = 0.0


def install(notify: Callable[[], None] | None) -> None:
    """Use ``notify`` (a gunicorn worker's) from now on; None turns notifications off."""
    global _notify, _last
    _notify = notify
    _last = 0.0


def progress() -> None:
    """Say "still working" to the worker's arbiter, at most once per :data:`INTERVAL`."""
    global _last
    notify = _notify
    if notify is None:
        return
    now = time.monotonic()
    if now - _last >= INTERVAL:
        _last = now
        notify()
