"""authsvc.config_parsers: the parsers that turn a setting's raw value into a typed one.

:mod:`authsvc.config` declares each setting with one of these. A raw value is text (from the
environment or a secret file) or a TOML value (from the configuration file); each parser takes
both, and raises ``ValueError`` with a short reason, which the loader turns into a one-line
:class:`~authsvc.errors.ConfigError` naming the key. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from authsvc.album_labels import validate_prefix
from authsvc.credentials.sealing import KeyRing
from authsvc.errors import ConfigError


def parse_str(value: Any) -> str:
    """Accept a string as it is (TOML strings and environment values alike)."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def parse_nonempty(value: Any) -> str:
    """Accept a string with something in it besides blanks; return it stripped."""
    text = parse_str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    """Return a parser of a decimal integer from ``minimum`` to ``maximum`` (not a boolean)."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(parse_str(value).strip(), 10)
            except ValueError:
                raise ValueError("expected an integer") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}")
        return number

    return parse


def parse_float(minimum: float = 0.0) -> Callable[[Any], float]:
    """Return a parser of a number of at least ``minimum`` (not a boolean)."""

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(value) if isinstance(value, int | float) else float(parse_str(value))
        except ValueError:
            raise ValueError("expected a number") from None
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: Any) -> bool:
    """Accept a TOML boolean or 1/0, true/false, yes/no, on/off in any case."""
    if isinstance(value, bool):
        return value
    text = parse_str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_choice(*choices: str) -> Callable[[Any], str]:
    """Return a parser of one of ``choices``, any case, returned lower case."""

    def parse(value: Any) -> str:
        text = parse_str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def parse_url(value: Any) -> str:
    """Accept an http(s) URL, returned without its trailing slash, or nothing."""
    text = parse_str(value).strip()
    if not text:
        return ""
    if not (text.startswith("http://") or text.startswith("https://")):
        raise ValueError("expected an http:// or https:// URL")
    return text.rstrip("/")


def parse_list(value: Any) -> tuple[str, ...]:
    """Accept a TOML list or a comma-separated string; blanks are dropped."""
    if isinstance(value, list | tuple):
        items = [parse_str(v) for v in value]
    else:
        items = parse_str(value).split(",")
    return tuple(item.strip() for item in items if item.strip())


def parse_json_list(value: Any) -> tuple[dict[str, Any], ...]:
    """Accept a list of tables (TOML) or of objects (JSON text, for the environment)."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("expected a JSON list of objects") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("expected a list of objects")
    return tuple(value)


def parse_database_url(value: Any) -> str:
    """Accept a SQLite or PostgreSQL URL, or nothing (the SQLite file in the data directory)."""
    text = parse_str(value).strip()
    if not text:
        return ""
    scheme = text.split(":", 1)[0]
    if scheme not in {"sqlite", "postgresql", "postgres", "postgresql+psycopg"}:
        raise ValueError("expected a sqlite:/// or postgresql:// URL")
    return text


def parse_label_prefix(value: Any) -> str:
    """Accept an album label prefix (the rule of :func:`~authsvc.album_labels.validate_prefix`)."""
    try:
        return validate_prefix(parse_str(value).strip())
    except ConfigError:
        raise ValueError(
            "expected 1 to 32 characters of a-z, 0-9, _ and -, starting with a letter"
        ) from None


def parse_bind(value: Any) -> str:
    """Accept the ``HOST:PORT`` or ``unix:PATH`` that gunicorn binds to."""
    text = parse_nonempty(value)
    if text.startswith("unix:"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT or unix:PATH")
    return text


def parse_service_key(value: Any) -> str:
    """Accept a service key long enough not to be guessed, or nothing (no service key)."""
    text = parse_str(value).strip()
    if text and (len(text) < 32 or not text.isascii() or not text.isprintable()):
        raise ValueError("must be at least 32 printable ASCII characters")
    return text


def parse_key_ring(value: Any) -> str:
    """Accept a key ring whose every key is well-formed; it is kept as text."""
    text = parse_str(value).strip()
    if text:
        try:
            KeyRing.from_text(text, setting="key ring")
        except ConfigError as exc:
            # The message names positions and key ids only, never key material.
            raise ValueError(str(exc)) from None
    return text
