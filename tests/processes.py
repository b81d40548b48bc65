"""Start the real services the integration tests talk to, as child processes on 127.0.0.1.

Every service here is a plain child process of the test run: started with ``Popen``, logged to a
file in its state directory, considered ready once its port answers, and stopped by its own PID.
Nothing is started through a shell or a service manager, so nothing outlives the test session
and nothing else on the machine is touched. ``scripts/testenv/setup.sh`` installs the programs;
a missing one raises :class:`ServiceError` (tests must fail, never skip, when it happens).

This module holds no pytest fixtures; ``tests/integration/conftest.py`` builds them from it.
It is named for what it starts, processes, so that it is never mistaken for (or imported in
place of) ``authsvc.services``, the app's registry of collaborators.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import glob
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTENV_DIR = REPO_ROOT / "scripts" / "testenv"
IDP_DIR = TESTENV_DIR / "idp"
LOOPBACK = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
SETUP_HINT = "run scripts/testenv/setup.sh"

# Safety net: if a session dies before its fixtures tear down, still stop what it started.
_running: set[Service] = set()


class ServiceError(RuntimeError):
    """A test service is missing, failed to start, or did not become ready."""


def testenv_home() -> Path:
    """Return where setup.sh keeps installed tools outside the repository."""
    configured = os.environ.get("AUTHSVC_TESTENV")
    return Path(configured) if configured else Path.home() / ".cache" / "authsvc"


@contextlib.contextmanager
def private_schema(
    postgres_url: str, prefix: str, data_dir: Path, seed: Callable[[], None] | None = None
) -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL schema built from schema.sql; drop it afterwards.

    ``seed`` runs inside an app context on that schema after the tables exist (and commits
    what it adds itself).
    """
    import sqlalchemy as sa

    from authsvc.app import create_app
    from authsvc.database import init_db
    from authsvc.extensions import db

    name = prefix + "_" + os.urandom(5).hex()
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    engine = sa.create_engine(
        plain.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    sep = "&" if "?" in plain else "?"
    url = f"{plain}{sep}options=-csearch_path%3D{name}"
    app = create_app(
        {
            "env": "testing",
            "database_url": url,
            "secret_key": "insecure-test-secret-key-for-schema-setup",
            "data_dir": str(data_dir),
        }
    )
    with app.app_context():
        init_db(db.engine)
        if seed is not None:
            seed()
        db.engine.dispose()
    try:
        yield url
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _http_answers(port: int, path: str) -> bool:
    """Tell whether an HTTP server on the port sends any response at all to GET path."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _tcp_answers(port: int) -> bool:
    """Tell whether something accepts TCP connections on the port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


class Service:
    """One child process, its log file, and how to tell that it is ready."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_path: str | None = "/",
        start_timeout: float = 30.0,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        """Describe the service; nothing runs until start()."""
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        # None means "a TCP accept is enough" (for non-HTTP servers such as PostgreSQL).
        self.ready_path = ready_path
        self.start_timeout = start_timeout
        self.stop_signal = stop_signal
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the base URL of the service."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Return the PID of the running process, if any."""
        return self.process.pid if self.process else None

    def running(self) -> bool:
        """Tell whether the process has been started and not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> Service:
        """Start the process and return once it answers on its port."""
        if self.running():
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        if _tcp_answers(self.port):
            raise ServiceError(f"{self.name}: port {self.port} is already taken by another process")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"---- {time.strftime('%H:%M:%S')} starting {self.argv}\n".encode())
        self._log.flush()
        ids: dict[str, Any] = {}
        if self.user is not None:
            # Drop fully to the account: its primary group and no supplementary groups.
            account = pwd.getpwnam(self.user)
            ids = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            **ids,
            # Own session: a Ctrl-C aimed at pytest must not kill services before teardown.
            start_new_session=True,
        )
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll the port until it answers; fail early if the process dies."""
        deadline = time.monotonic() + self.start_timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with status {self.process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.ready_path is None:
                ready = _tcp_answers(self.port)
            else:
                ready = _http_answers(self.port, self.ready_path)
            if ready:
                return
            time.sleep(0.05)
        raise ServiceError(
            f"{self.name} did not answer on port {self.port} within {self.start_timeout:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process by its PID: polite signal, 10 s grace, then SIGKILL."""
        process, self.process = self.process, None
        _running.discard(self)
        if process is not None and process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Service:
        """Stop, then start again with the same command, port and state."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the service's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Service:
        """Use the already started service as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the service when the block ends."""
        self.stop()

    def __repr__(self) -> str:
        """Show name, port and PID."""
        return f"<{type(self).__name__} {self.name} port={self.port} pid={self.pid}>"


@atexit.register
def _stop_leftovers() -> None:
    """Stop any service a crashed session did not tear down."""
    for service in list(_running):
        with contextlib.suppress(Exception):
            service.stop()


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return base updated by extra, merging nested dicts instead of replacing them."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _require_executable(path: Path | str | None, what: str) -> str:
    """Return path as a string, or raise ServiceError naming what is missing."""
    if path is None or not os.access(path, os.X_OK) or Path(path).is_dir():
        raise ServiceError(f"{what} not found ({path or 'not on PATH'}); {SETUP_HINT}")
    return str(path)


# ---------------------------------------------------------------------------- Orthanc

AUTHZ_PLUGIN_ENV = "AUTHSVC_TEST_AUTHZ_PLUGIN"
AUTHZ_PLUGIN_NAME = "libOrthancAuthorization.so"


def authorization_section(web_service: str, username: str, password: str) -> dict[str, Any]:
    """Return the plugin's ``Authorization`` section as deployments write it.

    The same options as config/orthanc/plugin/authorization.json: the OE2, Stone and OHIF
    presets, study-level checks, API keys (and authsvc's service key) in ``api-key``.
    """
    return {
        "WebServiceRootUrl": web_service.rstrip("/") + "/",
        "WebServiceUsername": username,
        "WebServicePassword": password,
        "StandardConfigurations": ["orthanc-explorer-2", "stone-webviewer", "ohif"],
        "CheckedLevel": "studies",
        "TokenHttpHeaders": ["api-key"],
    }


def authorization_plugin_path() -> Path:
    """Return the real Orthanc Advanced Authorization plugin (a trixie / Orthanc 1.12.7 build).

    Looked up like setup.sh does: ``$AUTHSVC_TEST_AUTHZ_PLUGIN``, else the build shared next to
    the checkout (``../shared/orthanc-authorization``), else the copy setup.sh keeps under the
    test environment home. A set but wrong variable is an error, not a reason to look further.
    """
    configured = os.environ.get(AUTHZ_PLUGIN_ENV)
    if configured:
        if not Path(configured).is_file():
            raise ServiceError(f"{AUTHZ_PLUGIN_ENV}={configured} is not a file; {SETUP_HINT}")
        return Path(configured)
    candidates = [
        REPO_ROOT.parent / "shared" / "orthanc-authorization" / AUTHZ_PLUGIN_NAME,
        testenv_home() / "orthanc-authorization" / AUTHZ_PLUGIN_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(candidate) for candidate in candidates)
    raise ServiceError(
        f"Orthanc authorization plugin not found (set {AUTHZ_PLUGIN_ENV}; looked at {looked}); "
        f"{SETUP_HINT}"
    )


class OrthancService(Service):
    """Orthanc with its generated configuration and storage directory."""

    config_path: Path
    storage_dir: Path
    config: dict[str, Any]


def start_orthanc(
    state_dir: Path,
    port: int,
    extra_config: Mapping[str, Any] | None = None,
    *,
    authorization: Mapping[str, Any] | None = None,
) -> OrthancService:
    """Start the private Orthanc >= 1.12 on a fresh storage directory under state_dir.

    ``extra_config`` is merged into the generated configuration (nested dicts such as
    ``DicomWeb`` are merged key by key). Giving ``PythonScript`` also loads the Python plugin.
    Giving ``authorization`` loads the real Advanced Authorization plugin
    (:func:`authorization_plugin_path`) with that mapping, as is, as its ``Authorization``
    section, e.g. ``{"WebServiceRootUrl": authsvc.url, "TokenHttpHeaders": ["api-key"]}``.
    """
    launcher = _require_executable(TESTENV_DIR / "orthanc.sh", "scripts/testenv/orthanc.sh")
    authorization_plugin = authorization_plugin_path() if authorization is not None else None
    tree = testenv_home() / "orthanc" / "root"
    plugins = tree / "usr" / "share" / "orthanc" / "plugins"
    dicomweb = plugins / "libOrthancDicomWeb.so"
    if not (tree / "usr" / "sbin" / "Orthanc").exists() or not dicomweb.exists():
        raise ServiceError(f"private Orthanc not installed under {tree}; {SETUP_HINT}")

    state_dir.mkdir(parents=True, exist_ok=True)
    # A new directory per start: a second Orthanc on the same SQLite index would fail to lock
    # it, and tests must not see studies left behind by an earlier session.
    storage = Path(tempfile.mkdtemp(prefix="storage-", dir=state_dir))
    config: dict[str, Any] = {
        "Name": "authsvc-test-orthanc",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        # Orthanc cannot bind to one address; this makes it answer loopback clients only.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        # The default en_US.UTF-8 is often not generated; C.UTF-8 is built into glibc.
        "Locale": "C.UTF-8",
        "DefaultEncoding": "Utf8",
        "SaveJobs": False,
        "Plugins": [str(dicomweb)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
        },
    }
    config = _deep_merge(config, extra_config or {})
    if config.get("PythonScript"):
        python_plugin = plugins / "libOrthancPython.so"
        if not python_plugin.exists():
            raise ServiceError(f"Orthanc Python plugin missing at {python_plugin}; {SETUP_HINT}")
        config["Plugins"] = [*config["Plugins"], str(python_plugin)]
    if authorization is not None:
        config["Plugins"] = [*config["Plugins"], str(authorization_plugin)]
        config["Authorization"] = copy.deepcopy(dict(authorization))

    config_path = state_dir / f"orthanc-{port}.json"
    config_path.write_text(json.dumps(config, indent=2))
    service = OrthancService(
        "orthanc",
        [launcher, str(config_path)],
        port,
        state_dir / f"orthanc-{port}.log",
        ready_path="/system",
    )
    service.config_path = config_path
    service.storage_dir = storage
    service.config = config
    return service.start()  # type: ignore[return-value]


# ---------------------------------------------------------------------------- OIDC provider


class IdpService(Service):
    """The Keycloak-shaped test IdP, with its realm data and Keycloak-style URLs."""

    realm: dict[str, Any]
    realm_path: Path

    @property
    def issuer(self) -> str:
        """Return the issuer, as Keycloak spells it: .../realms/<realm>."""
        return f"{self.url}/realms/{self.realm['realm']}"

    @property
    def discovery_url(self) -> str:
        """Return the OpenID discovery document URL."""
        return f"{self.issuer}/.well-known/openid-configuration"

    def endpoint(self, name: str) -> str:
        """Return .../protocol/openid-connect/<name>, e.g. endpoint('token/introspect')."""
        return f"{self.issuer}/protocol/openid-connect/{name}"

    @property
    def auth_url(self) -> str:
        """Return the authorization endpoint."""
        return self.endpoint("auth")

    @property
    def token_url(self) -> str:
        """Return the token endpoint."""
        return self.endpoint("token")

    @property
    def jwks_url(self) -> str:
        """Return the JWKS (certs) endpoint."""
        return self.endpoint("certs")

    @property
    def userinfo_url(self) -> str:
        """Return the userinfo endpoint."""
        return self.endpoint("userinfo")

    @property
    def introspection_url(self) -> str:
        """Return the token introspection endpoint."""
        return self.endpoint("token/introspect")

    @property
    def logout_url(self) -> str:
        """Return the RP-initiated logout endpoint."""
        return self.endpoint("logout")

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """Return the realm's users by username (passwords included: test data)."""
        return {user["username"]: user for user in self.realm.get("users", [])}

    @property
    def clients(self) -> dict[str, dict[str, Any]]:
        """Return the realm's clients by client id."""
        return {client["clientId"]: client for client in self.realm.get("clients", [])}

    def _client_auth(self, client_id: str) -> tuple[str, str] | None:
        """Return HTTP Basic credentials for a confidential client, None for a public one."""
        client = self.clients[client_id]
        return None if client.get("publicClient") else (client_id, client["secret"])

    def password_token(
        self, username: str, *, client_id: str = "authsvc", scope: str = "openid"
    ) -> dict[str, Any]:
        """Return the token response of a password grant with the user's realm password."""
        data = {
            "grant_type": "password",
            "username": username,
            "password": self.users[username]["password"],
            "scope": scope,
        }
        auth = self._client_auth(client_id)
        if auth is None:
            data["client_id"] = client_id
        response = requests.post(self.token_url, data=data, auth=auth, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def client_credentials_token(self, client_id: str = "authsvc") -> dict[str, Any]:
        """Return the token response of a client_credentials grant (a service account)."""
        response = requests.post(
            self.token_url,
            data={"grant_type": "client_credentials"},
            auth=self._client_auth(client_id),
            timeout=10,
        )
        response.raise_for_status()
        return dict(response.json())


def load_realm(realm_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the test realm from realm.json with top-level keys replaced by the overrides."""
    realm: dict[str, Any] = json.loads((IDP_DIR / "realm.json").read_text())
    # Shallow on purpose: overriding "users" or "clients" replaces the whole list, which is
    # easier to reason about in a test than a merge of list items.
    realm.update(copy.deepcopy(dict(realm_overrides or {})))
    return realm


def start_idp(
    state_dir: Path, port: int, realm_overrides: Mapping[str, Any] | None = None
) -> IdpService:
    """Start the test IdP (scripts/testenv/idp) for the test realm on the given port."""
    node = _require_executable(shutil.which("node"), "node")
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise ServiceError(f"npm dependencies missing in {IDP_DIR}; {SETUP_HINT}")
    state_dir.mkdir(parents=True, exist_ok=True)
    realm = load_realm(realm_overrides)
    realm_path = state_dir / f"realm-{port}.json"
    realm_path.write_text(json.dumps(realm, indent=2))
    env = {
        **os.environ,
        "IDP_HOST": LOOPBACK,
        "IDP_PORT": str(port),
        # Kept across restarts within the session, so tokens and cached JWKS stay valid.
        "IDP_KEY_FILE": str(state_dir / "signing-key.json"),
    }
    service = IdpService(
        "idp",
        [node, str(IDP_DIR / "idp.mjs"), str(realm_path)],
        port,
        state_dir / f"idp-{port}.log",
        env=env,
        cwd=IDP_DIR,
        ready_path=f"/realms/{realm['realm']}/.well-known/openid-configuration",
    )
    service.realm = realm
    service.realm_path = realm_path
    return service.start()  # type: ignore[return-value]


# ---------------------------------------------------------------------------- nginx


class NginxService(Service):
    """A private nginx rendered from scripts/testenv/nginx.conf.template."""

    config_path: Path
    upstreams: dict[str, str]


def _nginx_binary() -> str:
    """Return the nginx executable, also when /usr/sbin is not on PATH."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    return _require_executable(found, "nginx")


def _as_host_port(address: str | int) -> str:
    """Accept 8042, '127.0.0.1:8042' or 'http://127.0.0.1:8042' and return host:port."""
    if isinstance(address, int):
        return f"{LOOPBACK}:{address}"
    return re.sub(r"^[a-z]+://", "", address).rstrip("/")


def start_nginx(state_dir: Path, port: int, upstreams: Mapping[str, str | int]) -> NginxService:
    """Start a private nginx on the port; upstreams maps template names to host:port."""
    nginx = _nginx_binary()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "tmp").mkdir(exist_ok=True)
    normalized = {name.upper(): _as_host_port(address) for name, address in upstreams.items()}
    values = {
        "STATE_DIR": str(state_dir.resolve()),
        "LISTEN_PORT": str(port),
        # As root nginx would run its workers as "nobody", who cannot enter pytest's 0700 temp
        # directories; keeping them as root is harmless for a loopback-only test proxy.
        "RUN_AS": "user root;" if os.geteuid() == 0 else "",
        **{f"UPSTREAM_{name}": address for name, address in normalized.items()},
    }
    text = (TESTENV_DIR / "nginx.conf.template").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    wanted = set(re.findall(r"@([A-Z0-9_]+)@", body))
    missing = sorted(wanted - values.keys())
    if missing:
        raise ServiceError(f"start_nginx: no value for {', '.join(missing)} in nginx.conf.template")
    rendered = re.sub(r"@([A-Z0-9_]+)@", lambda m: values.get(m.group(1), m.group(0)), text)
    config_path = state_dir / "nginx.conf"
    config_path.write_text(rendered)
    service = NginxService(
        "nginx",
        # -e: without it nginx opens /var/log/nginx/error.log before reading our config.
        [nginx, "-p", str(state_dir.resolve()), "-c", str(config_path.resolve()), "-e", "stderr"],
        port,
        state_dir / "nginx.log",
    )
    service.config_path = config_path
    service.upstreams = normalized
    return service.start()  # type: ignore[return-value]


# ---------------------------------------------------------------------------- gunicorn + app


def start_gunicorn_app(
    state_dir: Path, port: int, env: Mapping[str, str], app_spec: str = "authsvc.app:create_app()"
) -> Service:
    """Run authsvc (or ``app_spec``) under gunicorn on the port with the given environment."""
    gunicorn = _require_executable(Path(sys.prefix) / "bin" / "gunicorn", "gunicorn in the venv")
    state_dir.mkdir(parents=True, exist_ok=True)
    child_env = {
        **os.environ,
        "AUTHSVC_BIND": f"{LOOPBACK}:{port}",
        # Test runs need one worker: faster start, and logs stay in order.
        "AUTHSVC_WORKERS": "1",
        **env,
    }
    service = Service(
        "authsvc",
        [gunicorn, "-c", "python:authsvc.gunicorn_conf", app_spec],
        port,
        state_dir / f"authsvc-{port}.log",
        env=child_env,
        cwd=REPO_ROOT,
        ready_path="/healthz",
    )
    return service.start()


# ---------------------------------------------------------------------------- PostgreSQL

_postgres_url: str | None = None


def _accepts_connections(url: str) -> bool:
    """Tell whether PostgreSQL at url accepts a login right now."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _postgres_bindir() -> Path:
    """Return the newest /usr/lib/postgresql/<major>/bin that has initdb."""
    majors = [Path(p).parent.parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not majors:
        raise ServiceError(f"PostgreSQL server binaries (initdb) not found; {SETUP_HINT}")
    newest = max(majors, key=lambda d: int(d.name) if d.name.isdigit() else 0)
    return newest / "bin"


class PostgresService(Service):
    """A throw-away PostgreSQL cluster; its directory goes away when it stops."""

    base_dir: Path

    @property
    def database_url(self) -> str:
        """Return the URL of the cluster's 'test' database."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/test"

    def stop(self) -> None:
        """Stop the postmaster, then delete the cluster."""
        super().stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_private_postgres(
    state_dir: Path | None = None, port: int | None = None
) -> PostgresService:
    """Create and start a throw-away PostgreSQL cluster with trust auth and a 'test' database.

    As root the cluster always goes under the system temp directory: the postgres user it runs
    as could not enter a state_dir inside root's private (0700) pytest tree.
    """
    import psycopg

    bindir = _postgres_bindir()
    port = port or free_port()
    # PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres user.
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="authsvc-pg-", dir=None if as_root else state_dir))
    data_dir, socket_dir = base / "data", base / "run"
    socket_dir.mkdir()
    owner = "postgres" if as_root else None
    if as_root:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError(
                f"no 'postgres' OS user to run PostgreSQL as; {SETUP_HINT}"
            ) from None
        # The postgres user must be able to enter it; the data directory inside stays 0700.
        os.chmod(base, 0o755)  # noqa: S103
        for path in (base, socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
    initdb = [
        str(bindir / "initdb"), "-D", str(data_dir), "-U", "postgres",
        "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
    ]  # fmt: skip
    if as_root:
        initdb = ["runuser", "-u", "postgres", "--", *initdb]
    result = subprocess.run(initdb, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise ServiceError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    postmaster = [
        str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port),
        "-k", str(socket_dir), "-c", f"listen_addresses={LOOPBACK}",
        # Durability is pointless for a throw-away test cluster and costs seconds.
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ]  # fmt: skip
    service = PostgresService(
        "postgres",
        postmaster,
        port,
        base / "postgres.log",
        ready_path=None,
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
        stop_signal=signal.SIGINT,
        # Popen drops to the postgres user itself rather than through runuser, so the PID we
        # hold is the postmaster's and stop() signals exactly that process.
        user=owner,
    )
    service.base_dir = base
    service.start()
    admin_url = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
    for _ in range(100):  # the port opens a moment before logins are accepted
        if _accepts_connections(admin_url):
            break
        time.sleep(0.05)
    try:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute("CREATE DATABASE test")
    except BaseException:
        service.stop()
        raise
    return service


def postgres_url() -> str:
    """Return a reachable PostgreSQL URL, starting a private cluster if no server is around.

    Order: ``AUTHSVC_TEST_DATABASE_URL``; the local server at 127.0.0.1:5432 (database ``test``);
    otherwise a private cluster that lives until the interpreter exits.
    """
    global _postgres_url
    if _postgres_url is not None:
        return _postgres_url
    configured = os.environ.get("AUTHSVC_TEST_DATABASE_URL")
    if configured:
        if not _accepts_connections(configured):
            raise ServiceError(
                f"AUTHSVC_TEST_DATABASE_URL={configured} does not accept connections"
            )
        _postgres_url = configured
    elif _accepts_connections(DEFAULT_DATABASE_URL):
        _postgres_url = DEFAULT_DATABASE_URL
    else:
        _postgres_url = start_private_postgres().database_url
    return _postgres_url
