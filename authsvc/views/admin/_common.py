"""What the admin pages share: the signed-in caller, the policy question, form errors in words."""

from __future__ import annotations

import re

from flask import Response
from flask import flash
from flask import request

from authsvc import albums
from authsvc.errors import AuthsvcError
from authsvc.errors import NotFound
from authsvc.policy import NO_TARGET
from authsvc.policy import Action
from authsvc.policy import AlbumRole
from authsvc.policy import Target
from authsvc.policy import decide
from authsvc.views.admin._blueprint import current_actor
from authsvc.views.admin._blueprint import signed_in_user
from authsvc.views.auth import profile_for


def page_caller() -> albums.Caller:
    """Return the signed-in user as the album use-cases see them."""
    identity = signed_in_user()
    profile = profile_for(identity, with_albums=False)
    return albums.caller_for(identity, current_actor(), profile.authorized_labels)


_FIELD_WORDS = {
    "name": "The name",
    "description": "The description",
    "principal": "The e-mail address, username or group",
    "kind": "The kind of invitation",
    "role": "The role",
    "studies": "The list of studies",
    "note": "The note",
    "lifetime_seconds": "The validity",
    "lifetime": "The validity",
    "expires_in_days": "The validity",
    "roles": "The roles",
}


def form_error(exc: AuthsvcError) -> None:
    """Show a correctable error (bad field, conflict) on the page, in plain words."""
    problems: list[tuple[str, str]] = []
    details = exc.details
    if isinstance(details, dict):
        problems = [(str(k), str(v)) for k, v in details.items() if isinstance(v, str)]
    elif isinstance(details, list):
        problems = [
            (str(d.get("field", "")), str(d.get("message", "")))
            for d in details
            if isinstance(d, dict)
        ]
    sentences = [
        f"{_FIELD_WORDS.get(field.split('[')[0], field.replace('_', ' ').capitalize())} "
        f"{message.rstrip('.')}."
        for field, message in problems
        # One-word details ("range", "type") are codes for programs; the message says it.
        if " " in message
    ]
    flash(" ".join(sentences) if sentences else exc.message, "error")


def allowed(
    caller: albums.Caller, role: AlbumRole | None, action: Action, target: Target = NO_TARGET
) -> bool:
    """Ask the policy whether to show a control (the server checks again when it is used)."""
    return bool(decide(caller.actor, action, album_role=role, target=target))


def dicom_date(value: object) -> str:
    """Show a DICOM date (YYYYMMDD) as YYYY-MM-DD."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else text


def person_name(value: object) -> str:
    """Show a DICOM person name (Family^Given) the way people write it."""
    parts = [p for p in str(value or "").split("^") if p]
    return ", ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")


def form_int(name: str) -> int:
    try:
        return max(0, int(request.form.get(name, "0")))
    except ValueError:
        return 0


def shown_once(html: str) -> Response:
    """A page holding a secret: never cached, never stored by the browser."""
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def require_revocable(action: Action, *, own: bool, missing: str) -> None:
    """Ask the policy whether the signed-in user may revoke this credential; 404 if not.

    A refusal reads as "no such credential" (``missing``): ids of other people's credentials
    cannot be probed.
    """
    if not decide(current_actor(), action, target=Target(token_issued_by_actor=own)):
        raise NotFound(missing)
