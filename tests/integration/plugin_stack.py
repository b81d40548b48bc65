"""The plugin stack for real: Orthanc with the real authorization plugin asking authsvc.

One :class:`PluginStack` holds a private PostgreSQL, a private test IdP (its own, so it can be
restarted with a short token lifetime), authsvc under gunicorn (two workers) with a service key,
Orthanc with the real Advanced Authorization plugin whose ``WebServiceRootUrl`` is that authsvc,
and nginx rendered from ``nginx/tls.conf.template`` + ``nginx/plugin.conf.template`` in front
(Orthanc under ``/orthanc/``). :func:`running_stack` starts it and seeds a few labelled studies
through Orthanc itself, with the admin's (bob's) token.

authsvc's start-up check writes a probe label through Orthanc once its workers answer (that
Orthanc's plugin asks this very authsvc for the service key's profile), so authsvc and Orthanc
may start in any order; test_authsvc_restarts_while_the_plugin_orthanc_runs holds it to that.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pydicom
import requests

from authsvc.credentials.sealing import generate_key
from tests import deploy_kit
from tests import processes
from tests.dicom_factory import make_study

PLUGIN_USER = "orthanc-plugin"
PLUGIN_PASSWORD = "insecure-real-plugin-password-0123456789"
SECRET_KEY = "insecure-real-plugin-secret-key-0123456789abcdef"
#: authsvc's own credential at the plugin's Orthanc (sent in the ``api-key`` header).
SERVICE_KEY = "insecure-real-plugin-service-key-0123456789abcdef"
#: Seconds the plugin may cache a profile or a validation (authsvc's ``plugin_validity``).
VALIDITY = 2
#: The plugin caches "profile has permission P" for 10 s whatever the validity (0.9.4).
PERMISSION_CACHE = 10
#: authsvc's per-worker API-key cache (docs/plugin.md: revocation reaches other workers within 5 s).
API_KEY_CACHE = 5
#: Slack for a loaded machine on top of every bound.
SLACK = 5.0

#: Roles for the test realm (scripts/testenv/idp/realm.json): alice is doctor (realm role),
#: viewer (client role) and in /radiology; bob is admin; carol has nothing; dave is doctor and
#: in /radiology.
ROLES: dict[str, Any] = {
    "roles": {
        "doctor": {"permissions": ["view", "download", "share"], "authorized-labels": ["cardio"]},
        "viewer": {"permissions": ["view"], "authorized-labels": ["cardio"]},
        "radiology-reader": {"permissions": ["view"], "authorized-labels": ["xray"]},
        "admin": {"permissions": ["all", "admin-permissions"], "authorized-labels": ["*"]},
    },
    "available-labels": [],
    "group-roles": {"/radiology": ["radiology-reader"]},
}


BOUNDARY = "real-plugin-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass(frozen=True)
class Study:
    """A study stored in the stack's Orthanc."""

    orthanc_id: str
    uid: str
    patient_id: str
    label: str | None


@dataclass
class PluginStack:
    """Everything running, plus the seeded studies and helpers to talk to each door."""

    state: Path
    postgres: processes.PostgresService
    idp: processes.IdpService
    authsvc: processes.Service
    authsvc_env: dict[str, str]
    orthanc: processes.OrthancService
    nginx: processes.NginxService
    certificate: Path
    studies: dict[str, Study] = field(default_factory=dict)

    # ---- credentials

    def jwt(self, user: str) -> str:
        """Return a fresh access token of a realm user (a new plugin cache key every time)."""
        return str(self.idp.password_token(user)["access_token"])

    def subject(self, token: str) -> str:
        """Return the ``sub`` claim of a JWT."""
        return str(jwt_claims(token)["sub"])

    # ---- doors

    @property
    def authsvc_url(self) -> str:
        """authsvc directly (its JSON API)."""
        return self.authsvc.url

    @property
    def nginx_url(self) -> str:
        """nginx's TLS listener (Orthanc under /orthanc/, authsvc's /api/)."""
        return f"https://127.0.0.1:{self.nginx.port}"

    def orthanc_call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        """Call Orthanc's own port (the plugin decides)."""
        return requests.request(
            method, f"{self.orthanc.url}{path}", headers=dict(headers or {}), timeout=30, **kwargs
        )

    def nginx_call(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        """Call through nginx (``path`` as the client sends it, e.g. /orthanc/studies)."""
        return requests.request(
            method,
            f"{self.nginx_url}{path}",
            headers=dict(headers or {}),
            verify=str(self.certificate),
            timeout=30,
            **kwargs,
        )

    def api(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        """Call authsvc's JSON API directly with a bearer token."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.authsvc_url}{path}", headers=headers, timeout=30, **kwargs
        )

    def admin(self) -> dict[str, str]:
        """Headers of a fresh admin (bob) token, OE2-style."""
        return {"token": self.jwt("bob")}

    def study_labels(self, study: str) -> list[str]:
        """Return a study's labels, read through the plugin with the admin's token."""
        answer = self.orthanc_call("GET", f"/studies/{study}/labels", self.admin())
        answer.raise_for_status()
        return list(answer.json())

    def find_uid(self, uid: str) -> list[str]:
        """Return the Orthanc ids of the studies with this StudyInstanceUID (admin's view)."""
        answer = self.orthanc_call(
            "POST",
            "/tools/find",
            self.admin(),
            json={"Level": "Study", "Query": {"StudyInstanceUID": uid}},
        )
        answer.raise_for_status()
        return list(answer.json())

    def store(
        self, label: str | None, *, patient_id: str | None = None, description: str = ""
    ) -> Study:
        """Store a one-instance study through Orthanc as bob and give it ``label``."""
        blob = make_study(
            n_series=1,
            n_instances=1,
            patient_id=patient_id,
            study_description=description or f"real plugin {label}",
        )[0]
        dataset = pydicom.dcmread(io.BytesIO(blob))
        stored = self.orthanc_call(
            "POST", "/instances", {"Authorization": f"Bearer {self.jwt('bob')}"}, data=blob
        )
        assert stored.status_code == 200, stored.text
        study_id = str(stored.json()["ParentStudy"])
        if label is not None:
            labelled = self.orthanc_call(
                "PUT", f"/studies/{study_id}/labels/{label}", self.admin(), data=b""
            )
            assert labelled.status_code == 200, labelled.text
        return Study(study_id, str(dataset.StudyInstanceUID), str(dataset.PatientID), label)


def jwt_claims(token: str) -> dict[str, Any]:
    """Return the (unverified) claims of a JWT."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def until(check: Callable[[], bool], limit: float, what: str) -> float:
    """Poll ``check`` until it holds and return the seconds it took; fail after ``limit``."""
    start = time.monotonic()
    while not check():
        elapsed = time.monotonic() - start
        assert elapsed < limit, f"{what}: not seen within {limit:.1f}s"
        time.sleep(0.25)
    return time.monotonic() - start


def stow_body(instances: list[bytes]) -> bytes:
    """Return a STOW-RS multipart/related body (boundary :data:`BOUNDARY`)."""
    parts = [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob + b"\r\n"
        for blob in instances
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


# ------------------------------------------------------------------------------ the pieces


def authsvc_environment(
    state: Path,
    *,
    database_url: str,
    issuer: str,
    orthanc_url: str,
    nginx_port: int,
    service_key: str | None = SERVICE_KEY,
) -> dict[str, str]:
    """Return the AUTHSVC_* settings of the stack's authsvc (``service_key`` None: none)."""
    roles_file = state / "permissions.json"
    roles_file.write_text("// imported on first start\n" + json.dumps(ROLES, indent=2))
    public = f"https://127.0.0.1:{nginx_port}"
    env = {
        "AUTHSVC_ENV": "testing",
        "AUTHSVC_DATA_DIR": str(state / "data"),
        "AUTHSVC_SECRET_KEY": SECRET_KEY,
        "AUTHSVC_DATABASE_URL": database_url,
        "AUTHSVC_WORKERS": "2",
        "AUTHSVC_LOG_LEVEL": "info",
        "AUTHSVC_OIDC_ISSUER": issuer,
        "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
        # No clock skew between processes of one machine; lets a 1 s token expire quickly.
        "AUTHSVC_OIDC_LEEWAY": "0",
        "AUTHSVC_ADMIN_ROLES": "admin",
        "AUTHSVC_ROLES_FILE": str(roles_file),
        "AUTHSVC_PLUGIN_USERNAME": PLUGIN_USER,
        "AUTHSVC_PLUGIN_PASSWORD": PLUGIN_PASSWORD,
        "AUTHSVC_PLUGIN_VALIDITY": str(VALIDITY),
        "AUTHSVC_SHARE_TOKEN_KEYS": generate_key("s1"),
        "AUTHSVC_UPLOAD_TOKEN_KEYS": generate_key("u1"),
        "AUTHSVC_PUBLIC_ORTHANC_ROOT": f"{public}/orthanc/",
        "AUTHSVC_PUBLIC_OHIF_ROOT": f"{public}/ohif/",
        "AUTHSVC_PROXY_COUNT": "1",
        "AUTHSVC_ORTHANC_URL": orthanc_url,
        "AUTHSVC_ORTHANC_RETRIES": "0",
    }
    if service_key is not None:
        env["AUTHSVC_ORTHANC_SERVICE_KEY"] = service_key
    return env


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return os.environ without the caller's AUTHSVC_* settings, plus ``env``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTHSVC_") or k.startswith("AUTHSVC_TEST")
    }
    return {**clean, **env}


def gunicorn_argv() -> list[str]:
    """Return the command line that serves authsvc (as ``authsvc serve`` does)."""
    gunicorn = Path(sys.prefix) / "bin" / "gunicorn"
    return [str(gunicorn), "-c", "python:authsvc.gunicorn_conf", "authsvc.app:create_app()"]


def init_db(env: Mapping[str, str]) -> None:
    """Run ``authsvc init-db`` with the settings."""
    subprocess.run(
        [str(Path(sys.prefix) / "bin" / "authsvc"), "init-db"],
        env=child_environment(env),
        check=True,
        capture_output=True,
        timeout=60,
    )


def start_authsvc(state: Path, port: int, env: Mapping[str, str]) -> processes.Service:
    """Start authsvc under gunicorn on the port, with exactly these AUTHSVC_* settings."""
    service = processes.Service(
        "authsvc",
        gunicorn_argv(),
        port,
        state / f"authsvc-{port}.log",
        env=child_environment({**env, "AUTHSVC_BIND": f"127.0.0.1:{port}"}),
        cwd=processes.REPO_ROOT,
        ready_path="/healthz",
    )
    return service.start()


def start_plugin_orthanc(state: Path, port: int, web_service: str) -> processes.OrthancService:
    """Start Orthanc with the real plugin asking ``web_service`` (a root URL)."""
    return processes.start_orthanc(
        state,
        port,
        authorization=processes.authorization_section(web_service, PLUGIN_USER, PLUGIN_PASSWORD),
    )


def start_round_robin(state: Path, port: int, backends: list[int]) -> processes.NginxService:
    """Start a plain-HTTP nginx spreading requests round-robin over authsvc instances."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "tmp").mkdir(exist_ok=True)
    servers = "\n".join(f"    server 127.0.0.1:{backend};" for backend in backends)
    site = state / "round-robin.conf"
    site.write_text(
        f"upstream authsvc_round_robin {{\n{servers}\n}}\n"
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        "    access_log off;\n"
        "    location / {\n"
        "        proxy_pass http://authsvc_round_robin;\n"
        "        proxy_http_version 1.1;\n"
        '        proxy_set_header Connection "";\n'
        "    }\n"
        "}\n"
    )
    config = state / "nginx.conf"
    config.write_text(deploy_kit.main_config(state, [site]))
    service = processes.NginxService(
        "nginx-round-robin",
        deploy_kit.nginx_argv(state, config),
        port,
        state / "nginx.log",
        ready_path="/healthz",
    )
    service.config_path = config
    service.upstreams = {"authsvc": ",".join(str(b) for b in backends)}
    return service.start()  # type: ignore[return-value]


def start_plugin_nginx(
    state: Path,
    port: int,
    *,
    authsvc_port: int,
    orthanc_port: int,
    keycloak_port: int,
    certificate: Path,
    key: Path,
) -> processes.NginxService:
    """Start nginx on tls.conf.template + plugin.conf.template (the plugin stack's proxy)."""
    http_port = processes.free_port()
    return deploy_kit.start_nginx_templates(
        state,
        port,
        {
            "tls.conf.template": {
                "TLS_CERTIFICATE": str(certificate),
                "TLS_CERTIFICATE_KEY": str(key),
                "HTTP_LISTEN": f"127.0.0.1:{http_port}",
                "SERVER_NAME": "_",
                "PUBLIC_URL": f"https://127.0.0.1:{port}",
            },
            "plugin.conf.template": {
                "HTTPS_LISTEN": f"127.0.0.1:{port}",
                "SERVER_NAME": "_",
                "AUTHSVC_UPSTREAM": f"127.0.0.1:{authsvc_port}",
                "ORTHANC_UPSTREAM": f"127.0.0.1:{orthanc_port}",
                "KEYCLOAK_UPSTREAM": f"127.0.0.1:{keycloak_port}",
                "ORTHANC_AUTH_REQUEST": "off",
            },
        },
    )


@contextlib.contextmanager
def idp_token_lifetime(idp: processes.IdpService, seconds: int) -> Iterator[None]:
    """Restart the IdP with another access-token lifetime for the block, then restore it.

    Same port, same signing key (kept in its state directory): tokens issued before stay
    valid, and authsvc's cached JWKS still verifies the new ones.
    """
    original = idp.realm_path.read_text()
    realm = json.loads(original)
    realm["accessTokenLifespan"] = seconds
    idp.realm_path.write_text(json.dumps(realm, indent=2))
    try:
        idp.restart()
        yield
    finally:
        idp.realm_path.write_text(original)
        idp.restart()


# ------------------------------------------------------------------------------ the whole stack


@contextlib.contextmanager
def running_stack(
    state: Path, env_overrides: Mapping[str, str] | None = None
) -> Iterator[PluginStack]:
    """Start the stack under ``state``, seed the studies, and stop everything afterwards.

    ``env_overrides`` replaces AUTHSVC_* settings of :func:`authsvc_environment` (e.g. the
    public OHIF root of tests/integration/test_ohif.py).
    """
    stack_parts: list[processes.Service] = []
    try:
        postgres = processes.start_private_postgres()
        stack_parts.append(postgres)
        idp = processes.start_idp(state / "idp", processes.free_port())
        stack_parts.append(idp)
        authsvc_port, orthanc_port, nginx_port = (processes.free_port() for _ in range(3))
        env = authsvc_environment(
            state,
            database_url=postgres.database_url,
            issuer=idp.issuer,
            orthanc_url=f"http://127.0.0.1:{orthanc_port}",
            nginx_port=nginx_port,
        )
        env.update(env_overrides or {})
        init_db(env)
        # Before Orthanc: see the module docstring.
        authsvc = start_authsvc(state / "authsvc", authsvc_port, env)
        stack_parts.append(authsvc)
        orthanc = start_plugin_orthanc(
            state / "orthanc", orthanc_port, f"http://127.0.0.1:{authsvc_port}/"
        )
        stack_parts.append(orthanc)
        certificate, key = deploy_kit.write_self_signed_certificate(state / "tls")
        nginx = start_plugin_nginx(
            state / "nginx",
            nginx_port,
            authsvc_port=authsvc_port,
            orthanc_port=orthanc_port,
            keycloak_port=idp.port,
            certificate=certificate,
            key=key,
        )
        stack_parts.append(nginx)
        stack = PluginStack(
            state, postgres, idp, authsvc, env, orthanc, nginx, certificate, studies={}
        )
        # cardio and neuro belong to one patient (OHIF's "prior studies" query).
        cardio = stack.store("cardio", description="cardio study")
        stack.studies.update(
            cardio=cardio,
            neuro=stack.store("neuro", patient_id=cardio.patient_id, description="neuro study"),
            xray=stack.store("xray"),
            unlabelled=stack.store(None),
        )
        yield stack
    finally:
        for part in reversed(stack_parts):
            with contextlib.suppress(Exception):
                part.stop()
