"""The compose stack's authsvc, for real: the environment docker-compose.yml gives it, with only
the addresses of its neighbours moved to this machine, serves the plugin callbacks for the demo
accounts of the kit's realm with the kit's roles file, and reports ready.

Neighbours: the test IdP serving config/keycloak/orthanc-realm.json (Keycloak stand-in),
the stack's one Orthanc on config/orthanc/ with the real authorization plugin asking this
authsvc (its ``WebServiceRootUrl`` moved to loopback), and SQLite in place of the stack's
PostgreSQL. Everything else — secrets from make-env.py, the plugin credentials and authsvc's
service key, audiences, client ids, admin roles, the roles file — is the stack's own.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import processes
from tests.deploy import files
from tests.deploy.conftest import KitOrthanc
from tests.deploy.conftest import start_kit_orthanc
from tests.deploy.test_names import EXPECTED_PROFILES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack_port() -> int:
    """authsvc's loopback port, chosen first: the stack's Orthanc must know where to call."""
    return processes.free_port()


@pytest.fixture(scope="module")
def stack_orthanc(kit_state: Path, dotenv: dict[str, str], stack_port: int) -> Iterator[KitOrthanc]:
    """The stack's Orthanc on the kit's files, its real plugin asking the stack's authsvc."""
    env = files.interpolated_environment("docker-compose.yml", "orthanc", dotenv)
    service = start_kit_orthanc(
        kit_state,
        "plugin/authorization.json",
        env,
        "orthanc-stack",
        authsvc_url=f"http://127.0.0.1:{stack_port}/",
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stack_env(
    kit_state: Path,
    dotenv: dict[str, str],
    kit_idp: processes.IdpService,
    stack_orthanc: KitOrthanc,
) -> dict[str, str]:
    """authsvc's environment from docker-compose.yml, neighbours moved to loopback."""
    env = files.interpolated_environment("docker-compose.yml", "authsvc", dotenv)
    moved = {
        "AUTHSVC_DATABASE_URL": f"sqlite:///{kit_state / 'stack-authsvc.sqlite3'}",
        "AUTHSVC_DATA_DIR": str(kit_state / "stack-authsvc"),
        "AUTHSVC_OIDC_ISSUER": kit_idp.issuer,
        "AUTHSVC_OIDC_DISCOVERY_URL": kit_idp.discovery_url,
        "AUTHSVC_OIDC_JWKS_URL": kit_idp.jwks_url,
        "AUTHSVC_ORTHANC_URL": stack_orthanc.url,
        "AUTHSVC_ROLES_FILE": str(files.ROLES_FILE),
    }
    assert set(moved) - {"AUTHSVC_DATA_DIR"} <= set(env), "the compose file changed shape"
    # start_gunicorn_app chooses the address (loopback, a free port) and one worker.
    kept = {k: v for k, v in env.items() if k not in ("AUTHSVC_BIND", "AUTHSVC_WORKERS")}
    return {**kept, **moved}


def _authsvc_command(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one `authsvc` command of the venv with the stack's environment."""
    authsvc = Path(sys.prefix) / "bin" / "authsvc"
    return subprocess.run(
        [str(authsvc), command],
        env={**env, "PATH": str(authsvc.parent)},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def stack_authsvc(
    kit_state: Path, stack_env: dict[str, str], stack_port: int
) -> Iterator[processes.Service]:
    """`authsvc init-db` (the authsvc-init job), then `authsvc` under gunicorn."""
    init = _authsvc_command("init-db", stack_env)
    assert init.returncode == 0, init.stdout + init.stderr
    service = processes.start_gunicorn_app(kit_state / "stack-authsvc-run", stack_port, stack_env)
    yield service
    service.stop()


def _profile(
    authsvc: processes.Service, dotenv: dict[str, str], token: str, *, password: str | None = None
) -> requests.Response:
    credentials = (
        dotenv["AUTHSVC_PLUGIN_USERNAME"],
        dotenv["AUTHSVC_PLUGIN_PASSWORD"] if password is None else password,
    )
    return requests.post(
        f"{authsvc.url}/user/get-profile",
        json={"token-key": "token", "token-value": token, "server-id": None},
        auth=credentials,
        timeout=10,
    )


def test_stack_authsvc_is_ready(stack_authsvc: processes.Service) -> None:
    """/readyz: the database, the stack's Orthanc (through its plugin) and the IdP."""
    answer = requests.get(f"{stack_authsvc.url}/readyz", timeout=10)
    assert answer.status_code == 200, answer.text


def test_authsvc_writes_labels_through_the_plugin_with_its_service_key(
    stack_authsvc: processes.Service, stack_orthanc: KitOrthanc, stack_env: dict[str, str]
) -> None:
    """The kit's wiring end to end: key in .env, header in TokenHttpHeaders, profile answered."""
    check = _authsvc_command("check-orthanc", stack_env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "label writes allowed" in check.stdout
    key = stack_env["AUTHSVC_ORTHANC_SERVICE_KEY"]
    # The same key reads through the plugin; without it, Orthanc's plugin refuses.
    assert requests.get(f"{stack_orthanc.url}/tools/labels", timeout=10).status_code == 403
    answer = requests.get(f"{stack_orthanc.url}/tools/labels", headers={"api-key": key}, timeout=10)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("username", sorted(EXPECTED_PROFILES))
def test_plugin_profile_of_each_demo_account(
    stack_authsvc: processes.Service,
    kit_idp: processes.IdpService,
    dotenv: dict[str, str],
    username: str,
) -> None:
    """What the plugin hears for each demo account is the documented profile."""
    token = kit_idp.password_token(username, client_id="orthanc")["access_token"]
    answer = _profile(stack_authsvc, dotenv, token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    permissions, labels = EXPECTED_PROFILES[username]
    assert set(body["permissions"]) == permissions
    assert set(body["authorized-labels"]) == labels
    assert body["validity"] > 0


def test_plugin_callbacks_refuse_other_credentials(
    stack_authsvc: processes.Service, kit_idp: processes.IdpService, dotenv: dict[str, str]
) -> None:
    """The plugin's password from .env is the only way in."""
    token = kit_idp.password_token("demo-admin", client_id="orthanc")["access_token"]
    assert _profile(stack_authsvc, dotenv, token, password="wrong").status_code == 401


def test_roles_file_was_imported(stack_authsvc: processes.Service, dotenv: dict[str, str]) -> None:
    """GET /settings/roles answers the kit's roles file (imported on first start)."""
    answer = requests.get(
        f"{stack_authsvc.url}/settings/roles",
        auth=(dotenv["AUTHSVC_PLUGIN_USERNAME"], dotenv["AUTHSVC_PLUGIN_PASSWORD"]),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["roles"]) == set(files.roles().roles)
