"""authsvc.credentials.share_links: the Orthanc plugin's resource tokens (share, instant links).

The Advanced Authorization plugin asks the service to create (C4), validate (C1) and decode (C5)
*resource tokens*: viewer publications (Stone, OHIF, VolView, Osimis, MedDream), instant links
for viewers and downloads, and OE2 inbox links (protocol spec §3.1, §3.4, §3.5, §7, §10.2-10.4).

Tokens authsvc issues are sealed with
:attr:`Purpose.SHARE <authsvc.credentials.sealing.Purpose>`: opaque to the holder (unlike the
reference service's signed JWTs, the study UIDs cannot be read from the link) and carrying
everything validation needs: token id (for the revocation lookup), type, resources, Orthanc
server id, issuer, lifetime.

Claims (compact JSON): ``jti`` token id, ``typ`` token type, ``res`` list of
``[level, orthanc-id, dicom-uid, url]``, ``srv`` server id, ``iss`` issuer (null when the plugin
created the token: C4 does not say who asked), ``rid`` the creation request's optional ``id``,
``nbf``/``exp`` Unix seconds (``exp`` absent: the link never expires, OE2 "share duration 0").

**Migration.** :func:`decode_legacy_token` accepts orthanc-auth-service's HS256 JWTs when authsvc
is given that service's ``SECRET_KEY``, so links already sent keep working. Those tokens carry no
token id: they cannot be revoked one by one, only all at once by removing the legacy key.

Which HTTP methods a valid token may use is decided by the policy module, not here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from enum import StrEnum
from typing import Any
from typing import Final
from typing import TypeVar
from urllib.parse import quote

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey

from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import MAX_TOKEN_CHARS
from authsvc.credentials.sealing import ExpectedServer
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.sealing import check_server
from authsvc.credentials.sealing import epoch_seconds
from authsvc.credentials.sealing import from_epoch
from authsvc.credentials.sealing import seal
from authsvc.credentials.sealing import token_purpose
from authsvc.credentials.sealing import unsafe_open_token_ignoring_time
from authsvc.errors import ConfigError
from authsvc.errors import ShareTokenExpired
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import ValidationFailed


class TokenType(StrEnum):
    """Resource token types, spelled exactly as on the wire (``PUT /tokens/{token-type}``)."""

    DOWNLOAD_INSTANT_LINK = "download-instant-link"
    INBOX_LINK = "inbox-link"
    MEDDREAM_INSTANT_LINK = "meddream-instant-link"
    MEDDREAM_VIEWER_PUBLICATION = "meddream-viewer-publication"
    OHIF_VIEWER_PUBLICATION = "ohif-viewer-publication"
    OSIMIS_VIEWER_PUBLICATION = "osimis-viewer-publication"
    RESOURCE_INSTANT_LINK = "resource-instant-link"
    STONE_VIEWER_PUBLICATION = "stone-viewer-publication"
    VIEWER_INSTANT_LINK = "viewer-instant-link"
    VOLVIEW_VIEWER_PUBLICATION = "volview-viewer-publication"


#: Long-lived share links that open a viewer (OE2 "Share").
PUBLICATION_TYPES: Final = frozenset(
    {
        TokenType.MEDDREAM_VIEWER_PUBLICATION,
        TokenType.OHIF_VIEWER_PUBLICATION,
        TokenType.OSIMIS_VIEWER_PUBLICATION,
        TokenType.STONE_VIEWER_PUBLICATION,
        TokenType.VOLVIEW_VIEWER_PUBLICATION,
    }
)

#: Short-lived links used by a logged-in user's own browser; the caller builds the URL.
INSTANT_LINK_TYPES: Final = frozenset(
    {
        TokenType.DOWNLOAD_INSTANT_LINK,
        TokenType.RESOURCE_INSTANT_LINK,
        TokenType.VIEWER_INSTANT_LINK,
    }
)


class ResourceLevel(StrEnum):
    """Orthanc resource levels as the plugin spells them (lower case)."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    SYSTEM = "system"


# Depth in the DICOM hierarchy; SYSTEM is not a resource and has no depth.
_DEPTH: Final = {
    ResourceLevel.PATIENT: 0,
    ResourceLevel.STUDY: 1,
    ResourceLevel.SERIES: 2,
    ResourceLevel.INSTANCE: 3,
}


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """One Orthanc resource: level plus Orthanc id and/or DICOM uid (``url`` is informational)."""

    level: ResourceLevel
    orthanc_id: str | None = None
    dicom_uid: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ShareTokenClaims:
    """The verified content of a share token, sealed or legacy.

    ``token_id`` is None for legacy tokens (not revocable one by one); ``expires_at`` None means
    the link never expires; ``not_before``/``issuer``/``key_id`` are None when unknown (legacy).
    """

    token_type: TokenType
    resources: tuple[ResourceRef, ...]
    token_id: str | None
    server_id: str | None
    issuer: str | None
    not_before: datetime | None
    expires_at: datetime | None
    key_id: str | None
    request_id: str | None = None
    legacy: bool = False


# --- issuing -----------------------------------------------------------------------------


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details={field: message})


def _as_type(value: str) -> TokenType:
    try:
        return TokenType(value)
    except ValueError:
        raise _invalid("type", "Unknown token type.") from None


def _validate_resources(
    token_type: TokenType, resources: Sequence[ResourceRef]
) -> tuple[ResourceRef, ...]:
    if token_type is TokenType.INBOX_LINK:
        # An inbox link is an upload invitation; it names no existing resource.
        if resources:
            raise _invalid("resources", "An inbox link takes no resources.")
        return ()
    if not resources:
        raise _invalid("resources", "At least one resource is required.")
    for resource in resources:
        if not isinstance(resource, ResourceRef):
            raise _invalid("resources", "Each resource must be a ResourceRef.")
        if resource.level is ResourceLevel.SYSTEM:
            raise _invalid("resources", "A share token cannot name the system level.")
        if not (resource.orthanc_id or resource.dicom_uid):
            raise _invalid("resources", "Each resource needs an orthanc-id or a dicom-uid.")
    return tuple(resources)


def issue_share_token(
    ring: KeyRing,
    *,
    token_id: str,
    token_type: TokenType,
    resources: Sequence[ResourceRef],
    server_id: str | None,
    now: datetime,
    expires_at: datetime | None,
    issuer: str | None = None,
    request_id: str | None = None,
) -> str:
    """Seal a share token; ``expires_at`` None makes a link that never expires.

    :raise ValidationFailed: no resources (except inbox links, which take none), a resource
        without ids or at system level, or an expiry not after ``now`` (422).
    """
    if not isinstance(token_id, str) or not token_id:
        raise _invalid("token_id", "A token id is required.")
    token_type = _as_type(token_type)
    checked = _validate_resources(token_type, resources)
    not_before = epoch_seconds(now)
    claims: dict[str, Any] = {
        "jti": token_id,
        "typ": token_type.value,
        "res": [[r.level.value, r.orthanc_id, r.dicom_uid, r.url] for r in checked],
        "srv": server_id,
        "iss": issuer,
        "nbf": not_before,
    }
    if request_id is not None:
        claims["rid"] = request_id
    if expires_at is not None:
        expiry = epoch_seconds(expires_at)
        if expiry <= not_before:
            raise _invalid("expiration-date", "The expiration date is not in the future.")
        claims["exp"] = expiry
    return seal(ring, Purpose.SHARE, claims, now=now)


# --- opening -----------------------------------------------------------------------------


_E = TypeVar("_E", bound=StrEnum)


def _member(enum: type[_E], value: Any) -> _E:
    """Return the enum member spelled ``value``; TokenInvalid for anything else."""
    if not isinstance(value, str):
        raise TokenInvalid()
    try:
        return enum(value)
    except ValueError as exc:
        raise TokenInvalid() from exc


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TokenInvalid()


def _sealed_resource(item: Any) -> ResourceRef:
    if not isinstance(item, list) or len(item) != 4:
        raise TokenInvalid()
    level, orthanc_id, dicom_uid, url = item
    return ResourceRef(
        level=_member(ResourceLevel, level),
        orthanc_id=_optional_str(orthanc_id),
        dicom_uid=_optional_str(dicom_uid),
        url=_optional_str(url),
    )


def open_share_token(
    ring: KeyRing,
    token: str,
    *,
    now: datetime,
    expected_server_id: ExpectedServer = ANY_SERVER,
) -> ShareTokenClaims:
    """Verify a sealed share token; check revocation of ``claims.token_id`` next.

    ``expected_server_id``: the ``server-id`` of the plugin request (``None`` is a value: the
    server without identifier); :data:`~authsvc.credentials.sealing.ANY_SERVER` skips the check.

    :raise TokenInvalid: not an authentic share token, or issued for another server.
    :raise ShareTokenExpired: authentic but outside its lifetime (carries ``token_type``).
    """
    opened = unsafe_open_token_ignoring_time(ring, Purpose.SHARE, token)
    claims = opened.claims
    token_id = claims.get("jti")
    raw_resources = claims.get("res")
    if not isinstance(token_id, str) or not isinstance(raw_resources, list):
        raise TokenInvalid()
    token_type = _member(TokenType, claims.get("typ"))
    server_id = _optional_str(claims.get("srv"))
    result = ShareTokenClaims(
        token_type=token_type,
        resources=tuple(_sealed_resource(item) for item in raw_resources),
        token_id=token_id,
        server_id=server_id,
        issuer=_optional_str(claims.get("iss")),
        not_before=from_epoch(opened.not_before),
        expires_at=None if opened.expires_at is None else from_epoch(opened.expires_at),
        key_id=opened.key_id,
        request_id=_optional_str(claims.get("rid")),
    )
    check_server(server_id, expected_server_id, kind="share token")
    try:
        opened.check_time(now)
    except TokenExpired as exc:
        raise ShareTokenExpired(exc.message, token_type=token_type.value) from None
    return result


# --- legacy orthanc-auth-service tokens ------------------------------------------------------


class LegacyShareKey:
    """orthanc-auth-service's ``SECRET_KEY``, prepared once to verify its HS256 share tokens."""

    __slots__ = ("_key", "weak")

    def __init__(self, secret: str) -> None:
        """Prepare the key; ConfigError if empty. ``weak`` is True below 112 bits (log it)."""
        if not isinstance(secret, str) or not secret:
            raise ConfigError("legacy share key: must not be empty")
        # joserfc warns about short HMAC keys. The old service chose this key and every link
        # already sent depends on it, so the warning is recorded as ``weak`` instead of raised.
        # Done once here: catch_warnings is not thread-safe, so never per request.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            self._key = OctKey.import_key(secret)
        self.weak = len(secret.encode("utf-8")) * 8 < 112

    def __repr__(self) -> str:
        return "LegacyShareKey(<secret>)"


# The reference service only ever signed with HS256; accepting anything else (``none``, RS256
# with the secret as a "public key"…) would open the door to algorithm confusion.
_LEGACY_ALGORITHMS: Final = ("HS256",)


def _parse_iso_datetime(text: str) -> datetime:
    """Parse an ISO-8601 date-time; a value without offset is taken as UTC (ValueError if bad)."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _legacy_resource(item: Any) -> ResourceRef:
    if not isinstance(item, Mapping):
        raise TokenInvalid()
    return ResourceRef(
        level=_member(ResourceLevel, item.get("level")),
        orthanc_id=_optional_str(item.get("orthanc_id")),
        dicom_uid=_optional_str(item.get("dicom_uid")),
        url=_optional_str(item.get("url")),
    )


def decode_legacy_token(key: LegacyShareKey, token: str, *, now: datetime) -> ShareTokenClaims:
    """Verify an orthanc-auth-service HS256 share token and return it as ShareTokenClaims.

    Payload: ``{"id", "resources": [{"dicom_uid", "orthanc_id", "url", "level"}], "type",
    "expiration_date": ISO-8601 or null, "validity_duration"}``; no ``exp`` claim. The link is
    expired from ``expiration_date`` on (no date: never expires; no offset: UTC);
    ``validity_duration`` was already folded into that date at creation and is ignored.
    ``token_id`` is None: such a token is revocable only by removing the legacy key, and it is
    bound to no server (apply the old ``SERVER_ID`` rule to the request instead).

    :raise TokenInvalid: bad signature, any algorithm but HS256, malformed payload.
    :raise ShareTokenExpired: authentic but expired.
    """
    _aware(now)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenInvalid()
    if not token.isascii():
        raise TokenInvalid()
    try:
        decoded = jwt.decode(token, key._key, algorithms=_LEGACY_ALGORITHMS)
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenInvalid() from exc
    payload = decoded.claims
    if decoded.header.get("alg") != "HS256" or not isinstance(payload, Mapping):
        raise TokenInvalid()
    token_type = _member(TokenType, payload.get("type"))
    raw_resources = payload.get("resources")
    if not isinstance(raw_resources, list):
        raise TokenInvalid()
    resources = tuple(_legacy_resource(item) for item in raw_resources)
    raw_expiry = payload.get("expiration_date")
    expires_at: datetime | None = None
    if raw_expiry is not None:
        if not isinstance(raw_expiry, str):
            raise TokenInvalid()
        try:
            expires_at = _parse_iso_datetime(raw_expiry)
        except ValueError as exc:
            raise TokenInvalid() from exc
    claims = ShareTokenClaims(
        token_type=token_type,
        resources=resources,
        token_id=None,
        server_id=None,
        issuer=None,
        not_before=None,
        expires_at=expires_at,
        key_id=None,
        request_id=_optional_str(payload.get("id")),
        legacy=True,
    )
    if expires_at is not None and now >= expires_at:
        raise ShareTokenExpired(token_type=token_type.value)
    return claims


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now


def read_share_token(
    token: str,
    *,
    ring: KeyRing,
    legacy_key: LegacyShareKey | None,
    now: datetime,
    expected_server_id: ExpectedServer = ANY_SERVER,
) -> ShareTokenClaims:
    """Open a share token of either format: sealed (``sh1.``…) or, if a legacy key is set, HS256.

    ``expected_server_id`` applies to sealed tokens only; legacy tokens name no server.
    Errors as :func:`open_share_token` / :func:`decode_legacy_token`.
    """
    if token_purpose(token) is not None or legacy_key is None:
        # Any sealed token (a wrong-purpose one gets a clear message from the sealed path).
        return open_share_token(ring, token, now=now, expected_server_id=expected_server_id)
    return decode_legacy_token(legacy_key, token, now=now)


# --- matching ------------------------------------------------------------------------------


def _ids_agree(granted: ResourceRef, requested: ResourceRef) -> bool:
    """True when at least one id kind is present on both sides and every such kind is equal."""
    compared = False
    for mine, theirs in (
        (granted.orthanc_id, requested.orthanc_id),
        (granted.dicom_uid, requested.dicom_uid),
    ):
        if mine and theirs:
            if mine != theirs:
                return False
            compared = True
    return compared


def resources_match(
    claims: ShareTokenClaims,
    requested: ResourceRef,
    *,
    ancestors: Iterable[ResourceRef] = (),
) -> bool:
    """Decide whether a token's resources cover the requested resource (deny by default).

    * The request must be a DICOM resource (not ``system``) with an orthanc-id or a dicom-uid.
    * A token resource covers it directly when the levels are equal and the ids agree: every id
      kind present on both sides is equal, and at least one kind was compared. Comparing per
      resource is stricter than the reference service, which compared uids and orthanc ids
      across *different* token resources and ignored levels; for the plugin's standard
      ``CheckedLevel: "studies"`` calls both give the same answers.
    * A token resource at a higher level (e.g. a study) covers the resources below it only
      through ``ancestors``: the requested resource's parents, which the caller must have from
      a trusted source (Orthanc, or the plugin's own per-level calls), never from the client.
      A lower-level token never covers its parent (a series link does not open the study).
    """
    if requested.level not in _DEPTH or not (requested.orthanc_id or requested.dicom_uid):
        return False
    depth = _DEPTH[requested.level]
    targets = [requested]
    for parent in ancestors:
        if parent.level in _DEPTH and _DEPTH[parent.level] < depth:
            targets.append(parent)
    return any(
        granted.level is target.level and _ids_agree(granted, target)
        for granted in claims.resources
        for target in targets
    )


# --- expiry of a creation request -----------------------------------------------------------

#: Longer than any sensible link; the plugin sends uninitialised garbage (seen: 139798367548365)
#: as ``validity-duration`` when a caller omits ``ValidityDuration``, which must not pass.
MAX_VALIDITY_SECONDS: Final = 100 * 366 * 24 * 3600


def share_expires_at(
    now: datetime,
    *,
    expiration_date: str | None,
    validity_duration: int | None,
    max_lifetime: timedelta | None = None,
) -> datetime | None:
    """Compute a new token's expiry from a C4 request; None means it never expires.

    ``expiration-date`` wins; otherwise ``validity-duration`` seconds from ``now`` (0 or absent:
    no expiry, OE2 "share duration 0"). ``max_lifetime`` caps the result, no-expiry included.

    :raise ValidationFailed: unparsable or past date, negative or absurd duration (422).
    """
    expires_at: datetime | None = None
    if expiration_date is not None:
        if not isinstance(expiration_date, str):
            raise _invalid("expiration-date", "The expiration date must be an ISO-8601 string.")
        try:
            expires_at = _parse_iso_datetime(expiration_date)
        except ValueError:
            raise _invalid(
                "expiration-date", "The expiration date is not an ISO-8601 date-time."
            ) from None
        if expires_at <= _aware(now):
            raise _invalid("expiration-date", "The expiration date is not in the future.")
    elif validity_duration is not None:
        if isinstance(validity_duration, bool) or not isinstance(validity_duration, int):
            raise _invalid("validity-duration", "The validity duration must be an integer.")
        if validity_duration < 0 or validity_duration > MAX_VALIDITY_SECONDS:
            raise _invalid("validity-duration", "The validity duration is out of range.")
        if validity_duration > 0:
            expires_at = _aware(now) + timedelta(seconds=validity_duration)
    if max_lifetime is not None:
        cap = _aware(now) + max_lifetime
        if expires_at is None or expires_at > cap:
            expires_at = cap
    return expires_at


# --- links --------------------------------------------------------------------------------


class OhifDataSource(StrEnum):
    """How the shared OHIF viewer loads studies (reference ``OHIF_DATA_SOURCE``)."""

    DICOM_JSON = "dicom-json"
    DICOM_WEB = "dicom-web"


def _root(url: str | None) -> str | None:
    if not url:
        return None
    return url if url.endswith("/") else url + "/"


def _page(url: str | None) -> str | None:
    # A page gets "?token=…" appended; like the reference, any query it had is replaced.
    if not url:
        return None
    return url.split("#", 1)[0].split("?", 1)[0]


@dataclass(frozen=True, slots=True)
class PublicRoots:
    """Public URLs that links point at; unset ones disable the types that need them.

    ``orthanc``: PUBLIC_ORTHANC_ROOT (Stone, Osimis, VolView; inbox page fallback);
    ``landing_page``: PUBLIC_LANDING_ROOT, OE2's ``token-landing.html`` (share links go there
    when set); ``ohif``: PUBLIC_OHIF_ROOT; ``meddream``: PUBLIC_MEDDREAM_ROOT; ``inbox_page``:
    OE2's ``inbox.html`` (default: ``<orthanc>ui/app/inbox.html``). Roots get a trailing ``/``.
    """

    orthanc: str | None = None
    landing_page: str | None = None
    ohif: str | None = None
    ohif_data_source: OhifDataSource = OhifDataSource.DICOM_WEB
    meddream: str | None = None
    inbox_page: str | None = None

    def __post_init__(self) -> None:
        # Normalised once here so that building a link is plain concatenation.
        object.__setattr__(self, "orthanc", _root(self.orthanc))
        object.__setattr__(self, "ohif", _root(self.ohif))
        object.__setattr__(self, "meddream", _root(self.meddream))
        object.__setattr__(self, "landing_page", _page(self.landing_page))
        object.__setattr__(self, "inbox_page", _page(self.inbox_page))
        object.__setattr__(self, "ohif_data_source", OhifDataSource(self.ohif_data_source))


class _NoLink(Exception):
    """A link cannot be built; the message says why (no secrets)."""


def _q(value: str) -> str:
    # Ids, uids and tokens are URL-safe in practice; quoting keeps a stray '&' from injecting
    # query parameters and changes nothing for normal values.
    return quote(value, safe="")


def _ids(token_type: TokenType, resources: Sequence[ResourceRef], kind: str) -> list[str]:
    values: list[str] = []
    for resource in resources:
        value = resource.dicom_uid if kind == "dicom-uid" else resource.orthanc_id
        if not value:
            raise _NoLink(f"A {token_type.value} needs the {kind} of every resource.")
        values.append(_q(value))
    if not values:
        raise _NoLink(f"A {token_type.value} needs at least one resource.")
    return values


def _require(root: str | None, token_type: TokenType, setting: str) -> str:
    if root is None:
        raise _NoLink(f"{token_type.value} links are disabled: {setting} is not configured.")
    return root


def _direct_viewer_url(
    token_type: TokenType, token: str, resources: Sequence[ResourceRef], roots: PublicRoots
) -> str:
    t = _q(token)
    if token_type in PUBLICATION_TYPES and any(
        r.level is not ResourceLevel.STUDY for r in resources
    ):
        # Every viewer URL below takes studies; OE2 always shares at study level.
        raise _NoLink(f"A {token_type.value} shares studies only.")
    if token_type is TokenType.STONE_VIEWER_PUBLICATION:
        root = _require(roots.orthanc, token_type, "the public Orthanc root")
        uids = ",".join(_ids(token_type, resources, "dicom-uid"))
        return f"{root}stone-webviewer/index.html?study={uids}&selectedStudies={uids}&token={t}"
    if token_type is TokenType.OSIMIS_VIEWER_PUBLICATION:
        root = _require(roots.orthanc, token_type, "the public Orthanc root")
        ids = ",".join(_ids(token_type, resources, "orthanc-id"))
        return (
            f"{root}osimis-viewer/app/index.html?pickableStudyIds={ids}"
            f"&selectedStudyIds={ids}&token={t}"
        )
    if token_type is TokenType.OHIF_VIEWER_PUBLICATION:
        root = _require(roots.ohif, token_type, "the public OHIF root")
        if roots.ohif_data_source is OhifDataSource.DICOM_JSON:
            ids = ",".join(_ids(token_type, resources, "orthanc-id"))
            return f"{root}viewer?url=../studies/{ids}/ohif-dicom-json&token={t}"
        uids = ",".join(_ids(token_type, resources, "dicom-uid"))
        return f"{root}viewer?StudyInstanceUIDs={uids}&token={t}"
    if token_type is TokenType.VOLVIEW_VIEWER_PUBLICATION:
        root = _require(roots.orthanc, token_type, "the public Orthanc root")
        urls = ",".join(
            f"../studies/{one}/archive" for one in _ids(token_type, resources, "orthanc-id")
        )
        return f"{root}volview/index.html?names=[archive.zip]&urls={urls}&token={t}"
    raise _NoLink(f"{token_type.value} has no direct viewer link.")


def _creation_url(
    token_type: TokenType, token: str, resources: Sequence[ResourceRef], roots: PublicRoots
) -> str | None:
    if token_type in INSTANT_LINK_TYPES:
        return None  # the caller (OE2) builds the URL around the token itself
    if token_type is TokenType.MEDDREAM_INSTANT_LINK:
        root = _require(roots.meddream, token_type, "the public MedDream root")
        uids = ",".join(_ids(token_type, resources, "dicom-uid"))
        return f"{root}?study={uids}&token={_q(token)}"
    if token_type is TokenType.MEDDREAM_VIEWER_PUBLICATION:
        page = _require(roots.landing_page, token_type, "the landing page")
        _ids(token_type, resources, "dicom-uid")  # needed later for the MedDream token
        if any(r.level is not ResourceLevel.STUDY for r in resources):
            raise _NoLink(f"A {token_type.value} shares studies only.")
        return f"{page}?token={_q(token)}"
    if token_type is TokenType.INBOX_LINK:
        inbox = roots.inbox_page or (roots.orthanc and roots.orthanc + "ui/app/inbox.html")
        page = _require(inbox, token_type, "the inbox page (or the public Orthanc root)")
        return f"{page}?token={_q(token)}"
    direct = _direct_viewer_url(token_type, token, resources, roots)
    if roots.landing_page is not None:
        return f"{roots.landing_page}?token={_q(token)}"
    return direct


def creation_url(
    token_type: TokenType, token: str, resources: Sequence[ResourceRef], roots: PublicRoots
) -> str | None:
    """Return the ``url`` of the C4 answer: landing page or viewer link, None for instant links.

    For ``meddream-instant-link`` ``token`` is the MedDream service's token.

    :raise ValidationFailed: the type is disabled by configuration, or its viewer cannot be
        opened on these resources (non-study levels, missing uids/ids) (422).
    """
    try:
        return _creation_url(_as_type(token_type), token, resources, roots)
    except _NoLink as exc:
        raise _invalid("type", str(exc)) from None


def check_creatable(
    token_type: TokenType, resources: Sequence[ResourceRef], roots: PublicRoots
) -> None:
    """Raise ValidationFailed if :func:`creation_url` would; call before minting a token."""
    creation_url(token_type, "placeholder", resources, roots)


def redirect_url(
    token_type: TokenType, token: str, resources: Sequence[ResourceRef], roots: PublicRoots
) -> str | None:
    """Return the direct viewer URL for the C5 answer (landing page skipped), or None.

    None for types without a direct viewer (instant links, inbox links, and MedDream
    publications, whose redirect needs a fresh MedDream token: see :func:`creation_url` with
    ``meddream-instant-link``) and when the configuration no longer allows the link.
    """
    try:
        return _direct_viewer_url(_as_type(token_type), token, resources, roots)
    except (_NoLink, ValidationFailed):
        return None
