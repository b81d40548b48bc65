"""authsvc.services: the per-app registry of long-lived collaborators (settings, Orthanc clients).

Built once by ``create_app`` and reached through :func:`services`, so views and commands share
one set of HTTP sessions and caches per process instead of building them per request.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import requests
from flask import Flask
from flask import current_app

from authsvc.albums import Archive
from authsvc.albums import grants_for
from authsvc.albums import membership_changed
from authsvc.albums.access import RoleCache
from authsvc.config import Settings
from authsvc.credentials.api_key_records import owner_backing
from authsvc.credentials.api_keys import API_KEY_PREFIX
from authsvc.credentials.lifecycle import BackingCache
from authsvc.credentials.lifecycle import MakerRights
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.share_link_records import ShareTokenService
from authsvc.credentials.share_links import LegacyShareKey
from authsvc.credentials.share_links import OhifDataSource
from authsvc.credentials.share_links import PublicRoots
from authsvc.identity import KeycloakVerifier
from authsvc.identity.authn import ApiKeyCache
from authsvc.identity.authn import Authenticator
from authsvc.identity.authn import ProfileCache
from authsvc.identity.roles_store import RolesStore
from authsvc.identity.users import UserDirectory
from authsvc.metrics import DecisionCounters
from authsvc.orthanc import OrthancServers
from authsvc.orthanc import servers_from_settings
from authsvc.orthanc.study_labels import StudyLabelCache

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    """What every request may need, built once per process."""

    settings: Settings
    orthanc: OrthancServers
    #: The Orthanc servers and label prefix the album use-cases work on.
    archive: Archive
    #: None when no OIDC issuer is configured (bearer JWTs are then refused).
    verifier: KeycloakVerifier | None
    authenticator: Authenticator
    roles: RolesStore
    share_tokens: ShareTokenService
    decisions: DecisionCounters
    users: UserDirectory
    profile_cache: ProfileCache
    #: Does a credential still stand on its maker's rights? (answers kept a few seconds)
    makers: MakerRights
    #: Seals and opens upload / album-read tokens; None when ``upload_token_keys`` is unset.
    upload_keys: KeyRing | None = None
    #: Study -> labels cache of the nginx gate and album DICOMweb (short TTL, per process).
    study_labels: StudyLabelCache = dataclasses.field(default_factory=StudyLabelCache)
    #: Principal -> {album label: role} for the gate and album DICOMweb (a few seconds).
    album_roles: RoleCache = dataclasses.field(default_factory=RoleCache)


def init_app(app: Flask, settings: Settings) -> None:
    """Build the registry from the settings and attach it to the app.

    The one place where the domain's collaborators meet: each object gets what it needs as
    constructor arguments (album grants and the disabled check for the authenticator, the
    authenticator and Orthanc for the maker checks, those for the share links).
    """
    orthanc = orthanc_servers(settings)
    verifier = build_verifier(settings)
    # A roles change made by another worker or instance reaches the profiles this worker
    # composes within two of these TTLs (roles, then profile), which stays within the plugin's
    # own cache time (``plugin_validity``). Reads of the roles document itself are never cached.
    cache_ttl = worker_cache_ttl(settings)
    profile_cache = ProfileCache(ttl=cache_ttl)
    roles = RolesStore(roles_file=settings.roles_file, ttl=cache_ttl, on_change=profile_cache.clear)
    roles.read_file()  # a bad roles file stops start-up with one line, not a 500 later
    backing = BackingCache(ttl=cache_ttl)

    def person_disabled(subject: str) -> bool:
        # Cached with the makers' answers: cleared by the process that disables, seen by the
        # others within the cache TTL.
        return not backing.get(("person", subject), lambda: owner_backing(subject))

    authenticator = Authenticator(
        verifier=verifier,
        roles=roles.current,
        api_keys=ApiKeyCache(owner_disabled=lambda subject: not owner_backing(subject)),
        api_key_prefix=API_KEY_PREFIX,
        admin_roles=settings.admin_roles,
        anonymous_roles=settings.anonymous_roles,
        is_disabled=person_disabled,
        album_grants=grants_for,
    )
    study_labels = StudyLabelCache()
    study_labels.listen_to(orthanc)
    makers = MakerRights(
        cache=backing,
        actor_of=authenticator.actor,
        roles=roles.current,
        orthanc=orthanc,
        study_labels=study_labels,
    )
    membership_changed.connect(makers.forget)  # weak: lives as long as the app's registry
    upload_keys = (
        KeyRing.from_text(settings.upload_token_keys, setting="AUTHSVC_UPLOAD_TOKEN_KEYS")
        if settings.upload_token_keys
        else None
    )
    app.extensions["authsvc"] = Services(
        settings=settings,
        orthanc=orthanc,
        archive=Archive(orthanc, settings.album_label_prefix),
        verifier=verifier,
        authenticator=authenticator,
        roles=roles,
        share_tokens=build_share_tokens(
            settings, orthanc, makers=makers, study_labels=study_labels, read_keys=upload_keys
        ),
        decisions=DecisionCounters(),
        users=UserDirectory(),
        profile_cache=profile_cache,
        makers=makers,
        upload_keys=upload_keys,
        study_labels=study_labels,
    )


def worker_cache_ttl(settings: Settings) -> float:
    """Seconds a worker may reuse what another worker or replica can change (roles, profiles,
    share-link revocations): at most 5, at most half the plugin's ``validity``, 0 below 2 s."""
    return float(min(5, settings.plugin_validity // 2))


def orthanc_servers(settings: Settings) -> OrthancServers:
    """Build the Orthanc server registry from the ``orthanc_*`` settings (no I/O)."""
    return OrthancServers(
        servers_from_settings(
            settings.orthanc_url,
            settings.orthanc_server_id,
            settings.orthanc_username,
            settings.orthanc_password,
            settings.orthanc_servers,
            timeout=settings.orthanc_timeout,
            retries=settings.orthanc_retries,
            service_key=settings.orthanc_service_key,
            service_key_header=settings.orthanc_service_key_header,
        )
    )


def build_share_tokens(
    settings: Settings,
    orthanc: OrthancServers,
    *,
    makers: MakerRights,
    study_labels: StudyLabelCache,
    read_keys: KeyRing | None,
) -> ShareTokenService:
    """Build the share token service: key ring, legacy key, public roots, lifetime rules,
    and what it asks about a link's maker and a study's labels."""
    legacy_key = None
    if settings.legacy_share_secret:
        legacy_key = LegacyShareKey(settings.legacy_share_secret)
        if legacy_key.weak:
            log.warning("legacy_share_secret is shorter than 112 bits; rotate links soon")
    # The plugin sends server-id null when WebServiceIdentifier is unset: "" means null here.
    known = {settings.orthanc_server_id or None} | {i or None for i in orthanc.ids()}
    return ShareTokenService(
        ring=(
            KeyRing.from_text(settings.share_token_keys, setting="AUTHSVC_SHARE_TOKEN_KEYS")
            if settings.share_token_keys
            else None
        ),
        legacy_key=legacy_key,
        roots=PublicRoots(
            orthanc=settings.public_orthanc_root or None,
            landing_page=settings.public_landing_root or None,
            ohif=settings.public_ohif_root or None,
            ohif_data_source=OhifDataSource(settings.ohif_data_source),
        ),
        known_servers=known,
        rights=makers,
        orthanc=orthanc,
        study_labels=study_labels,
        read_keys=read_keys,
        max_lifetime=(
            timedelta(seconds=settings.share_token_max_lifetime)
            if settings.share_token_max_lifetime
            else None
        ),
        never_expires_allowed=settings.share_token_never_expires,
        # A link in force is re-read after a second: revocations reach every worker within
        # 1 s, Orthanc within validity + 1 s (the plugin's own cache of each answer).
        revocation_ttl=min(1.0, worker_cache_ttl(settings)),
    )


def json_fetcher(timeout: float) -> Callable[[str], Any]:
    """Return ``fetch_json(url)`` for the OIDC provider: one session, timeouts, no redirects.

    Any failure (connection, timeout, HTTP error, non-JSON body) raises; the verifier turns
    it into IdentityProviderUnavailable, so requests fail closed while the provider is down.
    """
    session = requests.Session()

    def fetch_json(url: str) -> Any:
        response = session.get(url, timeout=timeout, allow_redirects=False)
        response.raise_for_status()
        return response.json()

    return fetch_json


def build_verifier(settings: Settings) -> KeycloakVerifier | None:
    """Build the Keycloak token verifier from the settings (no I/O: keys come on first use)."""
    if not settings.oidc_issuer:
        return None
    return KeycloakVerifier(
        settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        fetch_json=json_fetcher(settings.oidc_timeout),
        audiences=settings.oidc_audiences or None,
        trusted_clients=settings.oidc_trusted_clients,
        algorithms=settings.oidc_algorithms,
        leeway=settings.oidc_leeway,
        discovery_url=settings.oidc_discovery_url or None,
        jwks_url=settings.oidc_jwks_url or None,
    )


def services() -> Services:
    """Return the registry of the current app."""
    registry: Services = current_app.extensions["authsvc"]
    return registry
