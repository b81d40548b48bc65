"""Unit tests for authsvc.credentials.share_links: sealed and legacy tokens, matching, expiry."""

from __future__ import annotations

import base64
import json
import warnings
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey

from authsvc.credentials import sealing
from authsvc.credentials import share_links
from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.credentials.share_links import LegacyShareKey
from authsvc.credentials.share_links import OhifDataSource
from authsvc.credentials.share_links import PublicRoots
from authsvc.credentials.share_links import ResourceLevel
from authsvc.credentials.share_links import ResourceRef
from authsvc.credentials.share_links import ShareTokenClaims
from authsvc.credentials.share_links import TokenType
from authsvc.errors import ConfigError
from authsvc.errors import ShareTokenExpired
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import ValidationFailed

pytestmark = pytest.mark.unit

RING = KeyRing([("s1", b"insecure-share-test-key-00000000")])
NOW = datetime(2025, 6, 1, 10, 0, 0, 300_000, tzinfo=UTC)
START = datetime(2025, 6, 1, 10, 0, 0, tzinfo=UTC)

# Study "A" and "B" of the protocol spec's contract vectors (§12).
A_ID = "b9c08539-26f93bde-c81ab0d7-bffaf2cb-a4d0bdd0"
A_UID = "1.2.840.113619.2.176.2025.1499492.7391.1171285944.390"
B_ID = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
B_UID = "2.16.840.1.113669.632.20.1211.10000357775"
STUDY_A = ResourceRef(ResourceLevel.STUDY, A_ID, A_UID)
STUDY_B = ResourceRef(ResourceLevel.STUDY, B_ID, B_UID)

# HS256 tokens in orthanc-auth-service's format, signed with "my-secret-key" (spec §12).
SPEC_SECRET = "my-secret-key"
VALID_SHARE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6bnVsbCwicmVzb3VyY2VzIjpbeyJkaWNvbV91aWQiOiIx"
    "LjIuODQwLjExMzYxOS4yLjE3Ni4yMDI1LjE0OTk0OTIuNzM5MS4xMTcxMjg1OTQ0LjM5MCIsIm9ydGhhbmNfaWQi"
    "OiJiOWMwODUzOS0yNmY5M2JkZS1jODFhYjBkNy1iZmZhZjJjYi1hNGQwYmRkMCIsInVybCI6bnVsbCwibGV2ZWwi"
    "OiJzdHVkeSJ9XSwidHlwZSI6InN0b25lLXZpZXdlci1wdWJsaWNhdGlvbiIsImV4cGlyYXRpb25fZGF0ZSI6IjIw"
    "OTktMTItMzFUMjM6NTk6NTkrMDA6MDAiLCJ2YWxpZGl0eV9kdXJhdGlvbiI6bnVsbH0.P8CAe-5_3yRgknTfOsJr"
    "vs-XdCMjW1z9QBLQCVaYaoQ"
)
EXPIRED_SHARE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6bnVsbCwicmVzb3VyY2VzIjpbeyJkaWNvbV91aWQiOiIx"
    "LjIuODQwLjExMzYxOS4yLjE3Ni4yMDI1LjE0OTk0OTIuNzM5MS4xMTcxMjg1OTQ0LjM5MCIsIm9ydGhhbmNfaWQi"
    "OiJiOWMwODUzOS0yNmY5M2JkZS1jODFhYjBkNy1iZmZhZjJjYi1hNGQwYmRkMCIsInVybCI6bnVsbCwibGV2ZWwi"
    "OiJzdHVkeSJ9XSwidHlwZSI6InN0b25lLXZpZXdlci1wdWJsaWNhdGlvbiIsImV4cGlyYXRpb25fZGF0ZSI6IjIw"
    "MjAtMDEtMDFUMDA6MDA6MDArMDA6MDAiLCJ2YWxpZGl0eV9kdXJhdGlvbiI6bnVsbH0.BTb9GAlPP3VUw_UhbC4NE"
    "kCmSqS9GRwfC6IcqeTyshI"
)

LEGACY_SECRET = "insecure-legacy-secret-for-tests-0123456789"
LEGACY_KEY = LegacyShareKey(LEGACY_SECRET)


def b64json(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def legacy_payload(**overrides: Any) -> dict[str, Any]:
    """The reference service's payload: the creation request with underscore names."""
    payload: dict[str, Any] = {
        "id": None,
        "resources": [{"dicom_uid": A_UID, "orthanc_id": A_ID, "url": None, "level": "study"}],
        "type": "stone-viewer-publication",
        "expiration_date": "2099-12-31T23:59:59+00:00",
        "validity_duration": None,
    }
    payload.update(overrides)
    return payload


def legacy_token(
    payload: dict[str, Any], *, secret: str = LEGACY_SECRET, alg: str = "HS256"
) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        key = OctKey.import_key(secret)
    return jwt.encode({"alg": alg, "typ": "JWT"}, payload, key, algorithms=[alg])


def issue(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "token_id": "share-1",
        "token_type": TokenType.STONE_VIEWER_PUBLICATION,
        "resources": [STUDY_A],
        "server_id": None,
        "now": NOW,
        "expires_at": NOW + timedelta(days=7),
    }
    fields.update(overrides)
    return share_links.issue_share_token(RING, **fields)


def claims_for(*resources: ResourceRef) -> ShareTokenClaims:
    return ShareTokenClaims(
        token_type=TokenType.VIEWER_INSTANT_LINK,
        resources=resources,
        token_id="t",
        server_id=None,
        issuer=None,
        not_before=None,
        expires_at=None,
        key_id=None,
    )


# --- vocabularies ---------------------------------------------------------------------------


def test_token_type_wire_strings() -> None:
    assert {t.value for t in TokenType} == {
        "viewer-instant-link",
        "download-instant-link",
        "meddream-instant-link",
        "stone-viewer-publication",
        "osimis-viewer-publication",
        "ohif-viewer-publication",
        "volview-viewer-publication",
        "meddream-viewer-publication",
        "inbox-link",
        "resource-instant-link",
    }
    assert share_links.PUBLICATION_TYPES.isdisjoint(share_links.INSTANT_LINK_TYPES)


def test_resource_levels() -> None:
    assert [level.value for level in ResourceLevel] == [
        "patient",
        "study",
        "series",
        "instance",
        "system",
    ]


# --- sealed share tokens ----------------------------------------------------------------------


def test_round_trip() -> None:
    series = ResourceRef(ResourceLevel.SERIES, "ser-id", "1.2.3.4", url="/series/ser-id/archive")
    token = issue(
        resources=[STUDY_A, series],
        server_id="orthanc-a",
        issuer="user-sub",
        request_id="toto",
        token_type=TokenType.DOWNLOAD_INSTANT_LINK,
    )
    assert token.startswith("sh1.s1.")
    claims = share_links.open_share_token(RING, token, now=NOW)
    assert claims == ShareTokenClaims(
        token_type=TokenType.DOWNLOAD_INSTANT_LINK,
        resources=(STUDY_A, series),
        token_id="share-1",
        server_id="orthanc-a",
        issuer="user-sub",
        not_before=START,
        expires_at=START + timedelta(days=7),
        key_id="s1",
        request_id="toto",
        legacy=False,
    )


def test_ids_are_not_readable_from_the_link() -> None:
    token = issue()
    assert A_UID not in token and A_ID not in token
    assert "1.2.840" not in base64.urlsafe_b64decode(token.split(".")[2] + "===").decode("latin-1")


def test_link_without_expiry_never_expires() -> None:
    token = issue(expires_at=None)
    claims = share_links.open_share_token(RING, token, now=datetime(9000, 1, 1, tzinfo=UTC))
    assert claims.expires_at is None


def test_inbox_link_takes_no_resources() -> None:
    token = issue(token_type=TokenType.INBOX_LINK, resources=[])
    claims = share_links.open_share_token(RING, token, now=NOW)
    assert claims.token_type is TokenType.INBOX_LINK
    assert claims.resources == ()
    with pytest.raises(ValidationFailed):
        issue(token_type=TokenType.INBOX_LINK, resources=[STUDY_A])


def test_token_type_may_be_given_as_its_wire_string() -> None:
    token = issue(token_type="ohif-viewer-publication")
    claims = share_links.open_share_token(RING, token, now=NOW)
    assert claims.token_type is TokenType.OHIF_VIEWER_PUBLICATION


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"resources": []}, "resources"),
        ({"resources": [ResourceRef(ResourceLevel.STUDY)]}, "resources"),
        ({"resources": [ResourceRef(ResourceLevel.STUDY, "", "")]}, "resources"),
        ({"resources": [ResourceRef(ResourceLevel.SYSTEM, "x", "y")]}, "resources"),
        ({"resources": [{"level": "study", "orthanc-id": A_ID}]}, "resources"),
        ({"expires_at": NOW}, "expiration-date"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "expiration-date"),
        ({"token_id": ""}, "token_id"),
        ({"token_type": "invented-link"}, "type"),
    ],
)
def test_issue_rejects(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        issue(**overrides)
    assert field in caught.value.details


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        (START - timedelta(microseconds=1), False),
        (START, True),
        (START + timedelta(hours=1) - timedelta(microseconds=1), True),
        (START + timedelta(hours=1), False),
    ],
)
def test_lifetime_boundaries_and_expired_type(now: datetime, valid: bool) -> None:
    token = issue(expires_at=START + timedelta(hours=1), token_type=TokenType.VIEWER_INSTANT_LINK)
    if valid:
        assert share_links.open_share_token(RING, token, now=now).token_id == "share-1"
        return
    with pytest.raises(ShareTokenExpired) as caught:
        share_links.open_share_token(RING, token, now=now)
    assert caught.value.token_type == "viewer-instant-link"
    assert isinstance(caught.value, TokenExpired)


def test_tampering_is_invalid_never_expired() -> None:
    token = issue(expires_at=START + timedelta(hours=1))
    late = START + timedelta(days=1)
    for position in range(len(token)):
        tampered = token[:position] + chr(ord(token[position]) ^ 0x04) + token[position + 1 :]
        with pytest.raises(TokenInvalid) as caught:
            share_links.open_share_token(RING, tampered, now=late)
        assert type(caught.value) is TokenInvalid


@pytest.mark.parametrize("purpose", [Purpose.UPLOAD, Purpose.ALBUM_READ])
def test_album_tokens_are_not_share_tokens(purpose: Purpose) -> None:
    other = sealing.seal(
        RING,
        purpose,
        {"jti": "t", "typ": "viewer-instant-link", "res": [], "srv": None, "iss": None},
        now=NOW,
    )
    with pytest.raises(TokenInvalid, match="not a share token"):
        share_links.open_share_token(RING, other, now=NOW)


def test_share_token_is_not_an_upload_token() -> None:
    with pytest.raises(TokenInvalid, match="not an upload token"):
        sealing.open_token(RING, Purpose.UPLOAD, issue(), now=NOW)


@pytest.mark.parametrize(
    "claims",
    [
        {"typ": "viewer-instant-link", "res": []},
        {"jti": "t", "typ": "viewer-instant-link"},
        {"jti": "t", "typ": "viewer-instant-link", "res": {}},
        {"jti": "t", "typ": "unknown-link", "res": []},
        {"jti": "t", "typ": None, "res": []},
        {"jti": "t", "typ": "viewer-instant-link", "res": [["study", A_ID, A_UID]]},
        {"jti": "t", "typ": "viewer-instant-link", "res": [["planet", A_ID, A_UID, None]]},
        {"jti": "t", "typ": "viewer-instant-link", "res": [["study", 1, A_UID, None]]},
        {"jti": "t", "typ": "viewer-instant-link", "res": [{"level": "study"}]},
        {"jti": "t", "typ": "viewer-instant-link", "res": [], "srv": 5},
        {"jti": "t", "typ": "viewer-instant-link", "res": [], "iss": ["x"]},
        {"jti": "t", "typ": "viewer-instant-link", "res": [], "rid": 1},
    ],
)
def test_authentic_but_malformed_claims_are_invalid(claims: dict[str, Any]) -> None:
    token = sealing.seal(RING, Purpose.SHARE, claims, now=NOW)
    with pytest.raises(TokenInvalid) as caught:
        share_links.open_share_token(RING, token, now=NOW)
    assert type(caught.value) is TokenInvalid


@given(st.text())
def test_garbage_is_invalid(text: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        share_links.read_share_token(text, ring=RING, legacy_key=LEGACY_KEY, now=NOW)
    assert type(caught.value) is TokenInvalid


@pytest.mark.parametrize(
    ("issued_for", "expected", "ok"),
    [
        (None, None, True),
        ("orthanc-a", "orthanc-a", True),
        ("orthanc-a", ANY_SERVER, True),
        ("orthanc-a", None, False),
        (None, "orthanc-a", False),
        ("orthanc-a", "orthanc-b", False),
    ],
)
def test_server_binding(issued_for: str | None, expected: Any, ok: bool) -> None:
    token = issue(server_id=issued_for)
    if ok:
        claims = share_links.open_share_token(RING, token, now=NOW, expected_server_id=expected)
        assert claims.server_id == issued_for
        return
    with pytest.raises(TokenInvalid, match="share token was issued for another Orthanc server"):
        share_links.open_share_token(RING, token, now=NOW, expected_server_id=expected)


# --- legacy (orthanc-auth-service) tokens ---------------------------------------------------


def test_spec_vector_valid_share_decodes() -> None:
    key = LegacyShareKey(SPEC_SECRET)
    claims = share_links.decode_legacy_token(key, VALID_SHARE, now=NOW)
    assert claims == ShareTokenClaims(
        token_type=TokenType.STONE_VIEWER_PUBLICATION,
        resources=(STUDY_A,),
        token_id=None,
        server_id=None,
        issuer=None,
        not_before=None,
        expires_at=datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC),
        key_id=None,
        request_id=None,
        legacy=True,
    )


def test_spec_vector_expired_share_reports_its_type() -> None:
    key = LegacyShareKey(SPEC_SECRET)
    with pytest.raises(ShareTokenExpired) as caught:
        share_links.decode_legacy_token(key, EXPIRED_SHARE, now=NOW)
    assert caught.value.token_type == "stone-viewer-publication"


def test_spec_secret_is_flagged_weak_but_accepted() -> None:
    assert LegacyShareKey(SPEC_SECRET).weak is True
    assert LEGACY_KEY.weak is False


def test_legacy_key_repr_and_empty_secret() -> None:
    assert SPEC_SECRET not in repr(LegacyShareKey(SPEC_SECRET))
    with pytest.raises(ConfigError):
        LegacyShareKey("")


def test_wrong_secret_is_invalid() -> None:
    with pytest.raises(TokenInvalid) as caught:
        share_links.decode_legacy_token(LEGACY_KEY, VALID_SHARE, now=NOW)
    assert type(caught.value) is TokenInvalid


def test_built_token_round_trips_with_request_id() -> None:
    token = legacy_token(legacy_payload(id="toto", type="ohif-viewer-publication"))
    claims = share_links.decode_legacy_token(LEGACY_KEY, token, now=NOW)
    assert claims.request_id == "toto"
    assert claims.token_type is TokenType.OHIF_VIEWER_PUBLICATION
    assert claims.token_id is None  # not revocable one by one


def test_alg_none_is_refused() -> None:
    header = b64json({"alg": "none", "typ": "JWT"})
    unsigned = f"{header}.{b64json(legacy_payload())}."
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(LEGACY_KEY, unsigned, now=NOW)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(alg: str) -> None:
    token = legacy_token(legacy_payload(), alg=alg)
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(LEGACY_KEY, token, now=NOW)


def test_header_claiming_rs256_is_refused() -> None:
    good = legacy_token(legacy_payload())
    _, payload, signature = good.split(".")
    forged = f"{b64json({'alg': 'RS256', 'typ': 'JWT'})}.{payload}.{signature}"
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(LEGACY_KEY, forged, now=NOW)


def test_changed_payload_is_refused() -> None:
    good = legacy_token(legacy_payload())
    header, _, signature = good.split(".")
    widened = legacy_payload(
        resources=[{"dicom_uid": B_UID, "orthanc_id": B_ID, "url": None, "level": "study"}]
    )
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(
            LEGACY_KEY, f"{header}.{b64json(widened)}.{signature}", now=NOW
        )


@pytest.mark.parametrize(
    ("expiration", "expected"),
    [
        ("2099-12-31T23:59:59+00:00", datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2026-12-31T11:00:00Z", datetime(2026, 12, 31, 11, 0, tzinfo=UTC)),
        ("2026-12-31T11:00:00.000Z", datetime(2026, 12, 31, 11, 0, tzinfo=UTC)),
        ("2026-12-31T13:00:00+02:00", datetime(2026, 12, 31, 11, 0, tzinfo=UTC)),
        ("2026-12-31T11:00:00", datetime(2026, 12, 31, 11, 0, tzinfo=UTC)),  # naive: UTC
        (None, None),
    ],
)
def test_legacy_expiration_formats(expiration: str | None, expected: datetime | None) -> None:
    token = legacy_token(legacy_payload(expiration_date=expiration))
    claims = share_links.decode_legacy_token(LEGACY_KEY, token, now=NOW)
    assert claims.expires_at == expected


def test_legacy_validity_duration_alone_does_not_expire() -> None:
    # The reference folded validity-duration into expiration_date at creation; alone it is inert.
    token = legacy_token(legacy_payload(expiration_date=None, validity_duration=10))
    far = datetime(2200, 1, 1, tzinfo=UTC)
    assert share_links.decode_legacy_token(LEGACY_KEY, token, now=far).expires_at is None


def test_legacy_expiry_boundary_is_exact() -> None:
    token = legacy_token(legacy_payload(expiration_date="2030-01-01T00:00:00+00:00"))
    edge = datetime(2030, 1, 1, tzinfo=UTC)
    before = edge - timedelta(microseconds=1)
    assert share_links.decode_legacy_token(LEGACY_KEY, token, now=before).legacy is True
    with pytest.raises(ShareTokenExpired):
        share_links.decode_legacy_token(LEGACY_KEY, token, now=edge)


@pytest.mark.parametrize(
    "overrides",
    [
        {"type": "invalid"},
        {"type": "unknown-link"},
        {"type": None},
        {"resources": None},
        {"resources": "study"},
        {"resources": ["study"]},
        {"resources": [{"dicom_uid": A_UID, "level": "galaxy"}]},
        {"resources": [{"dicom_uid": A_UID}]},
        {"resources": [{"dicom_uid": 12, "level": "study"}]},
        {"expiration_date": "next tuesday"},
        {"expiration_date": 1893456000},
        {"id": 5},
    ],
)
def test_malformed_legacy_payloads_are_invalid(overrides: dict[str, Any]) -> None:
    token = legacy_token(legacy_payload(**overrides))
    with pytest.raises(TokenInvalid) as caught:
        share_links.decode_legacy_token(LEGACY_KEY, token, now=NOW)
    assert type(caught.value) is TokenInvalid


def test_legacy_payload_missing_type_is_invalid() -> None:
    payload = legacy_payload()
    del payload["type"]
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(LEGACY_KEY, legacy_token(payload), now=NOW)


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "not-a-jwt", "a.b.c", "é.é.é", VALID_SHARE + "x", "x" * 40_000, None, 7],
)
def test_legacy_garbage_is_invalid(garbage: Any) -> None:
    with pytest.raises(TokenInvalid) as caught:
        share_links.decode_legacy_token(LegacyShareKey(SPEC_SECRET), garbage, now=NOW)
    assert type(caught.value) is TokenInvalid


@given(st.binary())
def test_legacy_arbitrary_bytes_are_invalid(data: bytes) -> None:
    with pytest.raises(TokenInvalid):
        share_links.decode_legacy_token(LEGACY_KEY, data.decode("latin-1"), now=NOW)


# --- reading either format ------------------------------------------------------------------


def test_read_share_token_dispatches_on_format() -> None:
    key = LegacyShareKey(SPEC_SECRET)
    sealed = share_links.read_share_token(issue(), ring=RING, legacy_key=key, now=NOW)
    assert sealed.legacy is False and sealed.token_id == "share-1"
    legacy = share_links.read_share_token(VALID_SHARE, ring=RING, legacy_key=key, now=NOW)
    assert legacy.legacy is True


def test_read_share_token_without_legacy_key_refuses_jwts() -> None:
    with pytest.raises(TokenInvalid):
        share_links.read_share_token(VALID_SHARE, ring=RING, legacy_key=None, now=NOW)


def test_read_share_token_refuses_upload_tokens_with_a_clear_message() -> None:
    upload = sealing.seal(RING, Purpose.UPLOAD, {"jti": "t"}, now=NOW)
    with pytest.raises(TokenInvalid, match="not a share token"):
        share_links.read_share_token(upload, ring=RING, legacy_key=LEGACY_KEY, now=NOW)


def test_read_share_token_server_check_applies_to_sealed_tokens_only() -> None:
    key = LegacyShareKey(SPEC_SECRET)
    with pytest.raises(TokenInvalid):
        share_links.read_share_token(
            issue(server_id="a"), ring=RING, legacy_key=key, now=NOW, expected_server_id="b"
        )
    legacy = share_links.read_share_token(
        VALID_SHARE, ring=RING, legacy_key=key, now=NOW, expected_server_id="b"
    )
    assert legacy.server_id is None


def test_read_share_token_reports_expired_legacy_links() -> None:
    key = LegacyShareKey(SPEC_SECRET)
    with pytest.raises(ShareTokenExpired):
        share_links.read_share_token(EXPIRED_SHARE, ring=RING, legacy_key=key, now=NOW)


# --- resources_match ----------------------------------------------------------------------


def study(orthanc_id: str | None = None, dicom_uid: str | None = None) -> ResourceRef:
    return ResourceRef(ResourceLevel.STUDY, orthanc_id, dicom_uid)


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (study(A_ID, A_UID), True),  # spec V1
        (study(A_ID), True),
        (study(None, A_UID), True),
        (study(B_ID, B_UID), False),  # spec V3
        (study(A_ID, B_UID), False),  # ids disagree with each other
        (study(B_ID, A_UID), False),
        (study(), False),  # spec V5-like: nothing to compare
        (study("", ""), False),
        (ResourceRef(ResourceLevel.SYSTEM, A_ID, A_UID), False),  # spec V6
        (ResourceRef(ResourceLevel.SERIES, A_ID, A_UID), False),  # same ids, other level
        (ResourceRef(ResourceLevel.PATIENT, A_ID, A_UID), False),
    ],
)
def test_direct_matching(requested: ResourceRef, granted: bool) -> None:
    assert share_links.resources_match(claims_for(STUDY_A), requested) is granted


def test_matching_needs_an_id_kind_present_on_both_sides() -> None:
    uid_only = claims_for(study(None, A_UID))
    assert share_links.resources_match(uid_only, study(A_ID, A_UID)) is True
    assert share_links.resources_match(uid_only, study(A_ID)) is False
    oid_only = claims_for(study(A_ID))
    assert share_links.resources_match(oid_only, study(None, A_UID)) is False


def test_matching_is_per_resource_not_across_resources() -> None:
    # The reference compared uids and orthanc ids across different resources; a request mixing
    # A's orthanc id with B's uid would pass there. Here each resource must agree on its own.
    both = claims_for(study(A_ID, A_UID), study(B_ID, B_UID))
    assert share_links.resources_match(both, study(B_ID, B_UID)) is True
    assert share_links.resources_match(both, study(A_ID, B_UID)) is False


SERIES_OF_A = ResourceRef(ResourceLevel.SERIES, "ser-a", "1.2.3.1")
INSTANCE_OF_A = ResourceRef(ResourceLevel.INSTANCE, "ins-a", "1.2.3.1.1")
PATIENT_OF_A = ResourceRef(ResourceLevel.PATIENT, "pat-a", "PID-1")


@pytest.mark.parametrize(
    ("token_resources", "requested", "ancestors", "granted"),
    [
        # A study token opens its series and instances when the caller vouches for the parents.
        ((STUDY_A,), SERIES_OF_A, (STUDY_A,), True),
        ((STUDY_A,), INSTANCE_OF_A, (PATIENT_OF_A, STUDY_A, SERIES_OF_A), True),
        ((STUDY_A,), SERIES_OF_A, (), False),
        ((STUDY_A,), SERIES_OF_A, (STUDY_B,), False),
        # A patient token opens the patient's studies through the ancestor.
        ((PATIENT_OF_A,), STUDY_A, (PATIENT_OF_A,), True),
        ((PATIENT_OF_A,), STUDY_A, (), False),
        # A lower-level token never opens a parent, whatever "ancestors" says.
        ((SERIES_OF_A,), STUDY_A, (), False),
        ((SERIES_OF_A,), STUDY_A, (SERIES_OF_A,), False),
        ((INSTANCE_OF_A,), SERIES_OF_A, (INSTANCE_OF_A,), False),
        # Ancestors at the requested level or below are ignored.
        ((STUDY_A,), STUDY_B, (STUDY_A,), False),
        # System-level ancestors are ignored.
        ((STUDY_A,), SERIES_OF_A, (ResourceRef(ResourceLevel.SYSTEM, A_ID, A_UID),), False),
        # Series token for exactly that series.
        ((SERIES_OF_A,), SERIES_OF_A, (STUDY_A,), True),
    ],
)
def test_hierarchical_matching(
    token_resources: tuple[ResourceRef, ...],
    requested: ResourceRef,
    ancestors: tuple[ResourceRef, ...],
    granted: bool,
) -> None:
    claims = claims_for(*token_resources)
    assert share_links.resources_match(claims, requested, ancestors=ancestors) is granted


def test_spec_vectors_with_the_legacy_token() -> None:
    claims = share_links.decode_legacy_token(LegacyShareKey(SPEC_SECRET), VALID_SHARE, now=NOW)
    assert share_links.resources_match(claims, study(A_ID, A_UID)) is True
    assert share_links.resources_match(claims, study(B_ID, B_UID)) is False


ids = st.text(alphabet="0123456789abcdef.-", min_size=1, max_size=12)
levels = st.sampled_from([lvl for lvl in ResourceLevel if lvl is not ResourceLevel.SYSTEM])


@given(
    st.lists(st.tuples(levels, ids, ids), min_size=1, max_size=4),
    levels,
    ids,
    ids,
)
def test_never_granted_when_no_id_is_shared(
    token_side: list[tuple[ResourceLevel, str, str]],
    level: ResourceLevel,
    orthanc_id: str,
    dicom_uid: str,
) -> None:
    claims = claims_for(*(ResourceRef(lvl, oid, uid) for lvl, oid, uid in token_side))
    known = {value for _, oid, uid in token_side for value in (oid, uid)}
    requested = ResourceRef(level, orthanc_id, dicom_uid)
    if orthanc_id in known or dicom_uid in known:
        return
    assert share_links.resources_match(claims, requested) is False


# --- expiry of creation requests -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expiration_date", "validity_duration", "expected"),
    [
        ("2027-12-31T23:59:59.000Z", None, datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2027-12-31T23:59:59Z", 3600, datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2027-12-31T23:59:59", None, datetime(2027, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (None, 3600, NOW + timedelta(seconds=3600)),
        (None, 604800, NOW + timedelta(days=7)),
        (None, 0, None),  # OE2 "share duration 0": never expires
        (None, None, None),
    ],
)
def test_share_expires_at(
    expiration_date: str | None, validity_duration: int | None, expected: datetime | None
) -> None:
    result = share_links.share_expires_at(
        NOW, expiration_date=expiration_date, validity_duration=validity_duration
    )
    assert result == expected


@pytest.mark.parametrize(
    ("expiration_date", "validity_duration", "field"),
    [
        ("yesterday", None, "expiration-date"),
        ("2020-01-01T00:00:00Z", None, "expiration-date"),
        (NOW.isoformat(), None, "expiration-date"),
        (20270101, None, "expiration-date"),
        (None, -1, "validity-duration"),
        (None, 139798367548365, "validity-duration"),  # the plugin's uninitialised garbage
        (None, share_links.MAX_VALIDITY_SECONDS + 1, "validity-duration"),
        (None, True, "validity-duration"),
        (None, "3600", "validity-duration"),
    ],
)
def test_share_expires_at_rejects(expiration_date: Any, validity_duration: Any, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        share_links.share_expires_at(
            NOW, expiration_date=expiration_date, validity_duration=validity_duration
        )
    assert field in caught.value.details


def test_share_expires_at_max_lifetime_caps() -> None:
    cap = timedelta(days=30)
    capped = share_links.share_expires_at(
        NOW, expiration_date=None, validity_duration=None, max_lifetime=cap
    )
    assert capped == NOW + cap
    long = share_links.share_expires_at(
        NOW, expiration_date=None, validity_duration=365 * 86400, max_lifetime=cap
    )
    assert long == NOW + cap
    short = share_links.share_expires_at(
        NOW, expiration_date=None, validity_duration=60, max_lifetime=cap
    )
    assert short == NOW + timedelta(seconds=60)


# --- links --------------------------------------------------------------------------------

ROOTS = PublicRoots(
    orthanc="http://localhost/orthanc/",
    ohif="http://localhost/ohif/",
    meddream="http://localhost/meddream/",
)
LANDING = "http://localhost/orthanc/ui/app/token-landing.html"
TOKEN = "sh1.s1.AbC-_x"


def test_spec_d1_stone_redirect_url_is_exact() -> None:
    url = share_links.redirect_url(
        TokenType.STONE_VIEWER_PUBLICATION,
        "VALID_SHARE",
        [STUDY_A],
        PublicRoots(orthanc="http://localhost/orthanc/"),
    )
    assert url == (
        "http://localhost/orthanc/stone-webviewer/index.html?study=1.2.840.113619.2.176.2025."
        "1499492.7391.1171285944.390&selectedStudies=1.2.840.113619.2.176.2025.1499492.7391."
        "1171285944.390&token=VALID_SHARE"
    )


def test_spec_t1_publication_goes_to_the_landing_page() -> None:
    roots = PublicRoots(orthanc="http://localhost/orthanc/", landing_page=LANDING)
    url = share_links.creation_url(TokenType.STONE_VIEWER_PUBLICATION, TOKEN, [STUDY_A], roots)
    assert url == f"{LANDING}?token={TOKEN}"
    # The decode answer skips the landing page.
    direct = share_links.redirect_url(TokenType.STONE_VIEWER_PUBLICATION, TOKEN, [STUDY_A], roots)
    assert direct is not None and direct.startswith("http://localhost/orthanc/stone-webviewer/")


@pytest.mark.parametrize(
    ("token_type", "roots", "expected"),
    [
        (
            TokenType.STONE_VIEWER_PUBLICATION,
            ROOTS,
            f"http://localhost/orthanc/stone-webviewer/index.html?study={A_UID},{B_UID}"
            f"&selectedStudies={A_UID},{B_UID}&token={TOKEN}",
        ),
        (
            TokenType.OSIMIS_VIEWER_PUBLICATION,
            ROOTS,
            f"http://localhost/orthanc/osimis-viewer/app/index.html?pickableStudyIds={A_ID},{B_ID}"
            f"&selectedStudyIds={A_ID},{B_ID}&token={TOKEN}",
        ),
        (
            TokenType.OHIF_VIEWER_PUBLICATION,
            ROOTS,
            f"http://localhost/ohif/viewer?StudyInstanceUIDs={A_UID},{B_UID}&token={TOKEN}",
        ),
        (
            TokenType.OHIF_VIEWER_PUBLICATION,
            PublicRoots(ohif="http://localhost/ohif", ohif_data_source=OhifDataSource.DICOM_JSON),
            f"http://localhost/ohif/viewer?url=../studies/{A_ID},{B_ID}/ohif-dicom-json"
            f"&token={TOKEN}",
        ),
        (
            TokenType.VOLVIEW_VIEWER_PUBLICATION,
            ROOTS,
            "http://localhost/orthanc/volview/index.html?names=[archive.zip]"
            f"&urls=../studies/{A_ID}/archive,../studies/{B_ID}/archive&token={TOKEN}",
        ),
    ],
)
def test_direct_viewer_urls(token_type: TokenType, roots: PublicRoots, expected: str) -> None:
    assert share_links.creation_url(token_type, TOKEN, [STUDY_A, STUDY_B], roots) == expected
    assert share_links.redirect_url(token_type, TOKEN, [STUDY_A, STUDY_B], roots) == expected


@pytest.mark.parametrize("token_type", sorted(share_links.INSTANT_LINK_TYPES))
def test_instant_links_have_no_url(token_type: TokenType) -> None:
    assert share_links.creation_url(token_type, TOKEN, [STUDY_A], PublicRoots()) is None
    assert share_links.redirect_url(token_type, TOKEN, [STUDY_A], ROOTS) is None


def test_meddream_links() -> None:
    instant = share_links.creation_url(
        TokenType.MEDDREAM_INSTANT_LINK, "md-token", [STUDY_A, STUDY_B], ROOTS
    )
    assert instant == f"http://localhost/meddream/?study={A_UID},{B_UID}&token=md-token"
    roots = PublicRoots(meddream="http://localhost/meddream/", landing_page=LANDING)
    publication = share_links.creation_url(
        TokenType.MEDDREAM_VIEWER_PUBLICATION, TOKEN, [STUDY_A], roots
    )
    assert publication == f"{LANDING}?token={TOKEN}"
    # Its redirect needs a fresh MedDream token: the caller builds it, not redirect_url.
    assert (
        share_links.redirect_url(TokenType.MEDDREAM_VIEWER_PUBLICATION, TOKEN, [STUDY_A], roots)
        is None
    )


def test_inbox_links() -> None:
    default = share_links.creation_url(TokenType.INBOX_LINK, TOKEN, [], ROOTS)
    assert default == f"http://localhost/orthanc/ui/app/inbox.html?token={TOKEN}"
    custom = PublicRoots(inbox_page="https://pacs.example.org/inbox.html?x=1#top")
    assert share_links.creation_url(TokenType.INBOX_LINK, TOKEN, [], custom) == (
        f"https://pacs.example.org/inbox.html?token={TOKEN}"
    )
    assert share_links.redirect_url(TokenType.INBOX_LINK, TOKEN, [], ROOTS) is None
    with pytest.raises(ValidationFailed, match="inbox page"):
        share_links.creation_url(TokenType.INBOX_LINK, TOKEN, [], PublicRoots())


def test_roots_are_normalised() -> None:
    roots = PublicRoots(
        orthanc="http://h/orthanc",
        ohif="http://h/ohif",
        meddream="http://h/md",
        landing_page=LANDING + "?lang=fr",
        ohif_data_source="dicom-json",  # type: ignore[arg-type]
    )
    assert roots.orthanc == "http://h/orthanc/"
    assert roots.ohif == "http://h/ohif/"
    assert roots.meddream == "http://h/md/"
    assert roots.landing_page == LANDING
    assert roots.ohif_data_source is OhifDataSource.DICOM_JSON
    assert PublicRoots(orthanc="").orthanc is None


@pytest.mark.parametrize(
    ("token_type", "roots", "resources", "reason"),
    [
        (TokenType.STONE_VIEWER_PUBLICATION, PublicRoots(), [STUDY_A], "public Orthanc root"),
        (TokenType.OSIMIS_VIEWER_PUBLICATION, PublicRoots(), [STUDY_A], "public Orthanc root"),
        (TokenType.VOLVIEW_VIEWER_PUBLICATION, PublicRoots(), [STUDY_A], "public Orthanc root"),
        (TokenType.OHIF_VIEWER_PUBLICATION, PublicRoots(), [STUDY_A], "public OHIF root"),
        (TokenType.MEDDREAM_INSTANT_LINK, PublicRoots(), [STUDY_A], "public MedDream root"),
        (TokenType.MEDDREAM_VIEWER_PUBLICATION, ROOTS, [STUDY_A], "landing page"),
        (TokenType.STONE_VIEWER_PUBLICATION, ROOTS, [study(A_ID)], "dicom-uid of every"),
        (TokenType.OHIF_VIEWER_PUBLICATION, ROOTS, [study(A_ID)], "dicom-uid of every"),
        (TokenType.OSIMIS_VIEWER_PUBLICATION, ROOTS, [study(None, A_UID)], "orthanc-id of every"),
        (TokenType.VOLVIEW_VIEWER_PUBLICATION, ROOTS, [study(None, A_UID)], "orthanc-id of"),
        (TokenType.STONE_VIEWER_PUBLICATION, ROOTS, [SERIES_OF_A], "studies only"),
        (TokenType.STONE_VIEWER_PUBLICATION, ROOTS, [], "at least one resource"),
        (
            TokenType.MEDDREAM_VIEWER_PUBLICATION,
            PublicRoots(landing_page=LANDING),
            [SERIES_OF_A],
            "studies only",
        ),
        (
            TokenType.MEDDREAM_VIEWER_PUBLICATION,
            PublicRoots(landing_page=LANDING),
            [study(A_ID)],
            "dicom-uid",
        ),
    ],
)
def test_links_that_cannot_be_built_are_refused(
    token_type: TokenType, roots: PublicRoots, resources: list[ResourceRef], reason: str
) -> None:
    with pytest.raises(ValidationFailed, match=reason):
        share_links.check_creatable(token_type, resources, roots)
    with pytest.raises(ValidationFailed, match=reason):
        share_links.creation_url(token_type, TOKEN, resources, roots)


def test_landing_page_does_not_hide_missing_viewer_ids() -> None:
    roots = PublicRoots(orthanc="http://h/", landing_page=LANDING)
    with pytest.raises(ValidationFailed):
        share_links.check_creatable(TokenType.STONE_VIEWER_PUBLICATION, [study(A_ID)], roots)


def test_redirect_url_is_none_when_it_cannot_be_built() -> None:
    assert (
        share_links.redirect_url(
            TokenType.STONE_VIEWER_PUBLICATION, TOKEN, [STUDY_A], PublicRoots()
        )
        is None
    )
    assert share_links.redirect_url("made-up", TOKEN, [STUDY_A], ROOTS) is None  # type: ignore[arg-type]


def test_unknown_type_is_a_validation_error_for_creation() -> None:
    with pytest.raises(ValidationFailed):
        share_links.creation_url("made-up", TOKEN, [STUDY_A], ROOTS)  # type: ignore[arg-type]


def test_values_are_quoted_so_they_cannot_inject_parameters() -> None:
    odd = study(None, "1.2&admin=1")
    url = share_links.creation_url(TokenType.STONE_VIEWER_PUBLICATION, "a&b=c", [odd], ROOTS)
    assert url is not None
    assert "&admin=1" not in url and "&b=c" not in url
    assert "1.2%26admin%3D1" in url and "token=a%26b%3Dc" in url
