"""authsvc.logs: logging set-up — request ids on every line, text or JSON lines, no secrets.

The request id lives in a context variable set by the request hooks in ``authsvc.views``, so
domain code can log without importing Flask. :class:`RedactingFilter` is the last line of
defence: code must not log secrets in the first place, but if a token, API key, password or
Authorization header value slips into a message, it is masked before any handler sees it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "authsvc_request_id", default=None
)

# What a secret looks like on the wire. Order matters: the header forms first.
_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"\bask_[A-Za-z0-9_-]{8,}"), "[redacted-api-key]"),
    (re.compile(r"\b(v\d+\.)[A-Za-z0-9_-]{24,}"), r"\1[redacted-token]"),
    # Sealed tokens (authsvc/credentials/sealing.py: "<up1|ar1|sh1>.<key id>.<sealed>"): keep the
    # kind and
    # key id, which help an operator and open nothing, and mask the sealed part.
    (
        re.compile(r"\b((?:up|ar|sh)\d+\.[A-Za-z0-9_-]{1,32}\.)[A-Za-z0-9_-]{16,}"),
        r"\1[redacted-token]",
    ),
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|api[-_]?key|authorization)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"'&,;]+"
        ),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@/\s]+@"), r"\1[redacted]@"),
]


def redact(text: str) -> str:
    """Mask anything in ``text`` that looks like a credential."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    """Bind the current request id (returns a token to reset it)."""
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    """Restore the request id that was current before :func:`set_request_id`."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """Return the id of the request being served, if any."""
    return _request_id.get()


class RedactingFilter(logging.Filter):
    """Attach the request id to every record and mask secrets in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks can quote values (e.g. a URL with credentials): render and redact now.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def configure(level: str, fmt: str, stream: Any = None) -> None:
    """Install authsvc's handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_authsvc", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._authsvc = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Werkzeug's request log repeats the query string, which may carry a token.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
