"""authsvc.orthanc.plugin_protocol: the Orthanc authorization plugin's wire format, in one module.

Parses the bodies the plugin sends to the callbacks and builds every reply it gets back
(protocol spec §2-§3, ``/work/shared/spec/orthanc-plugin-protocol.md``). Pure: no Flask, no
database. The rules that matter on the wire, all enforced here:

* ``validity`` is always a JSON integer (never ``60.0``, never ``"60"``) and never 0 for
  profiles (0 means "cache forever" there);
* ``authorized-labels`` containing ``"*"`` is exactly ``["*"]``;
* the user token is read from the body only, with any ``Bearer `` prefix removed;
* ``server-id`` is ``null`` or a string; a missing key counts as ``null``;
* ill-typed fields are treated as absent, so garbage gets "no" rather than a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef
from authsvc.errors import BadRequest
from authsvc.errors import ValidationFailed
from authsvc.identity.roles import Profile

__all__ = [
    "CreateRequest",
    "DecodeErrorCode",
    "ProfileRequest",
    "ValidateRequest",
    "anonymous_profile_reply",
    "create_reply",
    "decode_reply",
    "parse_create",
    "parse_profile",
    "parse_token_request",
    "parse_validate",
    "profile_reply",
    "resource_json",
    "strip_bearer",
    "validate_reply",
]

_BEARER = "bearer "


def strip_bearer(value: str) -> str:
    """Return the token without a leading ``Bearer `` (any case) and surrounding spaces."""
    text = value.strip()
    if text.lower() == _BEARER.strip():
        return ""  # "Bearer " with nothing after it: no token
    if text[: len(_BEARER)].lower() == _BEARER:
        text = text[len(_BEARER) :].strip()
    return text


def _str_or_none(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _server_id(body: Mapping[str, Any]) -> str | None:
    # A non-string server-id (garbage) becomes "" so it can match no configured server.
    value = body.get("server-id")
    if value is None:
        return None
    return value if isinstance(value, str) else "\x00invalid"


# --- C2/C3: user profile -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRequest:
    """A ``/user/get-profile`` call: a token, nothing (anonymous), or a user id (C3)."""

    token: str
    token_key: str
    user_id: str | None
    server_id: str | None

    @property
    def is_user_id_lookup(self) -> bool:
        """Return True for the audit-log form (a ``user-id`` and no token)."""
        return not self.token and self.user_id is not None


def parse_profile(body: Any) -> ProfileRequest:
    """Parse a C2/C3 body.

    :raise BadRequest: the body is not a JSON object.
    """
    obj = _object(body)
    return ProfileRequest(
        token=strip_bearer(_str_or_none(obj, "token-value") or ""),
        token_key=_str_or_none(obj, "token-key") or "",
        user_id=_str_or_none(obj, "user-id") or None,
        server_id=_server_id(obj),
    )


def _validity(value: int) -> int:
    # Guard the contract in one place: an int, >= 1 (0 would cache profiles forever).
    return max(1, int(value))


def profile_reply(
    *,
    name: str,
    user_id: str | None,
    profile: Profile,
    groups: Sequence[str] | None,
    validity: int,
) -> dict[str, Any]:
    """Return a C2/C3 profile answer."""
    return {
        "name": name,
        "user-id": user_id,
        "permissions": profile.permissions_list(),
        "authorized-labels": profile.labels_list(),
        "groups": list(groups) if groups is not None else [],
        "validity": _validity(validity),
    }


def anonymous_profile_reply(profile: Profile, validity: int) -> dict[str, Any]:
    """Return the anonymous profile answer (what the configured anonymous roles grant)."""
    return profile_reply(
        name="Anonymous", user_id=None, profile=profile, groups=[], validity=validity
    )


# --- C1: token validation ------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidateRequest:
    """A ``/tokens/validate`` call."""

    method: str | None
    level: str | None
    orthanc_id: str | None
    dicom_uid: str | None
    token: str
    server_id: str | None
    labels: tuple[str, ...]

    def requested_resource(self) -> ResourceRef | None:
        """Return the resource asked about, or None (system level, unknown level, no ids)."""
        try:
            level = ResourceLevel((self.level or "").lower())
        except ValueError:
            return None
        if level is ResourceLevel.SYSTEM or not (self.orthanc_id or self.dicom_uid):
            return None
        return ResourceRef(level=level, orthanc_id=self.orthanc_id, dicom_uid=self.dicom_uid)


def parse_validate(body: Any) -> ValidateRequest:
    """Parse a C1 body (the token only from ``token-value``, never from headers).

    :raise BadRequest: the body is not a JSON object.
    """
    obj = _object(body)
    raw_labels = obj.get("labels")
    labels = (
        tuple(x for x in raw_labels if isinstance(x, str)) if isinstance(raw_labels, list) else ()
    )
    method = _str_or_none(obj, "method")
    return ValidateRequest(
        method=method.lower() if method is not None else None,
        level=_str_or_none(obj, "level"),
        orthanc_id=_str_or_none(obj, "orthanc-id") or None,
        dicom_uid=_str_or_none(obj, "dicom-uid") or None,
        token=strip_bearer(_str_or_none(obj, "token-value") or ""),
        server_id=_server_id(obj),
        labels=labels,
    )


def validate_reply(granted: bool, validity: int) -> dict[str, Any]:
    """Return a C1 answer: a real JSON boolean and an integer validity."""
    return {"granted": bool(granted), "validity": _validity(validity)}


# --- C5: decoding --------------------------------------------------------------------------------


class DecodeErrorCode:
    """The ``error-code`` values OE2 understands."""

    EXPIRED = "expired"
    INVALID = "invalid"
    UNKNOWN = "unknown"


def parse_token_request(body: Any) -> str:
    """Return the token of a C5 body (``token-value`` without ``Bearer ``; "" if absent).

    :raise BadRequest: the body is not a JSON object.
    """
    return strip_bearer(_str_or_none(_object(body), "token-value") or "")


def resource_json(resource: ResourceRef) -> dict[str, Any]:
    """Return one resource in the plugin's hyphenated shape (nulls included)."""
    return {
        "dicom-uid": resource.dicom_uid,
        "orthanc-id": resource.orthanc_id,
        "url": resource.url,
        "level": resource.level.value,
    }


def decode_reply(
    *,
    token_type: str | None,
    error_code: str | None,
    redirect_url: str | None = None,
    resources: Sequence[ResourceRef] = (),
) -> dict[str, Any]:
    """Return a C5 answer. ``resources`` only ever for a valid token (the caller ensures it)."""
    if error_code is not None:
        # The plugin trusts decoded resources as an authorisation statement (spec §3.5).
        resources, redirect_url = (), None
    return {
        "token-type": token_type,
        "error-code": error_code,
        "redirect-url": redirect_url,
        "resources": [resource_json(r) for r in resources],
    }


# --- C4: creation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    """A ``PUT /tokens/<type>`` call, checked."""

    token_type: str
    resources: tuple[ResourceRef, ...]
    request_id: str | None
    expiration_date: str | None
    validity_duration: int | None
    server_id: str | None


def _problem(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message}])


def _resource(item: Any, index: int) -> ResourceRef:
    path = f"resources[{index}]"
    if not isinstance(item, Mapping):
        raise _problem(path, "each resource must be an object")
    level_text = item.get("level")
    if not isinstance(level_text, str):
        raise _problem(f"{path}.level", "level is required")
    try:
        # OE2 sends "study"; scripts send "Study" (the plugin copies Level verbatim).
        level = ResourceLevel(level_text.lower())
    except ValueError:
        raise _problem(
            f"{path}.level", "level must be one of patient, study, series, instance"
        ) from None
    values: dict[str, str | None] = {}
    for key in ("orthanc-id", "dicom-uid", "url"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise _problem(f"{path}.{key}", f"{key} must be a string")
        values[key] = value or None
    return ResourceRef(
        level=level,
        orthanc_id=values["orthanc-id"],
        dicom_uid=values["dicom-uid"],
        url=values["url"],
    )


def parse_create(url_type: str, body: Any) -> CreateRequest:
    """Parse a C4 body; the token type comes from the URL.

    :raise BadRequest: not a JSON object, or a body ``type`` that differs from the URL's (400).
    :raise ValidationFailed: ill-typed fields (422).
    """
    obj = _object(body)
    body_type = obj.get("type")
    if body_type is not None and body_type != url_type:
        raise BadRequest("The body's type does not match the token type in the URL.")
    raw_resources = obj.get("resources", [])
    if not isinstance(raw_resources, list):
        raise _problem("resources", "resources must be a list")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _problem("id", "id must be a string")
    expiration = obj.get("expiration-date")
    if expiration is not None and not isinstance(expiration, str):
        raise _problem("expiration-date", "expiration-date must be an ISO-8601 string")
    duration = obj.get("validity-duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int)):
        raise _problem("validity-duration", "validity-duration must be an integer")
    server_id = obj.get("server-id")
    if server_id is not None and not isinstance(server_id, str):
        raise _problem("server-id", "server-id must be a string or null")
    return CreateRequest(
        token_type=url_type,
        resources=tuple(_resource(item, i) for i, item in enumerate(raw_resources)),
        request_id=request_id or None,
        expiration_date=expiration or None,
        validity_duration=duration,
        server_id=server_id,
    )


#: Orthanc's field names of ``PUT /auth/tokens/<type>`` -> the service-style ones (spec §3.4).
_ORTHANC_RESOURCE_FIELDS = {
    "DicomUid": "dicom-uid",
    "OrthancId": "orthanc-id",
    "Url": "url",
    "Level": "level",
}


def parse_orthanc_create(url_type: str, body: Any, server_id: str | None) -> CreateRequest:
    """Parse the Orthanc-flavoured body OE2 sends to ``PUT /auth/tokens/<type>``.

    The same conversion the plugin applies before calling ``PUT /tokens/<type>`` (spec §3.4):
    ``ID``, ``Resources[{DicomUid, OrthancId, Url, Level}]``, ``ExpirationDate`` and
    ``ValidityDuration`` (0 or absent: no duration); ``Type`` is ignored (the URL decides).

    :raise BadRequest: not a JSON object (400).
    :raise ValidationFailed: ill-typed fields (422).
    """
    obj = _object(body)
    resources = obj.get("Resources", [])
    if not isinstance(resources, list):
        raise _problem("Resources", "Resources must be a list")
    converted: list[Any] = []
    for item in resources:
        if not isinstance(item, Mapping):
            converted.append(item)  # parse_create names the bad index
            continue
        converted.append(
            {new: item[old] for old, new in _ORTHANC_RESOURCE_FIELDS.items() if item.get(old)}
        )
    service_body: dict[str, Any] = {"resources": converted, "server-id": server_id}
    if obj.get("ID"):
        service_body["id"] = obj["ID"]
    if obj.get("ExpirationDate"):
        service_body["expiration-date"] = obj["ExpirationDate"]
    duration = obj.get("ValidityDuration")
    if duration not in (None, 0):
        service_body["validity-duration"] = duration
    return parse_create(url_type, service_body)


def create_reply(token: str, url: str | None) -> dict[str, Any]:
    """Return a C4 answer."""
    return {"token": token, "url": url}
