"""/healthz, /readyz (per-dependency detail, 503 when not ready), /version."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import requests_mock as rm
from flask import Flask

from authsvc import __version__
from tests.conftest import _make_app
from tests.conftest import base_config

pytestmark = pytest.mark.functional

ORTHANC = "http://orthanc.test:8042"
ISSUER = "http://keycloak.test/realms/orthanc"


@pytest.fixture
def full_app(tmp_path: Any, log_stream: Any) -> Flask:
    """An app configured with an Orthanc server and an OIDC provider (both faked over HTTP)."""
    return _make_app(
        base_config(
            tmp_path,
            orthanc_url=ORTHANC,
            orthanc_server_id="main",
            orthanc_retries=0,
            oidc_issuer=ISSUER,
        ),
        log_stream,
    )


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_version(client: Any) -> None:
    assert client.get("/version").get_json() == {"name": "authsvc", "version": __version__}


def test_readyz_database_only(db_app: Flask) -> None:
    response = db_app.test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True


def test_readyz_all_dependencies_up(full_app: Flask) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{ORTHANC}/system", json={"Version": "1.12.7"})
        mock.get(f"{ISSUER}/.well-known/openid-configuration", json={"issuer": ISSUER})
        response = full_app.test_client().get("/readyz")
    assert response.status_code == 200
    checks = response.get_json()["checks"]
    assert checks["orthanc:main"] == {**checks["orthanc:main"], "ok": True, "version": "1.12.7"}
    assert checks["oidc"]["ok"] is True


@pytest.mark.parametrize("failing", ["orthanc", "oidc"])
def test_readyz_503_names_the_failing_dependency(full_app: Flask, failing: str) -> None:
    with rm.Mocker() as mock:
        if failing == "orthanc":
            mock.get(f"{ORTHANC}/system", exc=requests.ConnectionError("refused"))
            mock.get(f"{ISSUER}/.well-known/openid-configuration", json={"issuer": ISSUER})
        else:
            mock.get(f"{ORTHANC}/system", json={"Version": "1.12.7"})
            mock.get(f"{ISSUER}/.well-known/openid-configuration", status_code=502)
        response = full_app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not-ready"
    key = "orthanc:main" if failing == "orthanc" else "oidc"
    assert body["checks"][key]["ok"] is False
    assert body["checks"][key]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_readyz_when_database_is_gone(tmp_path: Any) -> None:
    """Nothing listens on port 1: the check fails fast and says so, without the URL."""
    from authsvc.app import create_app

    app = create_app(
        base_config(tmp_path, database_url="postgresql://nobody:pw-x@127.0.0.1:1/none")
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    check = response.get_json()["checks"]["database"]
    assert check["ok"] is False
    assert check["error"] == "The database is unreachable."
    assert "pw-x" not in response.get_data(as_text=True)
