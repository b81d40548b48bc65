"""Unit tests for authsvc.credentials.sealing: round trip, tampering, keys, rotation, lifetimes."""

from __future__ import annotations

import base64
import itertools
import json
import string
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from authsvc.credentials import sealing
from authsvc.credentials.sealing import ANY_SERVER
from authsvc.credentials.sealing import KeyRing
from authsvc.credentials.sealing import Purpose
from authsvc.errors import ConfigError
from authsvc.errors import TokenExpired
from authsvc.errors import TokenInvalid

pytestmark = pytest.mark.unit

# Throw-away keys, recognisable as such.
INSECURE_KEY_A = b"insecure-test-key-A-000000000000"
INSECURE_KEY_B = b"insecure-test-key-B-111111111111"
NOW = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
N = int(datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp())


def ring_a() -> KeyRing:
    return KeyRing([("ka", INSECURE_KEY_A)])


def ring_b() -> KeyRing:
    return KeyRing([("kb", INSECURE_KEY_B)])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expect_invalid_only(ring: KeyRing, purpose: Purpose, token: Any, now: datetime = NOW) -> None:
    """Opening must fail with TokenInvalid itself: never TokenExpired, never another exception."""
    with pytest.raises(TokenInvalid) as caught:
        sealing.open_token(ring, purpose, token, now=now)
    assert type(caught.value) is TokenInvalid


def test_purpose_wire_values() -> None:
    assert [p.value for p in Purpose] == ["album-read", "share", "upload"]


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_round_trip_keeps_claims_and_reports_key_and_times(purpose: Purpose) -> None:
    claims = {"jti": "t-1", "alb": "album-7", "srv": None, "n": 3, "l": [1, "two"], "é": "ü"}
    token = sealing.seal(ring_a(), purpose, {**claims, "exp": N + 60}, now=NOW)
    opened = sealing.open_token(ring_a(), purpose, token, now=NOW)
    assert opened.key_id == "ka"
    assert opened.not_before == N  # defaults to now, floored to whole seconds
    assert opened.expires_at == N + 60
    assert {k: v for k, v in opened.claims.items() if k not in ("nbf", "exp")} == claims


@pytest.mark.parametrize("purpose", list(Purpose))
def test_token_text_is_tagged_url_safe_ascii(purpose: Purpose) -> None:
    token = sealing.seal(ring_a(), purpose, {"x": 1}, now=NOW)
    tag, key_id, payload = token.split(".")
    assert tag == sealing.TOKEN_TAGS[purpose]
    assert key_id == "ka"
    assert set(payload) <= set(string.ascii_letters + string.digits + "-_")
    assert sealing.token_purpose(token) is purpose


def test_claims_are_not_readable_in_the_token() -> None:
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {"alb": "secret-album-name"}, now=NOW)
    raw = base64.urlsafe_b64decode(token.split(".")[2] + "===")
    assert b"secret-album-name" not in raw
    assert "secret-album-name" not in token


def test_every_seal_uses_a_fresh_nonce() -> None:
    tokens = {sealing.seal(ring_a(), Purpose.SHARE, {"x": 1}, now=NOW) for _ in range(20)}
    assert len(tokens) == 20


def test_opened_claims_are_read_only() -> None:
    token = sealing.seal(ring_a(), Purpose.SHARE, {"x": 1}, now=NOW)
    opened = sealing.open_token(ring_a(), Purpose.SHARE, token, now=NOW)
    with pytest.raises(TypeError):
        opened.claims["x"] = 2  # type: ignore[index]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(
    claims=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in ("nbf", "exp")), json_values, max_size=6
    ),
    purpose=st.sampled_from(list(Purpose)),
)
def test_round_trip_property(claims: dict[str, Any], purpose: Purpose) -> None:
    token = sealing.seal(ring_a(), purpose, claims, now=NOW)
    opened = sealing.open_token(ring_a(), purpose, token, now=NOW)
    assert {k: v for k, v in opened.claims.items() if k != "nbf"} == claims


# --- tampering ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upload_token() -> str:
    return sealing.seal(ring_a(), Purpose.UPLOAD, {"jti": "t-1", "exp": N + 3600}, now=NOW)


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80])
def test_flipping_any_bit_of_any_character_is_rejected(upload_token: str, mask: int) -> None:
    sealing.open_token(ring_a(), Purpose.UPLOAD, upload_token, now=NOW)  # the original opens
    for position in range(len(upload_token)):
        flipped = chr(ord(upload_token[position]) ^ mask)
        tampered = upload_token[:position] + flipped + upload_token[position + 1 :]
        expect_invalid_only(ring_a(), Purpose.UPLOAD, tampered)


def test_replacing_any_character_with_any_other_url_safe_one_is_rejected(
    upload_token: str,
) -> None:
    alphabet = string.ascii_letters + string.digits + "-_."
    for position, original in enumerate(upload_token):
        for replacement in alphabet:
            if replacement != original:
                tampered = upload_token[:position] + replacement + upload_token[position + 1 :]
                expect_invalid_only(ring_a(), Purpose.UPLOAD, tampered)


def test_deleting_or_inserting_any_character_is_rejected(upload_token: str) -> None:
    for position in range(len(upload_token)):
        expect_invalid_only(
            ring_a(), Purpose.UPLOAD, upload_token[:position] + upload_token[position + 1 :]
        )
        for extra in ("A", "-", ".", "="):
            expect_invalid_only(
                ring_a(), Purpose.UPLOAD, upload_token[:position] + extra + upload_token[position:]
            )


def test_every_truncation_and_extension_is_rejected(upload_token: str) -> None:
    for length in range(len(upload_token)):
        expect_invalid_only(ring_a(), Purpose.UPLOAD, upload_token[:length])
    for suffix in ("A", "=", "==", " ", "\n", ".", "%3D"):
        expect_invalid_only(ring_a(), Purpose.UPLOAD, upload_token + suffix)
    for prefix in (" ", "Bearer "):
        expect_invalid_only(ring_a(), Purpose.UPLOAD, prefix + upload_token)


def test_non_canonical_base64_with_the_same_bytes_is_rejected() -> None:
    # Three payload lengths cover both base64 remainders that leave unused low bits.
    remainders = set()
    for filler in ("", "x", "xy"):
        token = sealing.seal(ring_a(), Purpose.UPLOAD, {"f": filler}, now=NOW)
        head, payload = token.rsplit(".", 1)
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        for char in string.ascii_letters + string.digits + "-_":
            variant = payload[:-1] + char
            if variant == payload:
                continue
            if base64.urlsafe_b64decode(variant + "=" * (-len(variant) % 4)) == data:
                remainders.add(len(payload) % 4)
                expect_invalid_only(ring_a(), Purpose.UPLOAD, f"{head}.{variant}")
    assert remainders == {2, 3}


def test_swapping_payloads_between_tokens_is_rejected() -> None:
    one = sealing.seal(ring_a(), Purpose.UPLOAD, {"a": 1}, now=NOW)
    two = sealing.seal(ring_a(), Purpose.SHARE, {"a": 1}, now=NOW)
    spliced = one.rsplit(".", 1)[0] + "." + two.rsplit(".", 1)[1]
    expect_invalid_only(ring_a(), Purpose.UPLOAD, spliced)


# --- garbage input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "..",
        "up1",
        "up1.",
        "up1.ka",
        "up1.ka.",
        "up1..AAAA",
        "up1.ka.AAAA",
        "up1.ka.A",
        "up1.ka." + "A" * 40,
        "up1.ka.abc.def",
        "up2.ka." + "A" * 60,
        "UP1.ka." + "A" * 60,
        "up1.ka.ÄÖÜ",
        "up1.kä." + "A" * 60,
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
        "up1.ka." + "A" * (sealing.MAX_TOKEN_CHARS + 1),
        "\x00",
    ],
)
def test_garbage_is_token_invalid(garbage: str) -> None:
    expect_invalid_only(ring_a(), Purpose.UPLOAD, garbage)


@pytest.mark.parametrize("not_text", [None, 123, b"up1.ka.AAAA", ["up1"], object()])
def test_non_text_is_token_invalid(not_text: Any) -> None:
    expect_invalid_only(ring_a(), Purpose.UPLOAD, not_text)


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_is_token_invalid(text: str) -> None:
    for purpose in Purpose:
        expect_invalid_only(ring_a(), purpose, text)


@settings(max_examples=300)
@given(st.binary())
def test_arbitrary_bytes_are_token_invalid(data: bytes) -> None:
    expect_invalid_only(ring_a(), Purpose.SHARE, data)
    expect_invalid_only(ring_a(), Purpose.SHARE, data.decode("latin-1"))


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(list(Purpose)))
def test_well_formed_forgeries_are_token_invalid(payload: bytes, purpose: Purpose) -> None:
    forged = f"{sealing.TOKEN_TAGS[purpose]}.ka.{b64(payload)}"
    expect_invalid_only(ring_a(), purpose, forged)


def _raw_seal(purpose: Purpose, plaintext: bytes, key_id: str = "ka") -> str:
    """Encrypt arbitrary bytes with the real key: an authentic token with a bad body."""
    ring = ring_a()
    header = f"{sealing.TOKEN_TAGS[purpose]}.{key_id}"
    cipher = ring._cipher(key_id, purpose)
    assert cipher is not None
    nonce = b"\x00" * sealing.NONCE_BYTES
    sealed = cipher.encrypt(nonce, plaintext, sealing._associated_data(purpose, header))
    return f"{header}.{b64(nonce + sealed)}"


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json",
        b"\xff\xfe",
        b"[1,2]",
        b'"text"',
        b"{}",
        b'{"nbf":true}',
        b'{"nbf":"1"}',
        b'{"nbf":1.5}',
        b'{"nbf":1,"exp":"2"}',
        b'{"nbf":1,"exp":false}',
    ],
)
def test_authentic_but_malformed_bodies_are_token_invalid(plaintext: bytes) -> None:
    expect_invalid_only(ring_a(), Purpose.UPLOAD, _raw_seal(Purpose.UPLOAD, plaintext))


def test_authentic_minimal_body_opens() -> None:
    opened = sealing.open_token(
        ring_a(), Purpose.UPLOAD, _raw_seal(Purpose.UPLOAD, b'{"nbf":1}'), now=NOW
    )
    assert opened.expires_at is None


# --- keys ------------------------------------------------------------------------------


def test_wrong_key_is_rejected() -> None:
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {"a": 1}, now=NOW)
    expect_invalid_only(ring_b(), Purpose.UPLOAD, token)


def test_same_key_id_with_another_key_is_rejected() -> None:
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {"a": 1}, now=NOW)
    impostor = KeyRing([("ka", INSECURE_KEY_B)])
    expect_invalid_only(impostor, Purpose.UPLOAD, token)


def test_rotation_keeps_old_tokens_and_seals_with_the_new_key() -> None:
    old_ring = ring_a()
    old_token = sealing.seal(old_ring, Purpose.UPLOAD, {"a": 1}, now=NOW)

    rotated = KeyRing([("kb", INSECURE_KEY_B), ("ka", INSECURE_KEY_A)])
    assert rotated.primary_key_id == "kb"
    assert rotated.key_ids == ("kb", "ka")
    assert sealing.open_token(rotated, Purpose.UPLOAD, old_token, now=NOW).key_id == "ka"

    new_token = sealing.seal(rotated, Purpose.UPLOAD, {"a": 1}, now=NOW)
    assert new_token.split(".")[1] == "kb"
    assert sealing.open_token(rotated, Purpose.UPLOAD, new_token, now=NOW).key_id == "kb"
    # A replica still on the old ring does not know the new key id yet.
    expect_invalid_only(old_ring, Purpose.UPLOAD, new_token)

    # Once the old key is retired, its tokens stop working.
    retired = KeyRing([("kb", INSECURE_KEY_B)])
    expect_invalid_only(retired, Purpose.UPLOAD, old_token)
    assert sealing.open_token(retired, Purpose.UPLOAD, new_token, now=NOW).key_id == "kb"


def test_from_text_parses_items_in_order() -> None:
    text = f" ka:{b64(INSECURE_KEY_A)},\n kb:{b64(INSECURE_KEY_B)}== "
    ring = KeyRing.from_text(text)
    assert ring.key_ids == ("ka", "kb")
    token = sealing.seal(ring, Purpose.SHARE, {"a": 1}, now=NOW)
    assert sealing.open_token(ring_a(), Purpose.SHARE, token, now=NOW).key_id == "ka"


def test_generate_key_round_trips_through_from_text() -> None:
    text = sealing.generate_key()
    ring = KeyRing.from_text(text)
    assert ring.primary_key_id == text.split(":")[0]
    assert ring.primary_key_id.startswith("k")
    assert sealing.generate_key("2025-q1").startswith("2025-q1:")
    assert sealing.generate_key() != sealing.generate_key()
    with pytest.raises(ValueError):
        sealing.generate_key("bad.id")


SECRET_LOOKING = b64(INSECURE_KEY_A)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "at least one key"),
        (" , \n", "at least one key"),
        (SECRET_LOOKING, "item 1 is not of the form"),
        (f"ka:{SECRET_LOOKING},kb", "item 2 is not of the form"),
        (f":{SECRET_LOOKING}", "item 1 is not of the form"),
        ("ka:", "item 1 is not of the form"),
        (f"k.a:{SECRET_LOOKING}", "item 1 has a key id"),
        (f"{'k' * 33}:{SECRET_LOOKING}", "item 1 has a key id"),
        (f"ka:{b64(INSECURE_KEY_A[:31])}", "is not 32 bytes"),
        (f"ka:{b64(INSECURE_KEY_A + b'x')}", "is not 32 bytes"),
        (f"ka:{SECRET_LOOKING[:-1]}!", "is not 32 bytes"),
        (f"ka:{SECRET_LOOKING}+", "is not 32 bytes"),
        (f"ka:{SECRET_LOOKING},ka:{b64(INSECURE_KEY_B)}", "appears twice"),
    ],
)
def test_from_text_errors_name_the_problem_but_never_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyRing.from_text(text, setting="AUTHSVC_TOKEN_KEYS")
    message = str(caught.value)
    assert message.startswith("AUTHSVC_TOKEN_KEYS: ")
    assert fragment in message
    assert SECRET_LOOKING[:20] not in message
    assert b64(INSECURE_KEY_B)[:20] not in message


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [("ka", INSECURE_KEY_A[:16])],
        [("ka", "not bytes")],
        [("", INSECURE_KEY_A)],
        [("a.b", INSECURE_KEY_A)],
        [("ka", INSECURE_KEY_A), ("ka", INSECURE_KEY_B)],
    ],
)
def test_key_ring_rejects_unusable_keys(keys: list[tuple[str, Any]]) -> None:
    with pytest.raises(ConfigError):
        KeyRing(keys)


def test_key_ring_repr_shows_ids_only() -> None:
    text = repr(KeyRing([("ka", INSECURE_KEY_A)]))
    assert text == "KeyRing(key_ids=['ka'])"
    assert "insecure" not in text


# --- lifetime -----------------------------------------------------------------------------


def _timed_token(nbf: int, exp: int | None) -> str:
    claims: dict[str, Any] = {"nbf": nbf}
    if exp is not None:
        claims["exp"] = exp
    return sealing.seal(ring_a(), Purpose.UPLOAD, claims, now=NOW)


def at(seconds: int, micro: int = 0) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC) + timedelta(microseconds=micro)


@pytest.mark.parametrize(
    ("now", "outcome"),
    [
        (at(N - 1), "not yet"),
        (at(N, -1), "not yet"),
        (at(N), "ok"),
        (at(N + 9, 999_999), "ok"),
        (at(N + 10), "expired"),
        (at(N + 11), "expired"),
    ],
)
def test_lifetime_boundaries_are_exact(now: datetime, outcome: str) -> None:
    token = _timed_token(N, N + 10)
    if outcome == "ok":
        assert sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=now).expires_at == N + 10
        return
    with pytest.raises(TokenExpired) as caught:
        sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=now)
    assert ("not valid yet" in caught.value.message) is (outcome == "not yet")


def test_lifetime_uses_the_instant_not_the_time_zone() -> None:
    token = _timed_token(N, N + 10)
    plus_two = timezone(timedelta(hours=2))
    inside = at(N + 5).astimezone(plus_two)
    assert sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=inside).not_before == N
    with pytest.raises(TokenExpired):
        sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=at(N + 10).astimezone(plus_two))


def test_token_without_expiry_never_expires() -> None:
    token = _timed_token(N, None)
    far = datetime(9999, 1, 1, tzinfo=UTC)
    assert sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=far).expires_at is None


def test_unsafe_open_skips_only_the_time_check() -> None:
    token = _timed_token(N, N + 10)
    late = at(N + 100)
    opened = sealing.unsafe_open_token_ignoring_time(ring_a(), Purpose.UPLOAD, token)
    assert opened.expires_at == N + 10
    with pytest.raises(TokenExpired):
        opened.check_time(late)
    with pytest.raises(TokenInvalid):
        sealing.unsafe_open_token_ignoring_time(ring_b(), Purpose.UPLOAD, token)


def test_expired_forgeries_still_report_invalid_not_expired() -> None:
    token = _timed_token(N, N + 10)
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    expect_invalid_only(ring_a(), Purpose.UPLOAD, tampered, now=at(N + 100))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": N},
        {"exp": N - 1},
        {"exp": "later"},
        {"exp": True},
        {"exp": float(N + 10)},
        {"nbf": "now"},
        {"nbf": False},
        {"value": {1, 2}},
        {"value": float("nan")},
    ],
)
def test_seal_rejects_bad_claims(claims: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sealing.seal(ring_a(), Purpose.UPLOAD, claims, now=at(N))


def test_seal_drops_a_null_expiry() -> None:
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {"exp": None}, now=NOW)
    opened = sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=NOW)
    assert "exp" not in opened.claims


def test_naive_datetimes_are_a_programming_error() -> None:
    naive = datetime(2025, 1, 1)
    with pytest.raises(ValueError):
        sealing.seal(ring_a(), Purpose.UPLOAD, {}, now=naive)
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {}, now=NOW)
    with pytest.raises(ValueError):
        sealing.open_token(ring_a(), Purpose.UPLOAD, token, now=naive)
    with pytest.raises(ValueError):
        sealing.epoch_seconds(naive)


def test_epoch_helpers() -> None:
    assert sealing.epoch_seconds(at(N, 999_999)) == N
    assert sealing.epoch_seconds(at(N)) == N
    assert sealing.from_epoch(N) == at(N)
    assert sealing.from_epoch(N).tzinfo is UTC


# --- purposes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sealed_as", "opened_as"),
    [pair for pair in itertools.permutations(Purpose, 2)],
)
def test_a_token_never_opens_as_another_purpose(sealed_as: Purpose, opened_as: Purpose) -> None:
    token = sealing.seal(ring_a(), sealed_as, {"jti": "x"}, now=NOW)
    with pytest.raises(TokenInvalid) as caught:
        sealing.open_token(ring_a(), opened_as, token, now=NOW)
    assert type(caught.value) is TokenInvalid
    assert f"not a{'n' if opened_as.value[0] in 'aeiou' else ''} {opened_as.value}" in str(
        caught.value
    )
    # Rewriting the visible tag does not help: purpose is in the key and associated data.
    _, rest = token.split(".", 1)
    relabelled = f"{sealing.TOKEN_TAGS[opened_as]}.{rest}"
    expect_invalid_only(ring_a(), opened_as, relabelled)


def test_token_purpose_of_junk_is_none() -> None:
    assert sealing.token_purpose("eyJhbGciOi.x.y") is None
    assert sealing.token_purpose("up1") is None
    assert sealing.token_purpose(42) is None  # type: ignore[arg-type]


# --- server binding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_server", "expected", "ok"),
    [
        (None, None, True),
        ("orthanc-a", "orthanc-a", True),
        (None, ANY_SERVER, True),
        ("orthanc-a", ANY_SERVER, True),
        ("orthanc-a", None, False),
        (None, "orthanc-a", False),
        ("orthanc-a", "orthanc-b", False),
        ("orthanc-a", "Orthanc-A", False),
    ],
)
def test_check_server(token_server: str | None, expected: Any, ok: bool) -> None:
    if ok:
        sealing.check_server(token_server, expected, kind="upload token")
        return
    with pytest.raises(TokenInvalid, match="upload token was issued for another Orthanc server"):
        sealing.check_server(token_server, expected, kind="upload token")


def test_new_token_ids_are_random_and_url_safe() -> None:
    ids = {sealing.new_token_id() for _ in range(50)}
    assert len(ids) == 50
    url_safe = set(string.ascii_letters + string.digits + "-_")
    assert all(len(i) == 22 and set(i) <= url_safe for i in ids)


def test_sealed_json_is_compact() -> None:
    # Tokens get pasted in curl commands: the sealed JSON has no whitespace padding.
    token = sealing.seal(ring_a(), Purpose.UPLOAD, {"a": [1, 2], "nbf": N}, now=NOW)
    payload = base64.urlsafe_b64decode(token.split(".")[2] + "===")
    plain = json.dumps({"a": [1, 2], "nbf": N}, separators=(",", ":")).encode()
    assert len(payload) == sealing.NONCE_BYTES + len(plain) + sealing.GCM_TAG_BYTES
