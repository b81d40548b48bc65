"""Operations endpoints: liveness, readiness with per-dependency detail, and the version."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify

from authsvc import __version__
from authsvc import database
from authsvc.errors import AuthsvcError
from authsvc.extensions import db
from authsvc.services import services

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and serving requests (no dependency is checked)."""
    return jsonify(status="ok")


@bp.get("/version")
def version() -> Response:
    """Name and version of the running service."""
    return jsonify(name="authsvc", version=__version__)


def _timed(check: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Run one dependency check; report ok, latency and a secret-free reason on failure."""
    started = time.perf_counter()
    try:
        extra = check() or {}
        result: dict[str, Any] = {"ok": True, **extra}
    except AuthsvcError as exc:
        result = {"ok": False, "error": exc.message}
    except requests.RequestException as exc:
        result = {"ok": False, "error": f"unreachable ({type(exc).__name__})"}
    except ValueError:
        result = {"ok": False, "error": "answered with something that is not JSON"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def dependency_checks() -> dict[str, dict[str, Any]]:
    """Check the database, every Orthanc server and the OIDC provider; one entry per check."""
    settings = services().settings
    timeout = settings.readiness_timeout
    checks: dict[str, dict[str, Any]] = {"database": _timed(lambda: database.ping(db.engine))}
    for client in services().orthanc:

        def orthanc_check(client: Any = client) -> dict[str, Any]:
            system = client.json("GET", "/system", timeout=timeout, idempotent=False)
            return {"version": system.get("Version")}

        checks[f"orthanc:{client.server.id or 'default'}"] = _timed(orthanc_check)
    if settings.oidc_issuer:

        def oidc_check() -> dict[str, Any]:
            url = settings.oidc_issuer + "/.well-known/openid-configuration"
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
            response.json()
            return {}

        checks["oidc"] = _timed(oidc_check)
    return checks


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when the database answers, and every configured Orthanc and OIDC provider too.

    :return 200: every dependency answered.
    :return 503: at least one did not; ``checks`` says which and why.
    """
    checks = dependency_checks()
    ready = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ready else "not-ready", checks=checks)
    response.status_code = 200 if ready else 503
    current_app.logger.debug("readiness: %s", "ready" if ready else "not ready")
    return response
