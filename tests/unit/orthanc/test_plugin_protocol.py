"""Unit tests for authsvc.orthanc.plugin_protocol: parsing the plugin's bodies, building replies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef
from authsvc.errors import BadRequest
from authsvc.errors import ValidationFailed
from authsvc.identity.roles import Profile
from authsvc.orthanc.plugin_protocol import anonymous_profile_reply
from authsvc.orthanc.plugin_protocol import create_reply
from authsvc.orthanc.plugin_protocol import decode_reply
from authsvc.orthanc.plugin_protocol import parse_create
from authsvc.orthanc.plugin_protocol import parse_profile
from authsvc.orthanc.plugin_protocol import parse_token_request
from authsvc.orthanc.plugin_protocol import parse_validate
from authsvc.orthanc.plugin_protocol import profile_reply
from authsvc.orthanc.plugin_protocol import strip_bearer
from authsvc.orthanc.plugin_protocol import validate_reply

pytestmark = pytest.mark.unit

STAR = Profile(frozenset({"view", "all"}), frozenset({"*"}), frozenset({"admin"}))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc ", "abc"),
        ("abc", "abc"),
        (" abc ", "abc"),
        ("Bearer ", ""),
        ("Bearerabc", "Bearerabc"),
        ("Basic abc", "Basic abc"),
    ],
)
def test_strip_bearer(value: str, expected: str) -> None:
    assert strip_bearer(value) == expected


@pytest.mark.parametrize("body", [[], "x", 1, None, True])
@pytest.mark.parametrize("parse", [parse_profile, parse_validate, parse_token_request])
def test_non_objects_are_bad_requests(parse: Any, body: Any) -> None:
    with pytest.raises(BadRequest):
        parse(body)


def test_profile_forms() -> None:
    token = parse_profile(
        {"token-key": "Authorization", "token-value": "Bearer t", "server-id": None}
    )
    assert (token.token, token.token_key, token.is_user_id_lookup) == ("t", "Authorization", False)
    anonymous = parse_profile({"token-key": "", "token-value": ""})
    assert anonymous.token == "" and not anonymous.is_user_id_lookup
    lookup = parse_profile({"user-id": "u1", "server-id": "s"})
    assert lookup.is_user_id_lookup and lookup.user_id == "u1" and lookup.server_id == "s"
    # A token wins over a user id; garbage types are absent.
    assert not parse_profile({"user-id": "u1", "token-value": "t"}).is_user_id_lookup
    assert parse_profile({"token-value": 5, "user-id": ["x"]}).user_id is None


def test_garbage_server_id_matches_no_server() -> None:
    parsed = parse_validate({"server-id": 7})
    assert parsed.server_id not in (None, "", "7")


def test_validate_request_resource() -> None:
    parsed = parse_validate(
        {"method": "GET", "level": "Study", "orthanc-id": "o", "labels": ["a", 3, "b"]}
    )
    assert parsed.method == "get"
    assert parsed.labels == ("a", "b")
    assert parsed.requested_resource() == ResourceRef(ResourceLevel.STUDY, "o", None)
    assert parse_validate({"level": "system", "uri": "/changes"}).requested_resource() is None
    assert parse_validate({"level": "study"}).requested_resource() is None
    assert parse_validate({"level": "galaxy", "orthanc-id": "o"}).requested_resource() is None


def test_replies_are_exact_json() -> None:
    assert json.dumps(validate_reply(True, 60)) == '{"granted": true, "validity": 60}'
    # validity is an int >= 1 whatever the caller passes: 0 would cache a profile forever.
    assert validate_reply(False, 0)["validity"] == 1
    profile = profile_reply(name="n", user_id="u", profile=STAR, groups=None, validity=60)
    assert profile == {
        "name": "n",
        "user-id": "u",
        "permissions": ["all", "view"],
        "authorized-labels": ["*"],
        "groups": [],
        "validity": 60,
    }
    assert anonymous_profile_reply(STAR, 30)["user-id"] is None
    assert create_reply("t", None) == {"token": "t", "url": None}


def test_decode_reply_never_carries_resources_with_an_error() -> None:
    resource = ResourceRef(ResourceLevel.STUDY, "o", "1.2")
    reply = decode_reply(
        token_type="x", error_code="expired", redirect_url="http://x", resources=[resource]
    )
    assert reply == {
        "token-type": "x",
        "error-code": "expired",
        "redirect-url": None,
        "resources": [],
    }
    ok = decode_reply(token_type="x", error_code=None, resources=[resource])
    assert ok["resources"] == [
        {"dicom-uid": "1.2", "orthanc-id": "o", "url": None, "level": "study"}
    ]


def test_parse_create() -> None:
    parsed = parse_create(
        "stone-viewer-publication",
        {
            "id": "toto",
            "resources": [{"DicomUid": "ignored", "dicom-uid": "1.2", "level": "Study"}],
            "expiration-date": "2030-01-01T00:00:00Z",
            "server-id": None,
        },
    )
    assert parsed.request_id == "toto"
    assert parsed.resources == (ResourceRef(ResourceLevel.STUDY, None, "1.2"),)
    assert parsed.validity_duration is None


@pytest.mark.parametrize(
    "body",
    [
        {"resources": {}},
        {"resources": [5]},
        {"resources": [{"dicom-uid": "1"}]},
        {"resources": [{"dicom-uid": 1, "level": "study"}]},
        {"resources": [], "validity-duration": True},
        {"resources": [], "validity-duration": 1.5},
        {"resources": [], "expiration-date": 5},
        {"resources": [], "id": []},
        {"resources": [], "server-id": 1},
    ],
)
def test_parse_create_rejects_ill_typed_fields(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        parse_create("stone-viewer-publication", body)


def test_parse_create_type_must_match_url() -> None:
    with pytest.raises(BadRequest):
        parse_create("ohif-viewer-publication", {"type": "stone-viewer-publication"})
