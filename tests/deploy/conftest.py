"""Fixtures for the deployment kit's integration checks: a TLS certificate, a stand-in for
authsvc's HTTP edge, the filled-in .env, and Orthanc started on the kit's configuration files."""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import deploy_kit
from tests import processes
from tests.deploy import files


@pytest.fixture(scope="session")
def dotenv() -> dict[str, str]:
    """One filled-in .env for the session."""
    return files.filled_env()


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""

    certificate: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Write a throw-away certificate that requests can verify (``verify=certificate``)."""
    cert_path, key_path = deploy_kit.write_self_signed_certificate(tmp_path_factory.mktemp("tls"))
    return TlsFiles(cert_path, key_path)


# ---------------------------------------------------------------- stand-in for authsvc


@dataclass
class Seen:
    """One request the stand-in received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StubAuthsvc:
    """Records requests; answers GET /gate/auth from the Authorization header, 200 otherwise.

    ``Bearer allow`` -> 204, ``Bearer allow-ttl-<N>-<anything>`` -> 200 with
    ``X-Accel-Expires: <N>`` (authsvc's "nginx may reuse this yes for N seconds"),
    ``Bearer deny`` -> 403, anything else -> 401 with a ``WWW-Authenticate`` challenge.
    This tests nginx's side of the contract only; the real decisions are authsvc's and are
    tested with authsvc itself.
    """

    port: int
    seen: list[Seen] = field(default_factory=list)

    def requests_to(self, prefix: str) -> list[Seen]:
        """Return the recorded requests whose path starts with prefix."""
        return [s for s in self.seen if s.path.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    stub: StubAuthsvc
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.stub.seen.append(Seen(self.command, self.path, headers, body))
        if self.path == "/gate/auth":
            authorization = headers.get("authorization", "")
            ttl = re.fullmatch(r"Bearer allow-ttl-([0-9]+)-.*", authorization)
            status = {"Bearer allow": 204, "Bearer deny": 403}.get(authorization, 401)
            status = 200 if ttl else status
            self.send_response(status)
            if ttl:
                self.send_header("X-Accel-Expires", ttl.group(1))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="authsvc"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps({"stub": "authsvc", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep the test output quiet."""


@pytest.fixture(scope="session")
def stub_authsvc() -> Iterator[StubAuthsvc]:
    """A stand-in for authsvc's HTTP edge on a loopback port, in a thread of the test run."""
    stub = StubAuthsvc(port=0)
    handler = type("Handler", (_Handler,), {"stub": stub})
    server = ThreadingHTTPServer((processes.LOOPBACK, 0), handler)
    stub.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- Orthanc on the kit's files


def _dicomweb_plugin() -> Path:
    tree = processes.testenv_home() / "orthanc" / "root"
    dicomweb = tree / "usr" / "share" / "orthanc" / "plugins" / "libOrthancDicomWeb.so"
    if not dicomweb.exists():
        raise processes.ServiceError(f"Orthanc DICOMweb plugin missing; {processes.SETUP_HINT}")
    return dicomweb


class KitOrthanc(processes.Service):
    """Orthanc started on a copy of config/orthanc/ (see :func:`start_kit_orthanc`)."""

    config_dir: Path
    #: HTTP Basic credentials it registers, when it has any.
    credentials: tuple[str, str] | None = None


def start_kit_orthanc(
    state_dir: Path,
    variant_file: str,
    env: dict[str, str],
    name: str,
    *,
    authsvc_url: str | None = None,
) -> KitOrthanc:
    """Start the test environment's Orthanc on config/orthanc/orthanc.json + one variant file.

    Orthanc reads the files itself, as a configuration directory: comments, the merge of
    several files, the refusal of duplicate sections and the ``${VAR}`` expansion are all
    Orthanc's own. Exactly three literal values of orthanc.json are changed, because they
    describe the container: the storage path becomes a private directory, the port a free one,
    and remote access is turned off (this machine's Orthanc must answer loopback clients only).
    One extra file adds what the test environment needs: the DICOMweb plugin's path and a
    locale that exists here. With ``authsvc_url`` the real authorization plugin is loaded too,
    and the variant's ``WebServiceRootUrl`` (``http://authsvc:8000/``, the compose network's
    name) becomes that URL. The test environment has no PostgreSQL index plugin and no Orthanc
    Explorer 2 (nor, without ``authsvc_url``, the authorization plugin): their sections are
    read and ignored, which
    is exactly what Orthanc does with sections of plugins it has not loaded (the index is
    SQLite instead).
    """
    port = processes.free_port()
    config_dir = state_dir / f"{name}-config"
    storage = state_dir / f"{name}-storage"
    config_dir.mkdir(parents=True)
    storage.mkdir()
    common = (files.ORTHANC_DIR / "orthanc.json").read_text()
    edits = {
        '"/var/lib/orthanc/db"': json.dumps(str(storage)),
        '"HttpPort": 8042': f'"HttpPort": {port}',
        '"RemoteAccessAllowed": true': '"RemoteAccessAllowed": false',
    }
    for old, new in edits.items():
        assert old in common, f"orthanc.json no longer contains {old}"
        common = common.replace(old, new)
    (config_dir / "orthanc.json").write_text(common)
    variant = (files.ORTHANC_DIR / variant_file).read_text()
    plugins = [str(_dicomweb_plugin())]
    if authsvc_url is not None:
        compose_url = '"WebServiceRootUrl": "http://authsvc:8000/"'
        assert compose_url in variant, f"{variant_file} no longer contains {compose_url}"
        variant = variant.replace(compose_url, f'"WebServiceRootUrl": "{authsvc_url}"')
        plugins.append(str(processes.authorization_plugin_path()))
    (config_dir / Path(variant_file).name).write_text(variant)
    (config_dir / "zz-testenv.json").write_text(
        json.dumps({"Plugins": plugins, "Locale": "C.UTF-8"})
    )
    launcher = str(processes.TESTENV_DIR / "orthanc.sh")
    service = KitOrthanc(
        name,
        [launcher, str(config_dir)],
        port,
        state_dir / f"{name}.log",
        env={**os.environ, **env},
        ready_path="/system",
    )
    service.config_dir = config_dir
    return service.start()  # type: ignore[return-value]


@pytest.fixture(scope="session")
def kit_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State directory for the services this package starts."""
    return tmp_path_factory.mktemp("deploy-kit")


@pytest.fixture(scope="session")
def plugin_orthanc(kit_state: Path, dotenv: dict[str, str]) -> Iterator[KitOrthanc]:
    """The public Orthanc of docker-compose.yml (its plugin absent, see start_kit_orthanc)."""
    env = files.interpolated_environment("docker-compose.yml", "orthanc", dotenv)
    service = start_kit_orthanc(kit_state, "plugin/authorization.json", env, "orthanc-plugin")
    yield service
    service.stop()


#: The credentials the optional plugin-free door is started with (the operator's own choice).
INTERNAL_CREDENTIALS = {"AUTHSVC_ORTHANC_USERNAME": "authsvc", "AUTHSVC_ORTHANC_PASSWORD": ""}
#: What its compose service would set (docs/deploy.md shows one).
INTERNAL_ENV = {"ORTHANC_INSTANCE_NAME": "orthanc-internal", **INTERNAL_CREDENTIALS}


@pytest.fixture(scope="session")
def internal_orthanc(kit_state: Path) -> Iterator[KitOrthanc]:
    """The optional plugin-free Orthanc of config/orthanc/internal/ (docs/plugin.md, way 2)."""
    env = {**INTERNAL_ENV, "AUTHSVC_ORTHANC_PASSWORD": secrets.token_hex(16)}
    service = start_kit_orthanc(kit_state, "internal/internal.json", env, "orthanc-internal")
    service.credentials = (env["AUTHSVC_ORTHANC_USERNAME"], env["AUTHSVC_ORTHANC_PASSWORD"])
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gate_orthanc(kit_state: Path, dotenv: dict[str, str]) -> Iterator[KitOrthanc]:
    """The stock Orthanc of docker-compose.gate.yml."""
    env = files.interpolated_environment("docker-compose.gate.yml", "orthanc", dotenv)
    service = start_kit_orthanc(kit_state, "gate/gate.json", env, "orthanc-gate")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kit_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.IdpService]:
    """The test IdP serving the kit's realm (placeholders filled as Keycloak's import would)."""
    realm = files.realm_for_test_idp(
        {
            "PUBLIC_URL": "http://127.0.0.1:*",
            "DEMO_PASSWORD": secrets.token_hex(16),
            "AUTHSVC_ADMIN_CLIENT_SECRET": secrets.token_hex(32),
        }
    )
    state: Path = tmp_path_factory.mktemp("kit-idp")
    service = processes.start_idp(state, processes.free_port(), realm_overrides=realm)
    yield service
    service.stop()
