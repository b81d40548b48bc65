"""gunicorn settings for authsvc, read from the same configuration as the app.

Use: ``gunicorn -c python:authsvc.gunicorn_conf 'authsvc.app:create_app()'`` (``authsvc serve``
does exactly that). The configuration is validated here, in the master, so a bad value stops
start-up with one line naming the key instead of a traceback per worker.
"""

from __future__ import annotations

import sys
from typing import Any

from authsvc import liveness
from authsvc.config import load_settings
from authsvc.errors import ConfigError

try:
    _settings = load_settings()
except ConfigError as exc:
    sys.stderr.write(f"authsvc: configuration error: {exc}\n")
    sys.exit(2)

bind = [_settings.bind]
workers = _settings.workers
threads = _settings.threads
# Sync workers are the fastest for the plugin's one-request-per-connection traffic; threads
# only help clients that keep connections alive (see docs/performance.md).
worker_class = "gthread" if _settings.threads > 1 else "sync"
timeout = _settings.worker_timeout
graceful_timeout = 20
keepalive = 2
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level
# Path only (%(U)s), never the query string: the plugin allows tokens in GET arguments.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'
# The plugin streams its bodies chunked; gunicorn sets wsgi.input_terminated so Flask reads them.
limit_request_field_size = 16384
# gunicorn >= 24 opens a control socket at one fixed path (~/.gunicorn/gunicorn.ctl) shared by
# every instance of the user; several authsvc replicas (or test servers) on one host would
# fight over it, and authsvc does not use it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Refuse a bad Orthanc server list before any worker starts (one line, exit status 2)."""
    from authsvc.services import orthanc_servers

    try:
        orthanc_servers(_settings)
    except ConfigError as exc:
        sys.stderr.write(f"authsvc: configuration error: {exc}\n")
        sys.exit(2)


def when_ready(server: Any) -> None:
    """Check, once authsvc answers, that every Orthanc lets it write labels (else exit 3)."""
    from authsvc.orthanc import startup_check

    startup_check.start(server, _settings)


def post_worker_init(worker: Any) -> None:
    """Let long uploads keep a sync worker alive while they progress (authsvc.liveness)."""
    liveness.install(worker.notify)
