"""Names that must agree across the kit: Keycloak realm, roles file, Orthanc plugin, authsvc.

A role that exists in the roles file but not in Keycloak grants nothing to anybody; a group
path spelled differently maps to no role; a client id or audience that differs makes authsvc
refuse every token. Each of those is a silent failure in production, so each is a test here.
The last test spells out, for every demo account, what the roles give it, which is the first
half of "who can see this study, and why?" (albums are the other half).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from authsvc.identity import Identity
from authsvc.identity import IdentityKind
from authsvc.identity.roles import compose_profile
from tests.deploy import files

pytestmark = pytest.mark.unit

# The options of the plugin's "Authorization" section (protocol spec §4.1); a misspelt key is
# silently ignored by the plugin, so the test refuses anything else.
PLUGIN_OPTIONS = {
    "WebServiceRootUrl", "WebServiceUserProfileUrl", "WebServiceTokenValidationUrl",
    "WebService", "WebServiceTokenCreationBaseUrl", "WebServiceTokenDecoderUrl",
    "WebServiceSettingsRolesUrl", "WebServiceUsername", "WebServicePassword",
    "WebServiceIdentifier", "TokenHttpHeaders", "TokenGetArguments", "StandardConfigurations",
    "UncheckedResources", "UncheckedFolders", "CheckedLevel", "UncheckedLevels", "Permissions",
    "ExtraPermissions", "EnableAuditLogs",
}  # fmt: skip
PLUGIN_PRESETS = {
    "osimis-web-viewer",
    "stone-webviewer",
    "orthanc-explorer-2",
    "ohif",
    "volview",
    "stl",
}


def _authsvc_env(name: str = "docker-compose.yml") -> dict[str, str]:
    return files.service_environment(files.compose(name)["services"]["authsvc"])


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _clients() -> dict[str, dict[str, Any]]:
    return {client["clientId"]: client for client in files.realm()["clients"]}


def _plugin_config() -> dict[str, Any]:
    return files.orthanc_config("orthanc.json", "plugin/authorization.json")


def test_roles_file_and_realm_roles_are_the_same_names() -> None:
    """Every configured role is a realm role, and every realm role is configured."""
    realm_roles = {role["name"] for role in files.realm()["roles"]["realm"]}
    assert set(files.roles().roles) == realm_roles


def test_group_roles_name_realm_groups() -> None:
    """Every group of "group-roles" is a realm group (by full path) and maps to known roles."""
    roles = files.roles()
    realm_groups = {group["path"].lstrip("/") for group in files.realm()["groups"]}
    for group in files.realm()["groups"]:
        assert group["path"] == "/" + group["name"]
    assert set(roles.group_roles) == realm_groups
    for group, names in roles.group_roles.items():
        assert names <= set(roles.roles), group


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_admin_roles_exist_and_administer(name: str) -> None:
    """AUTHSVC_ADMIN_ROLES names configured roles that grant admin permissions."""
    roles = files.roles()
    admin_roles = _list(_authsvc_env(name)["AUTHSVC_ADMIN_ROLES"])
    assert admin_roles
    for role in admin_roles:
        assert {"all", "admin-permissions"} <= roles.roles[role].permissions


def test_nobody_but_admins_may_edit_labels() -> None:
    """edit-labels would let a user attach an album's label to any study (architecture rule)."""
    admin_roles = set(_list(_authsvc_env()["AUTHSVC_ADMIN_ROLES"]))
    for name, grant in files.roles().roles.items():
        if name not in admin_roles:
            assert not grant.permissions & {"all", "edit-labels", "admin-permissions"}, name


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_authsvc_oidc_settings_match_the_realm(name: str) -> None:
    """Issuer realm, client ids and audiences in authsvc's settings exist in the realm."""
    env = _authsvc_env(name)
    realm = files.realm()
    clients = _clients()
    for key in ("AUTHSVC_OIDC_ISSUER", "AUTHSVC_OIDC_DISCOVERY_URL", "AUTHSVC_OIDC_JWKS_URL"):
        path = urlsplit(env[key].replace("${PUBLIC_URL:?set in .env}", "https://x")).path
        assert path.startswith(f"/keycloak/realms/{realm['realm']}"), key
    assert env["AUTHSVC_OIDC_CLIENT_ID"] in clients
    admin = clients[env["AUTHSVC_ADMIN_CLIENT_ID"]]
    assert admin["publicClient"] is False and admin["standardFlowEnabled"] is True
    assert admin["secret"] == "${AUTHSVC_ADMIN_CLIENT_SECRET}"
    assert admin["attributes"]["pkce.code.challenge.method"] == "S256"
    assert all(uri.startswith("${PUBLIC_URL}/admin") for uri in admin["redirectUris"])


def test_every_login_client_puts_authsvcs_audience_and_group_paths_in_tokens() -> None:
    """Tokens from any client users log in with carry an accepted aud and full group paths."""
    audiences = set(_list(_authsvc_env()["AUTHSVC_OIDC_AUDIENCES"]))
    for client_id, client in _clients().items():
        mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
        audience = mappers["oidc-audience-mapper"]
        assert audience["included.client.audience"] in audiences, client_id
        assert audience["access.token.claim"] == "true"
        groups = mappers["oidc-group-membership-mapper"]
        assert groups["claim.name"] == "groups" and groups["full.path"] == "true", client_id
        assert groups["access.token.claim"] == "true"
        # No implicit flow and no password grant: browsers use the code flow with PKCE.
        assert client["implicitFlowEnabled"] is False
        assert client["directAccessGrantsEnabled"] is False


def test_orthanc_explorer_logs_in_with_the_public_pkce_client() -> None:
    """OE2's Keycloak client is public, PKCE S256 only, redirecting to Orthanc's pages."""
    oe2 = _plugin_config()["OrthancExplorer2"]["Keycloak"]
    assert oe2["Realm"] == files.realm()["realm"]
    client = _clients()[oe2["ClientId"]]
    assert client["publicClient"] is True and client["standardFlowEnabled"] is True
    assert client["attributes"]["pkce.code.challenge.method"] == "S256"
    assert client["serviceAccountsEnabled"] is False
    assert all(uri.startswith("${PUBLIC_URL}/orthanc/") for uri in client["redirectUris"])
    assert oe2["Url"] == "${PUBLIC_URL}/keycloak/"


def test_plugin_section_calls_authsvc_as_authsvc_expects() -> None:
    """The plugin's section: known options, authsvc's address, credentials, token header."""
    plugin_orthanc = files.compose("docker-compose.yml")["services"]["orthanc"]
    section = _plugin_config()["Authorization"]
    assert set(section) <= PLUGIN_OPTIONS, set(section) - PLUGIN_OPTIONS
    env = _authsvc_env()
    port = env["AUTHSVC_BIND"].rsplit(":", 1)[1]
    assert section["WebServiceRootUrl"] == f"http://authsvc:{port}/"
    assert section["CheckedLevel"] == "studies"
    assert {"orthanc-explorer-2", "stone-webviewer"} <= set(section["StandardConfigurations"])
    assert set(section["StandardConfigurations"]) <= PLUGIN_PRESETS
    assert env["AUTHSVC_API_KEY_HEADER"] in section["TokenHttpHeaders"]
    # The same .env variables feed both ends of the plugin's HTTP Basic credentials.
    orthanc_env = files.service_environment(plugin_orthanc)
    for option, key in (
        ("WebServiceUsername", "AUTHSVC_PLUGIN_USERNAME"),
        ("WebServicePassword", "AUTHSVC_PLUGIN_PASSWORD"),
        ("WebServiceIdentifier", "AUTHSVC_ORTHANC_SERVER_ID"),
    ):
        assert section[option] == "${" + key + "}"
        assert orthanc_env[key] == env[key], key


def test_optional_service_orthanc_registers_authsvcs_user() -> None:
    """The optional plugin-free door registers exactly the user authsvc logs in with."""
    internal = files.orthanc_config("orthanc.json", "internal/internal.json")
    assert internal["AuthenticationEnabled"] is True
    assert "Authorization" not in internal
    assert internal["RegisteredUsers"] == {
        "${AUTHSVC_ORTHANC_USERNAME}": "${AUTHSVC_ORTHANC_PASSWORD}"
    }


def test_authsvc_reaches_the_plugin_orthanc_with_its_service_key() -> None:
    """One Orthanc: authsvc calls it with the service key, in a header the plugin reads."""
    from authsvc.config import load_settings

    env = _authsvc_env()
    assert env["AUTHSVC_ORTHANC_URL"] == "http://orthanc:8042"
    assert env["AUTHSVC_ORTHANC_SERVICE_KEY"] == "${AUTHSVC_ORTHANC_SERVICE_KEY:?set in .env}"
    assert "AUTHSVC_ORTHANC_USERNAME" not in env and "AUTHSVC_ORTHANC_PASSWORD" not in env
    header = env.get("AUTHSVC_ORTHANC_SERVICE_KEY_HEADER", "api-key")
    section = files.orthanc_config("orthanc.json", "plugin/authorization.json")["Authorization"]
    assert header.lower() in {name.lower() for name in section["TokenHttpHeaders"]}
    # make-env.py's secret is a key authsvc accepts (32+ printable characters).
    key = files.filled_env()["AUTHSVC_ORTHANC_SERVICE_KEY"]
    assert load_settings({"env": "testing", "orthanc_service_key": key}).orthanc_service_key


def test_demo_accounts_are_marked_and_use_the_demo_password() -> None:
    """Every realm user is a demo account: named, flagged and with the .env demo password."""
    realm = files.realm()
    roles = {role["name"] for role in realm["roles"]["realm"]}
    groups = {group["path"] for group in realm["groups"]}
    for user in realm["users"]:
        assert user["username"].startswith("demo-")
        assert user["attributes"]["demo-account"] == ["true"]
        assert "demo account" in user["lastName"]
        assert user["credentials"] == [
            {"type": "password", "value": "${DEMO_PASSWORD}", "temporary": False}
        ]
        assert set(user["realmRoles"]) <= roles and set(user["groups"]) <= groups


# What each demo account may do through its roles alone (albums add to this).
EXPECTED_PROFILES = {
    "demo-admin": ({"all", "admin-permissions"}, {"*"}),
    "demo-doctor": ({"view", "download", "share", "send"}, {"*"}),
    "demo-uploader": ({"view", "download", "upload"}, {"*"}),
    "demo-partner": ({"view", "download"}, {"external"}),
    "demo-researcher": (set(), set()),
}


def test_demo_accounts_get_the_documented_profiles() -> None:
    """Realm roles and groups of each demo account, through the roles file, give its profile."""
    users = {user["username"]: user for user in files.realm()["users"]}
    assert set(users) == set(EXPECTED_PROFILES)
    roles = files.roles()
    for username, (permissions, labels) in EXPECTED_PROFILES.items():
        user = users[username]
        identity = Identity(
            kind=IdentityKind.USER,
            subject=f"sub-{username}",
            username=username,
            realm_roles=frozenset(user["realmRoles"]),
            groups=frozenset(user["groups"]),
        )
        profile = compose_profile(identity, roles)
        assert profile.permissions == permissions, username
        assert profile.authorized_labels == labels, username


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_keycloak_lives_at_one_path_everywhere(name: str) -> None:
    """Keycloak's relative path agrees across Keycloak, its health check, nginx, authsvc, OE2."""
    services = files.compose(name)["services"]
    keycloak = files.service_environment(services["keycloak"])
    path = keycloak["KC_HTTP_RELATIVE_PATH"]
    assert path == "/keycloak"
    assert keycloak["KC_HOSTNAME"] == "${PUBLIC_URL:?set in .env}" + path
    assert f"GET {path}/health/ready" in services["keycloak"]["healthcheck"]["test"][1]
    env = _authsvc_env(name)
    realm = files.realm()["realm"]
    assert env["AUTHSVC_OIDC_ISSUER"] == f"${{PUBLIC_URL:?set in .env}}{path}/realms/{realm}"
    internal = f"http://keycloak:8080{path}/realms/{realm}/"
    assert env["AUTHSVC_OIDC_DISCOVERY_URL"].startswith(internal)
    assert env["AUTHSVC_OIDC_JWKS_URL"].startswith(internal)
    nginx = services["nginx"]
    assert files.service_environment(nginx)["KEYCLOAK_UPSTREAM"] == "keycloak:8080"
    for source, target in files.bind_mounts(nginx):
        if target.endswith(("plugin.conf.template", "gate.conf.template")):
            assert f"location {path}/ {{" in files.path_of(source).read_text()
    if name == "docker-compose.yml":
        assert (
            _plugin_config()["OrthancExplorer2"]["Keycloak"]["Url"] == "${PUBLIC_URL}" + path + "/"
        )
