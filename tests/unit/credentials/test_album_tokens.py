"""Unit tests for authsvc.credentials.album_tokens: upload and album-read tokens over sealing."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.credentials import album_tokens
from authsvc.credentials import sealing
from authsvc.credentials.album_tokens import AlbumTokenClaims
from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid
from authsvc.errors import ValidationFailed

pytestmark = pytest.mark.unit

RING_KEY = b"insecure-upload-test-key-0000000"
RING = KeyRing([("k1", RING_KEY)])
OTHER_RING = KeyRing([("k1", b"insecure-upload-test-key-1111111")])
NOW = datetime(2025, 6, 1, 8, 30, 15, 400_000, tzinfo=UTC)
START = datetime(2025, 6, 1, 8, 30, 15, tzinfo=UTC)
WEEK = timedelta(days=7)

ISSUE = {
    Purpose.UPLOAD: album_tokens.issue_upload_token,
    Purpose.ALBUM_READ: album_tokens.issue_album_read_token,
}
OPEN = {
    Purpose.UPLOAD: album_tokens.open_upload_token,
    Purpose.ALBUM_READ: album_tokens.open_album_read_token,
}


def make(purpose: Purpose = Purpose.UPLOAD, **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "token_id": "tok-1",
        "album_id": "album-42",
        "server_id": None,
        "issuer": "user-sub-1",
        "lifetime": WEEK,
        "now": NOW,
    }
    fields.update(overrides)
    return ISSUE[purpose](RING, **fields)


@pytest.mark.parametrize("purpose", [Purpose.UPLOAD, Purpose.ALBUM_READ])
def test_round_trip(purpose: Purpose) -> None:
    token = make(purpose, server_id="orthanc-a")
    assert sealing.token_purpose(token) is purpose
    claims = OPEN[purpose](RING, token, now=NOW)
    assert claims == AlbumTokenClaims(
        purpose=purpose,
        token_id="tok-1",
        album_id="album-42",
        server_id="orthanc-a",
        issuer="user-sub-1",
        not_before=START,
        expires_at=START + WEEK,
        key_id="k1",
    )


def test_issue_is_the_upload_issuer() -> None:
    token = album_tokens.issue(
        RING,
        token_id="t",
        album_id="a",
        server_id=None,
        issuer="i",
        lifetime=WEEK,
        now=NOW,
    )
    assert album_tokens.open_upload_token(RING, token, now=NOW).purpose is Purpose.UPLOAD
    assert album_tokens.UploadTokenClaims is AlbumTokenClaims


def test_tokens_stay_short_enough_for_a_command_line() -> None:
    token = make(
        token_id=sealing.new_token_id(),
        album_id="7f1c2a9e-1111-2222-3333-444455556666",
        issuer="3cd50e87-a0e6-40a4-bebf-3eab0cb7b6c0",
        server_id="orthanc-main",
    )
    assert len(token) < 300


@pytest.mark.parametrize(
    ("sealed_as", "opened_as"),
    [(Purpose.UPLOAD, Purpose.ALBUM_READ), (Purpose.ALBUM_READ, Purpose.UPLOAD)],
)
def test_upload_and_read_tokens_never_mix(sealed_as: Purpose, opened_as: Purpose) -> None:
    with pytest.raises(TokenInvalid) as caught:
        OPEN[opened_as](RING, make(sealed_as), now=NOW)
    assert type(caught.value) is TokenInvalid


@pytest.mark.parametrize("purpose", [Purpose.UPLOAD, Purpose.ALBUM_READ])
def test_share_tokens_are_not_album_tokens(purpose: Purpose) -> None:
    share = sealing.seal(
        RING,
        Purpose.SHARE,
        {"jti": "t", "alb": "a", "srv": None, "iss": "i", "exp": 2_000_000_000},
        now=NOW,
    )
    with pytest.raises(TokenInvalid):
        OPEN[purpose](RING, share, now=NOW)


def test_generic_functions_refuse_the_share_purpose() -> None:
    with pytest.raises(ValueError):
        album_tokens.issue_album_token(
            RING,
            purpose=Purpose.SHARE,
            token_id="t",
            album_id="a",
            server_id=None,
            issuer="i",
            lifetime=WEEK,
            now=NOW,
        )
    with pytest.raises(ValueError):
        album_tokens.open_album_token(RING, make(), purpose=Purpose.SHARE, now=NOW)


def test_wrong_key_is_invalid() -> None:
    with pytest.raises(TokenInvalid):
        album_tokens.open_upload_token(OTHER_RING, make(), now=NOW)


def test_tampering_is_invalid() -> None:
    token = make()
    for position in range(len(token)):
        tampered = token[:position] + chr(ord(token[position]) ^ 1) + token[position + 1 :]
        with pytest.raises(TokenInvalid) as caught:
            album_tokens.open_upload_token(RING, tampered, now=NOW)
        assert type(caught.value) is TokenInvalid


@given(st.text())
def test_garbage_is_invalid(text: str) -> None:
    with pytest.raises(TokenInvalid) as caught:
        album_tokens.open_upload_token(RING, text, now=NOW)
    assert type(caught.value) is TokenInvalid


# --- lifetime -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        (START - timedelta(microseconds=1), False),
        (START, True),
        (START + WEEK - timedelta(microseconds=1), True),
        (START + WEEK, False),
    ],
)
def test_lifetime_boundaries(now: datetime, valid: bool) -> None:
    token = make()
    if valid:
        assert album_tokens.open_upload_token(RING, token, now=now).token_id == "tok-1"
    else:
        with pytest.raises(TokenExpired):
            album_tokens.open_upload_token(RING, token, now=now)


@pytest.mark.parametrize(
    "lifetime", [timedelta(0), timedelta(seconds=-5), timedelta(milliseconds=999)]
)
def test_lifetime_must_be_at_least_a_second(lifetime: timedelta) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make(lifetime=lifetime)
    assert caught.value.details == {"lifetime": "too short"}


def test_one_second_lifetime_works() -> None:
    claims = album_tokens.open_upload_token(RING, make(lifetime=timedelta(seconds=1)), now=NOW)
    assert claims.expires_at - claims.not_before == timedelta(seconds=1)


def test_album_tokens_always_expire() -> None:
    # Sealed by hand without "exp": a valid sealing token, but not a valid album token.
    token = sealing.seal(
        RING, Purpose.UPLOAD, {"jti": "t", "alb": "a", "srv": None, "iss": "i"}, now=NOW
    )
    with pytest.raises(TokenInvalid):
        album_tokens.open_upload_token(RING, token, now=NOW)


# --- validation of issued fields -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("token_id", ""),
        ("album_id", ""),
        ("issuer", ""),
        ("album_id", 42),
        ("token_id", None),
        ("server_id", 7),
    ],
)
def test_issue_rejects_bad_fields(field: str, value: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make(**{field: value})
    assert field in caught.value.details


@pytest.mark.parametrize(
    "claims",
    [
        {"alb": "a", "srv": None, "iss": "i"},
        {"jti": 1, "alb": "a", "srv": None, "iss": "i"},
        {"jti": "t", "srv": None, "iss": "i"},
        {"jti": "t", "alb": ["a"], "srv": None, "iss": "i"},
        {"jti": "t", "alb": "a", "srv": 3, "iss": "i"},
        {"jti": "t", "alb": "a", "srv": None},
        {"jti": "t", "alb": "a", "srv": None, "iss": None},
    ],
)
def test_authentic_tokens_with_malformed_claims_are_invalid(claims: dict[str, Any]) -> None:
    token = sealing.seal(RING, Purpose.UPLOAD, {**claims, "exp": 2_000_000_000}, now=NOW)
    with pytest.raises(TokenInvalid):
        album_tokens.open_upload_token(RING, token, now=NOW)


# --- server binding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued_for", "expected", "ok"),
    [
        ("orthanc-a", "orthanc-a", True),
        (None, None, True),
        ("orthanc-a", ANY_SERVER, True),
        (None, ANY_SERVER, True),
        ("orthanc-a", "orthanc-b", False),
        ("orthanc-a", None, False),
        (None, "orthanc-a", False),
    ],
)
@pytest.mark.parametrize("purpose", [Purpose.UPLOAD, Purpose.ALBUM_READ])
def test_server_binding(purpose: Purpose, issued_for: str | None, expected: Any, ok: bool) -> None:
    token = make(purpose, server_id=issued_for)
    if ok:
        claims = OPEN[purpose](RING, token, now=NOW, expected_server_id=expected)
        assert claims.server_id == issued_for
        return
    kind = "upload token" if purpose is Purpose.UPLOAD else "album-read token"
    with pytest.raises(TokenInvalid, match=f"This {kind} was issued for another Orthanc server"):
        OPEN[purpose](RING, token, now=NOW, expected_server_id=expected)


def test_default_is_any_server() -> None:
    token = make(server_id="orthanc-a")
    assert album_tokens.open_upload_token(RING, token, now=NOW).server_id == "orthanc-a"


def test_rotation_reports_the_key_that_opened() -> None:
    old = make()
    rotated = KeyRing([("k2", b"insecure-upload-test-key-2222222"), ("k1", RING_KEY)])
    assert album_tokens.open_upload_token(rotated, old, now=NOW).key_id == "k1"
    fresh = album_tokens.issue_upload_token(
        rotated,
        token_id="t2",
        album_id="a",
        server_id=None,
        issuer="i",
        lifetime=WEEK,
        now=NOW,
    )
    assert album_tokens.open_upload_token(rotated, fresh, now=NOW).key_id == "k2"


# --- every byte, and rotation through the CLI ----------------------------------------------------


def test_flipping_any_bit_of_the_sealed_bytes_is_invalid() -> None:
    # Below the text layer: every bit of nonce, ciphertext and GCM tag, re-encoded canonically.
    import base64

    tag, key_id, payload = make().split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for index in range(len(raw)):
        for bit in range(8):
            raw[index] ^= 1 << bit
            forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
            raw[index] ^= 1 << bit
            with pytest.raises(TokenInvalid) as caught:
                album_tokens.open_upload_token(RING, f"{tag}.{key_id}.{forged}", now=NOW)
            assert type(caught.value) is TokenInvalid


def test_not_before_is_enforced_for_upload_tokens() -> None:
    token = make(now=NOW + timedelta(hours=1))
    with pytest.raises(TokenExpired, match="not valid yet"):
        album_tokens.open_upload_token(RING, token, now=NOW)
    assert album_tokens.open_upload_token(RING, token, now=NOW + timedelta(hours=2)).album_id


def test_keys_cli_generate_and_rotate_keep_live_tokens_working() -> None:
    from click.testing import CliRunner

    from authsvc.cli import main

    runner = CliRunner()
    first = runner.invoke(main, ["keys", "generate", "--key-id", "old"])
    assert first.exit_code == 0
    old_ring = KeyRing.from_text(first.output.strip())
    token = album_tokens.issue_upload_token(
        old_ring,
        token_id="t",
        album_id="a",
        server_id=None,
        issuer="i",
        lifetime=WEEK,
        now=NOW,
    )
    rotated = runner.invoke(main, ["keys", "rotate", "--current", first.output.strip()])
    assert rotated.exit_code == 0
    ring = KeyRing.from_text(rotated.output.strip())
    assert ring.key_ids[1:] == ("old",) and ring.primary_key_id != "old"
    # Live tokens keep opening; new ones are sealed with the new key.
    assert album_tokens.open_upload_token(ring, token, now=NOW).key_id == "old"
    fresh = album_tokens.issue_upload_token(
        ring, token_id="u", album_id="a", server_id=None, issuer="i", lifetime=WEEK, now=NOW
    )
    assert fresh.split(".")[1] == ring.primary_key_id
    with pytest.raises(TokenInvalid):
        album_tokens.open_upload_token(old_ring, fresh, now=NOW)
    # --keep 1 after a second rotation drops the oldest key.
    again = runner.invoke(
        main, ["keys", "rotate", "--current", rotated.output.strip(), "--keep", "1"]
    )
    assert again.exit_code == 0
    assert "old" not in KeyRing.from_text(again.output.strip()).key_ids
    broken = runner.invoke(main, ["keys", "rotate", "--current", "not-a-ring"])
    assert broken.exit_code == 2 and "not-a-ring" not in broken.output
