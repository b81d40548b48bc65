"""config/keycloak/orthanc-realm.json drives the test IdP: real tokens for the demo accounts,
whose claims and, through config/roles/permissions.json, profiles are what the docs promise.

Keycloak itself cannot be installed here, so the realm is translated into the Keycloak-shaped
test IdP's format (``files.realm_for_test_idp``: clients, audiences, users, roles, groups);
tokens are then issued, signed and verified exactly as in the other integration tests.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import requests

from authsvc.identity import claims_to_identity
from authsvc.identity.roles import compose_profile
from tests import processes
from tests.deploy import files
from tests.deploy.test_names import EXPECTED_PROFILES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client_id", ["orthanc", "authsvc"])
@pytest.mark.parametrize("username", sorted(EXPECTED_PROFILES))
def test_demo_tokens_carry_what_authsvc_reads(
    kit_idp: processes.IdpService, username: str, client_id: str
) -> None:
    """Each demo account's token from each login client: audience, groups, roles, profile."""
    response = kit_idp.password_token(username, client_id=client_id, scope="openid")
    claims = _unverified_claims(response["access_token"])
    assert claims["iss"] == kit_idp.issuer
    env = files.service_environment(files.compose("docker-compose.yml")["services"]["authsvc"])
    accepted = {a.strip() for a in env["AUTHSVC_OIDC_AUDIENCES"].split(",")}
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert accepted & set(audience), audience
    user = next(u for u in files.realm()["users"] if u["username"] == username)
    assert set(user["groups"]) == set(claims.get("groups", []))
    assert set(user["realmRoles"]) <= set(claims["realm_access"]["roles"])
    identity = claims_to_identity(claims, env["AUTHSVC_OIDC_CLIENT_ID"])
    profile = compose_profile(identity, files.roles())
    permissions, labels = EXPECTED_PROFILES[username]
    assert profile.permissions == permissions
    assert profile.authorized_labels == labels


def _unverified_claims(token: str) -> dict[str, Any]:
    """Return a JWT's payload (the signature is the IdP's own; verifying it is authsvc's job)."""
    payload = token.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(data, dict)
    return data


def test_wrong_password_is_refused(kit_idp: processes.IdpService) -> None:
    """The demo password comes from .env: anything else is refused."""
    answer = requests.post(
        kit_idp.token_url,
        data={
            "grant_type": "password",
            "client_id": "orthanc",
            "username": "demo-admin",
            "password": "demo",
        },
        timeout=10,
    )
    assert answer.status_code == 400
