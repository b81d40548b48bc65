"""A fake Keycloak for unit and functional tests: keys the tests generate, Keycloak-shaped JWTs.

Use :func:`oidc_config` for the app settings and :func:`mock_idp` (with the ``requests_mock``
fixture) to serve the discovery document and JWKS; :func:`make_token` signs access tokens.
Integration tests use the real OIDC provider (``idp`` fixture) instead.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

import requests_mock as rm
from joserfc import jwt
from joserfc.jwk import RSAKey

ISSUER = "https://idp.test/realms/orthanc"
DISCOVERY_URL = ISSUER + "/.well-known/openid-configuration"
JWKS_URL = ISSUER + "/protocol/openid-connect/certs"
CLIENT_ID = "orthanc"
KID = "test-rsa-1"


@functools.cache
def signing_key() -> RSAKey:
    """The fake provider's RSA key (generated once per test session)."""
    return RSAKey.generate_key(2048, parameters={"kid": KID, "alg": "RS256", "use": "sig"})


@functools.cache
def foreign_key() -> RSAKey:
    """A key the provider does not publish, with the same kid (forgery attempts)."""
    return RSAKey.generate_key(2048, parameters={"kid": KID, "alg": "RS256", "use": "sig"})


def oidc_config(**extra: Any) -> dict[str, Any]:
    """App settings pointing authsvc at the fake provider."""
    config: dict[str, Any] = {"oidc_issuer": ISSUER, "oidc_client_id": CLIENT_ID}
    config.update(extra)
    return config


def mock_idp(mocker: rm.Mocker, *, down: bool = False) -> None:
    """Serve the discovery document and JWKS (or connection errors when ``down``)."""
    if down:
        import requests

        mocker.get(DISCOVERY_URL, exc=requests.ConnectionError("connection refused"))
        mocker.get(JWKS_URL, exc=requests.ConnectionError("connection refused"))
        return
    mocker.get(DISCOVERY_URL, json={"issuer": ISSUER, "jwks_uri": JWKS_URL})
    mocker.get(JWKS_URL, json={"keys": [signing_key().as_dict(private=False)]})


def claims(
    username: str = "alice",
    *,
    realm_roles: tuple[str, ...] = (),
    client_roles: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    subject: str | None = None,
    # Long enough for tokens made when a test module is imported to outlive a slow full run.
    lifetime: int = 4 * 3600,
    **extra: Any,
) -> dict[str, Any]:
    """Keycloak-shaped access token claims for a user."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": ["account", CLIENT_ID],
        "azp": CLIENT_ID,
        "typ": "Bearer",
        "sub": subject or str(uuid.uuid5(uuid.NAMESPACE_DNS, username)),
        "preferred_username": username,
        "name": username.title(),
        "email": f"{username}@example.test",
        "email_verified": True,
        "iat": now,
        "exp": now + lifetime,
        "realm_access": {"roles": list(realm_roles)},
        "resource_access": {CLIENT_ID: {"roles": list(client_roles)}},
        "groups": list(groups),
    }
    body.update(extra)
    return body


def make_token(
    username: str = "alice", *, key: RSAKey | None = None, alg: str = "RS256", **kwargs: Any
) -> str:
    """Sign an access token for ``username`` (see :func:`claims` for the options)."""
    key = key or signing_key()
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, claims(username, **kwargs), key, algorithms=[alg])
