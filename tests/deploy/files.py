"""Read the deployment kit's files the way their consumers do, for the tests in tests/deploy.

Compose files are YAML with ``${VAR}`` interpolation (compose's syntax: ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``); Orthanc's
configuration is JSON with comments and ``${VAR}`` expanded by Orthanc; Keycloak's realm file is
JSON with ``${VAR}`` placeholders replaced at import.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from authsvc.identity.roles import RolesConfig
from authsvc.identity.roles import load_permissions_file
from authsvc.identity.roles import loads_jsonc
from tests.processes import REPO_ROOT

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gate.yml")
ENV_EXAMPLE = REPO_ROOT / ".env.example"
REALM_FILE = REPO_ROOT / "config" / "keycloak" / "orthanc-realm.json"
ROLES_FILE = REPO_ROOT / "config" / "roles" / "permissions.json"
ORTHANC_DIR = REPO_ROOT / "config" / "orthanc"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def compose(name: str) -> dict[str, Any]:
    """Return one compose file as data (anchors and aliases resolved)."""
    data = yaml.safe_load((REPO_ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


def strings(node: Any) -> Iterator[str]:
    """Yield every string value (not key) found in nested lists and mappings."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def without_comments(text: str) -> str:
    """Return YAML or shell-style text without its whole-line comments."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def env_example() -> dict[str, str]:
    """Return the assignments of .env.example (commented lines are not assignments)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not an assignment: {line!r}"
        values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Interpolate like compose; a missing required variable raises KeyError."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if operator is None:
            return value or ""  # compose warns and substitutes an empty string
        present = bool(value) if operator.startswith(":") else value is not None
        if present:
            return str(value)
        if operator.endswith("-"):
            return argument
        raise KeyError(f"{name}: {argument}")

    return INTERPOLATION.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping (list form converted)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (host path, container path) of the service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes") or []:
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def orthanc_config(*relative: str) -> dict[str, Any]:
    """Return Orthanc's merged configuration from files under config/orthanc (no duplicates)."""
    merged: dict[str, Any] = {}
    for name in relative:
        part = loads_jsonc((ORTHANC_DIR / name).read_text())
        clash = merged.keys() & part.keys()
        assert not clash, f"Orthanc refuses sections defined twice: {sorted(clash)}"
        merged.update(part)
    return merged


def realm() -> dict[str, Any]:
    """Return the Keycloak realm export with its ``${VAR}`` placeholders left in place."""
    data = json.loads(REALM_FILE.read_text())
    assert isinstance(data, dict)
    return data


def roles() -> RolesConfig:
    """Return the roles configuration exactly as authsvc imports it."""
    return load_permissions_file(ROLES_FILE.read_text())


def realm_placeholders() -> set[str]:
    """Return the variables the realm file expects from Keycloak's environment."""
    return set(INTERPOLATION_NAMES.findall(REALM_FILE.read_text()))


INTERPOLATION_NAMES = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def path_of(repo_relative: str) -> Path:
    """Return the absolute path of a ``./``-relative compose path."""
    return REPO_ROOT / repo_relative.removeprefix("./")


def filled_env() -> dict[str, str]:
    """Return .env.example with fresh secrets, exactly as scripts/deploy/make-env.py fills it."""
    spec = importlib.util.spec_from_file_location(
        "make_env", REPO_ROOT / "scripts" / "deploy" / "make-env.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = {}
    for line in module.fill(ENV_EXAMPLE.read_text()).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def interpolated_environment(
    compose_file: str, service: str, dotenv: Mapping[str, str]
) -> dict[str, str]:
    """Return the environment compose would give the service, interpolated from dotenv."""
    raw = service_environment(compose(compose_file)["services"][service])
    return {key: interpolate(value, dotenv) for key, value in raw.items()}


def realm_for_test_idp(
    placeholders: Mapping[str, str], *, password_grant: bool = True
) -> dict[str, Any]:
    """Translate config/keycloak/orthanc-realm.json into the test IdP's realm format.

    The test IdP (scripts/testenv/idp) speaks Keycloak's protocol with a simpler realm file.
    Everything authsvc can observe is carried over: realm name, clients (public or
    confidential, secret, PKCE, redirect URIs, the audiences their audience mappers add),
    users (password, names, e-mail, realm roles, groups) and Keycloak's default roles. With
    ``password_grant`` the test logs users in with the password grant instead of a browser;
    the committed realm keeps that grant off.
    """
    text = REALM_FILE.read_text()
    for name, value in placeholders.items():
        text = text.replace("${" + name + "}", value)
    leftover = INTERPOLATION_NAMES.findall(text)
    assert not leftover, f"no value for realm placeholders {leftover}"
    source = json.loads(text)
    clients = []
    for client in source["clients"]:
        mappers = {m["protocolMapper"]: m["config"] for m in client.get("protocolMappers", [])}
        audience = mappers.get("oidc-audience-mapper", {}).get("included.client.audience")
        attributes = client.get("attributes", {})
        clients.append(
            {
                "clientId": client["clientId"],
                "publicClient": client["publicClient"],
                "secret": client.get("secret", ""),
                "standardFlowEnabled": client["standardFlowEnabled"],
                "directAccessGrantsEnabled": password_grant or client["directAccessGrantsEnabled"],
                "serviceAccountsEnabled": client["serviceAccountsEnabled"],
                "pkceRequired": attributes.get("pkce.code.challenge.method") == "S256",
                "redirectUris": client["redirectUris"],
                "postLogoutRedirectUris": attributes.get("post.logout.redirect.uris", "").split(
                    "##"
                ),
                "audience": [audience] if audience else [],
            }
        )
    users = []
    for user in source["users"]:
        (credential,) = user["credentials"]
        users.append(
            {
                "username": user["username"],
                "password": credential["value"],
                "email": user["email"],
                "emailVerified": user["emailVerified"],
                "firstName": user["firstName"],
                "lastName": user["lastName"],
                "enabled": user["enabled"],
                "realmRoles": user["realmRoles"],
                "clientRoles": user.get("clientRoles", {}),
                "groups": user["groups"],
            }
        )
    realm_name = source["realm"]
    return {
        "realm": realm_name,
        "displayName": source.get("displayName", realm_name),
        "accessTokenLifespan": source["accessTokenLifespan"],
        "ssoSessionMaxLifespan": source["ssoSessionMaxLifespan"],
        # Keycloak gives every user these composite/default roles; they must grant nothing.
        "defaultRoles": [f"default-roles-{realm_name}", "offline_access", "uma_authorization"],
        "clients": clients,
        "users": users,
    }
