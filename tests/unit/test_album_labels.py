"""Tests for authsvc.album_labels: Orthanc's label rule, prefix rule, generated labels."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from authsvc import album_labels
from authsvc.album_labels import is_album_label
from authsvc.album_labels import is_valid_label
from authsvc.album_labels import new_album_label
from authsvc.album_labels import validate_prefix
from authsvc.errors import ConfigError

pytestmark = pytest.mark.unit

# Written out by hand from Orthanc's rule rather than imported from the module under test.
ORTHANC_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
BASE32_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz234567")
PREFIX_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-")

valid_prefixes = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_lowercase),
    st.text(alphabet=sorted(PREFIX_CHARS), max_size=31),
)


def _orthanc_accepts(text: str) -> bool:
    """Independent restatement of Orthanc's IsValidLabel."""
    return 1 <= len(text) <= 64 and all(c in ORTHANC_LABEL_CHARS for c in text)


# --- is_valid_label --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["a", "A", "0", "_", "-", "label_a", "Album-2024", "x" * 64, "album-" + "q" * 26],
)
def test_valid_labels(text: str) -> None:
    assert is_valid_label(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * 65,
        "a.b",  # '.' was allowed during Orthanc 1.12 development, then removed
        "a b",
        "a/b",
        "a\n",  # a regex anchored with "$" would accept this
        "\na",
        "é",
        "a\x00",
        "*",
        "a,b",
        "ａ",  # fullwidth letter: str.isalnum() says yes, Orthanc says no
        "٣",  # Arabic-Indic digit: likewise
    ],
)
def test_invalid_labels(text: str) -> None:
    assert not is_valid_label(text)


@pytest.mark.parametrize("value", [None, 1, b"abc", ["abc"]])
def test_non_strings_are_not_labels(value: object) -> None:
    assert not is_valid_label(value)


@given(st.text(max_size=80))
def test_is_valid_label_agrees_with_orthanc_rule(text: str) -> None:
    assert is_valid_label(text) == _orthanc_accepts(text)


@given(st.text(alphabet=sorted(ORTHANC_LABEL_CHARS), min_size=1, max_size=64))
def test_every_string_of_the_orthanc_alphabet_is_valid(text: str) -> None:
    assert is_valid_label(text)


# --- validate_prefix -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["a", "album-", "album_", "proj-2024-", "x" * 32, "a-b_c9"])
def test_valid_prefixes_are_returned(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "x" * 33,
        "Album-",  # upper case: MySQL collations may fold case
        "-album",
        "_album",
        "9album",
        "album.",
        "album ",
        "album\n",
        "albüm",
        "a/b",
        "*",
    ],
)
def test_invalid_prefixes_raise_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="album label prefix"):
        validate_prefix(prefix)


@pytest.mark.parametrize("prefix", [None, 3, b"album-"])
def test_non_string_prefix_raises_config_error(prefix: object) -> None:
    with pytest.raises(ConfigError):
        validate_prefix(prefix)


def test_config_error_message_is_bounded() -> None:
    with pytest.raises(ConfigError) as info:
        validate_prefix("Z" * 10_000)
    assert len(str(info.value)) < 250


@given(valid_prefixes)
def test_generated_valid_prefixes_pass(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@given(st.text(max_size=40))
def test_prefix_rule(prefix: str) -> None:
    expected = (
        1 <= len(prefix) <= 32
        and prefix[0] in string.ascii_lowercase
        and all(c in PREFIX_CHARS for c in prefix)
    )
    if expected:
        assert validate_prefix(prefix) == prefix
    else:
        with pytest.raises(ConfigError):
            validate_prefix(prefix)


# --- new_album_label -------------------------------------------------------------------------


def test_default_prefix() -> None:
    label = new_album_label()
    assert label.startswith("album-")
    assert len(label) == len("album-") + 26


@given(valid_prefixes)
@settings(max_examples=200)
def test_generated_labels_are_valid_for_orthanc(prefix: str) -> None:
    label = new_album_label(prefix)
    assert _orthanc_accepts(label)
    assert label.startswith(prefix)
    random_part = label[len(prefix) :]
    assert len(random_part) == 26
    assert set(random_part) <= BASE32_LOWER
    assert is_album_label(label, prefix)


def test_longest_prefix_still_fits() -> None:
    label = new_album_label("p" * 32)
    assert len(label) == 58
    assert is_valid_label(label)


def test_labels_are_unique_over_many_draws() -> None:
    labels = {new_album_label("album-") for _ in range(20_000)}
    assert len(labels) == 20_000


def test_random_part_uses_all_128_bits() -> None:
    all_ones = new_album_label("a", random_bytes=lambda n: b"\xff" * n)
    all_zeros = new_album_label("a", random_bytes=lambda n: b"\x00" * n)
    # 128 bits = 25 full base32 digits (125 bits) + 3 bits in the 26th digit.
    assert all_ones == "a" + "7" * 25 + "4"
    assert all_zeros == "a" + "a" * 26


def test_random_source_is_asked_for_16_bytes() -> None:
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return bytes(range(n))

    new_album_label("album-", random_bytes=source)
    assert asked == [16]


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_distinct_randomness_gives_distinct_labels(a: bytes, b: bytes) -> None:
    label_a = new_album_label("x", random_bytes=lambda n: a)
    label_b = new_album_label("x", random_bytes=lambda n: b)
    assert (label_a == label_b) == (a == b)


@pytest.mark.parametrize("size", [0, 15, 17])
def test_short_or_long_random_source_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="random source"):
        new_album_label("album-", random_bytes=lambda n: b"\x01" * size)


def test_invalid_prefix_is_refused_before_drawing_randomness() -> None:
    def source(n: int) -> bytes:
        raise AssertionError("randomness drawn for an invalid prefix")

    with pytest.raises(ConfigError):
        new_album_label("Bad Prefix", random_bytes=source)


# --- is_album_label --------------------------------------------------------------------------


def test_is_album_label_recognises_generated_labels() -> None:
    label = new_album_label("proj-")
    assert is_album_label(label, "proj-")
    assert not is_album_label(label, "album-")


@pytest.mark.parametrize(
    "text",
    [
        "album-",
        "album-" + "a" * 25,
        "album-" + "a" * 27,
        "album-" + "A" * 26,  # upper case is not what we generate
        "album-" + "1" * 26,  # '1' is not in the base32 alphabet
        "other-" + "a" * 26,
        "label_a",
        "*",
    ],
)
def test_is_album_label_rejects_other_shapes(text: str) -> None:
    assert not is_album_label(text, "album-")


def test_is_album_label_rejects_non_strings() -> None:
    assert not is_album_label(None)
    assert not is_album_label(42)


def test_public_constants() -> None:
    assert album_labels.LABEL_MAX_LENGTH == 64
    assert album_labels.RANDOM_BITS >= 80
    assert album_labels.PREFIX_MAX_LENGTH + album_labels.RANDOM_LENGTH <= 64
