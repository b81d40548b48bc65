"""The admin pages: server-rendered HTML behind an OIDC sign-in, for people, not programs.

Sign-in is the OIDC authorization code flow with PKCE (S256) through Authlib's Flask client,
against the configured provider, with the confidential client ``admin_client_id``. At the
callback Authlib checks ``state``, the PKCE verifier and the ID token (signature, issuer,
audience, nonce); the access token is then verified by the same
:class:`~authsvc.identity.KeycloakVerifier` as every API call, which builds the
:class:`~authsvc.identity.Identity` through ``claims_to_identity``. The session is server-side
(:mod:`authsvc.admin_sessions`): the cookie carries only a random id, so signing out — which
deletes the row and then ends the provider's session with ``id_token_hint`` — ends access.

Cookies: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` unless ``admin_cookie_secure`` is false.
CSRF: every session holds a random token; every non-GET request under ``/admin`` must send it
back (hidden form field ``csrf_token`` or header ``X-CSRF-Token``), checked in one
``before_request`` before anything else runs. A request from another origin fails that check.

Decisions come from :mod:`authsvc.policy` (through the album use-cases, which call it); the
pages only hide what the policy would refuse, and the server refuses it anyway.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hmac
import io
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from typing import ParamSpec
from typing import TypeVar
from urllib.parse import quote
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from joserfc.errors import JoseError
from werkzeug.wrappers import Response as WerkzeugResponse

from authsvc import admin_sessions
from authsvc import album_access
from authsvc import albums
from authsvc import api_key_records
from authsvc import audit
from authsvc import makers
from authsvc import upload_token_records
from authsvc.authn import actor_for
from authsvc.authn import profile_for
from authsvc.config import Settings
from authsvc.errors import AuthsvcError
from authsvc.errors import Conflict
from authsvc.errors import DependencyUnavailable
from authsvc.errors import Forbidden
from authsvc.errors import IdentityProviderUnavailable
from authsvc.errors import NotFound
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.errors import ValidationFailed
from authsvc.extensions import db
from authsvc.identity import Identity
from authsvc.models import Album
from authsvc.models import ApiKey
from authsvc.models import KnownUser
from authsvc.policy import NO_TARGET
from authsvc.policy import Action
from authsvc.policy import Actor
from authsvc.policy import AlbumRole
from authsvc.policy import Target
from authsvc.policy import decide
from authsvc.services import services
from authsvc.views import ops

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")

P = ParamSpec("P")
R = TypeVar("R")

OAUTH_EXTENSION = "authsvc_admin_oauth"
IDP_CLIENT = "idp"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Keys of the (signed, HttpOnly) cookie session; nothing secret beyond the random ids.
_SID = "admin_sid"
_CSRF = "admin_csrf"
_NEXT = "admin_next"
_SEEN = "admin_seen"  # Unix time of the session's last request (the idle timeout)


def init_app(app: Flask, settings: Settings) -> None:
    """Set the cookie flags, register the OIDC client (when configured) and the blueprint."""
    app.config.update(
        SESSION_COOKIE_NAME="authsvc_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.admin_cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(seconds=settings.admin_session_lifetime),
    )
    oauth = OAuth(app)
    client_id = settings.admin_client_id or settings.oidc_client_id
    if settings.oidc_issuer and client_id and settings.admin_client_secret:
        oauth.register(
            IDP_CLIENT,
            client_id=client_id,
            client_secret=settings.admin_client_secret,
            server_metadata_url=settings.oidc_discovery_url
            or settings.oidc_issuer + "/.well-known/openid-configuration",
            client_kwargs={
                "scope": "openid profile email",
                "code_challenge_method": "S256",
                "default_timeout": settings.oidc_timeout,
            },
        )
    app.extensions[OAUTH_EXTENSION] = oauth
    app.register_blueprint(bp)


def _idp() -> Any:
    """Return the registered OIDC client, or explain in plain words that there is none."""
    oauth: OAuth = current_app.extensions[OAUTH_EXTENSION]
    client = oauth.create_client(IDP_CLIENT)
    if client is None:
        raise DependencyUnavailable(
            "Sign-in is not set up on this server: the administrator must configure the "
            "identity provider (oidc_issuer) and the admin pages' client secret."
        )
    return client


# --- per-request: session, CSRF, the signed-in user --------------------------------------------


def csrf_token() -> str:
    """Return this browser session's CSRF token, creating it on first use."""
    token = session.get(_CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_CSRF] = token
    return token


@bp.before_request
def check_csrf() -> None:
    """Refuse any state-changing request that does not carry this session's CSRF token."""
    if request.method in _SAFE_METHODS:
        return
    expected = session.get(_CSRF)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if (
        not isinstance(expected, str)
        or not expected
        or not hmac.compare_digest(expected.encode(), sent.encode())
    ):
        log.warning(
            "admin: refused a %s to %s without a valid CSRF token", request.method, request.path
        )
        raise Forbidden(
            "This form has expired or did not come from this site. "
            "Go back, reload the page and try again."
        )


#: Sent with every admin page: no framing (clickjacking of the forms), no MIME sniffing, no
#: page URL to other sites, and nothing kept in shared or browser caches (pages show patients).
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@bp.after_request
def security_headers(response: WerkzeugResponse) -> WerkzeugResponse:
    """Add :data:`SECURITY_HEADERS` to every admin response (error pages included)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.before_request
def load_user() -> None:
    """Find who is signed in (if anybody) for this request; end a sign-in left idle too long."""
    signed_in = admin_sessions.load_session(session.get(_SID))
    if signed_in is not None:
        now = int(time.time())
        idle_limit = services().settings.admin_session_idle_timeout
        seen = session.get(_SEEN)
        if idle_limit and isinstance(seen, int) and now - seen > idle_limit:
            # An unattended workstation: the row goes, as at sign-out (every worker, at once).
            admin_sessions.end_session(session.get(_SID))
            session.pop(_SID, None)
            signed_in = None
        else:
            session[_SEEN] = now
    g.admin_session = signed_in
    g.admin_identity = signed_in.identity if signed_in else None


def current_user() -> Identity | None:
    """Return the signed-in identity, or None."""
    identity: Identity | None = g.get("admin_identity")
    return identity


def current_actor() -> Actor:
    """Return the policy actor of the signed-in user (global rights from the roles config)."""
    if "admin_actor" not in g:
        identity = current_user()
        if identity is None:
            raise Forbidden("Please sign in first.")
        g.admin_actor = actor_for(identity)
    actor: Actor = g.admin_actor
    return actor


def signed_in(view: Callable[P, R]) -> Callable[P, R | WerkzeugResponse]:
    """Send visitors who are not signed in to the sign-in, then back to this page."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R | WerkzeugResponse:
        if current_user() is None:
            if request.method == "GET":
                return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
            raise Forbidden("Your sign-in has ended. Sign in again, then repeat what you did.")
        return view(*args, **kwargs)

    return wrapped


def admin_only(view: Callable[P, R]) -> Callable[P, R | WerkzeugResponse]:
    """Pages for global administrators only; others get a plain "not allowed" page."""

    @functools.wraps(view)
    @signed_in
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        if not current_actor().is_global_admin:
            raise Forbidden("This page is for administrators.")
        return view(*args, **kwargs)

    return wrapped


@bp.app_context_processor
def template_globals() -> dict[str, Any]:
    """What every page (and the error page) needs: the user, the CSRF token, the menu."""
    identity = g.get("admin_identity")
    is_admin = False
    if identity is not None:
        try:
            is_admin = current_actor().is_global_admin
        except Exception:  # noqa: BLE001 - the menu must never break a page (error pages too)
            is_admin = False
    return {
        "user": identity,
        "is_admin": is_admin,
        "csrf_token": csrf_token if request.path.startswith("/admin") else None,
    }


@bp.errorhandler(OrthancUnavailable)
@bp.errorhandler(OrthancError)
def orthanc_trouble(exc: AuthsvcError) -> Any:
    """Say in plain words that the image archive is the problem (its message is technical)."""
    from authsvc.views.errors import render_error

    log.warning("admin: Orthanc trouble on %s: %s", request.path, exc.message)
    return render_error(
        503,
        exc.code,
        "The image archive (Orthanc) is not answering right now, so this could not be done. "
        "Try again in a minute; what was already saved is kept.",
    )


def _safe_next(value: str | None) -> str:
    """Return a local /admin path to go back to after sign-in; anything else: the start page."""
    if not value:
        return url_for("admin.index")
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or "\\" in value:
        return url_for("admin.index")
    # A CR/LF (or any control character) cannot go into a Location header: Werkzeug refuses it
    # with a 500. Dot segments would leave /admin once the browser resolves them.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or any(
        segment in (".", "..") for segment in parts.path.split("/")
    ):
        return url_for("admin.index")
    return value


# --- sign-in and sign-out ----------------------------------------------------------------------


@bp.get("/login")
def login() -> WerkzeugResponse:
    """Start the sign-in at the identity provider (authorization code + PKCE S256)."""
    target = _safe_next(request.args.get("next"))
    if current_user() is not None:
        return redirect(target)
    client = _idp()
    session[_NEXT] = target
    try:
        return client.authorize_redirect(url_for("admin.callback", _external=True))  # type: ignore[no-any-return]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise IdentityProviderUnavailable(
            "The sign-in service cannot be reached right now. Try again in a minute."
        ) from exc


@bp.get("/callback")
def callback() -> WerkzeugResponse:
    """Finish the sign-in: check the provider's answer, verify the tokens, open a session."""
    client = _idp()
    try:
        token = client.authorize_access_token()
    except requests.RequestException as exc:
        raise IdentityProviderUnavailable(
            "The sign-in service cannot be reached right now. Try again in a minute."
        ) from exc
    except (AuthlibBaseError, JoseError, ValueError, KeyError, TypeError) as exc:
        log.warning("admin: sign-in callback refused (%s)", type(exc).__name__)
        return _sign_in_failed()
    verifier = services().verifier
    access_token = token.get("access_token") if isinstance(token, dict) else None
    if verifier is None or not isinstance(access_token, str):
        return _sign_in_failed()
    try:
        identity = verifier.verify(access_token)
    except IdentityProviderUnavailable:
        raise
    except AuthsvcError as exc:
        log.warning("admin: access token from the sign-in refused (%s)", exc.code)
        return _sign_in_failed()
    target = _safe_next(session.get(_NEXT))
    id_token = token.get("id_token") if isinstance(token.get("id_token"), str) else None
    settings = services().settings
    _bind_invitations(identity)
    # A fresh cookie session on sign-in: nothing from before (fixation) survives it.
    session.clear()
    session.permanent = True
    session[_SID] = admin_sessions.start_session(
        identity, id_token, settings.admin_session_lifetime
    )
    session[_CSRF] = secrets.token_urlsafe(32)
    session[_SEEN] = int(time.time())
    log.info("admin: %s signed in", identity.username or identity.subject)
    return redirect(target)


def _bind_invitations(identity: Identity) -> None:
    """Turn e-mail invitations of this (verified) address into memberships."""
    if not identity.email or not identity.email_verified:
        return
    try:
        from authsvc import albums
    except ImportError:  # pragma: no cover - the albums feature is part of the package
        return
    albums.bind_invitations(identity.subject, identity.email)


def _sign_in_failed() -> Response:
    """The page shown when the provider's answer cannot be trusted or has expired (400)."""
    session.pop(_SID, None)
    return Response(render_template("admin/sign_in_failed.html"), 400, mimetype="text/html")


@bp.post("/logout")
def logout() -> WerkzeugResponse:
    """Sign out here (the session row is deleted) and at the identity provider."""
    id_token = admin_sessions.end_session(session.get(_SID))
    session.clear()
    signed_out = url_for("admin.signed_out", _external=True)
    oauth: OAuth = current_app.extensions[OAUTH_EXTENSION]
    client = oauth.create_client(IDP_CLIENT)
    if client is None or id_token is None:
        return redirect(signed_out)
    try:
        end_session = client.load_server_metadata().get("end_session_endpoint")
    except (requests.RequestException, ValueError):
        end_session = None
    if not end_session:
        return redirect(signed_out)
    result = client.create_logout_url(post_logout_redirect_uri=signed_out, id_token_hint=id_token)
    return redirect(result["url"])


@bp.get("/signed-out")
def signed_out() -> str:
    """Confirm the sign-out."""
    return render_template("admin/signed_out.html")


# --- pages -------------------------------------------------------------------------------------


@bp.get("/")
@signed_in
def index() -> WerkzeugResponse:
    """The start page is the list of albums."""
    return redirect(url_for("admin.albums"))


@bp.get("/status")
@admin_only
def status() -> str:
    """Database, Orthanc servers and identity provider, as /readyz checks them."""
    checks = ops.dependency_checks()
    return render_template(
        "admin/status.html", checks=checks, ready=all(c["ok"] for c in checks.values())
    )


# --- audit trail -------------------------------------------------------------------------------

AUDIT_PAGE_SIZE = 100
AUDIT_CSV_LIMIT = 50_000


def _audit_filters() -> tuple[audit.EventFilter, list[str]]:
    """Read the audit filters from the query string; bad dates are reported, not fatal."""
    problems: list[str] = []

    def day(name: str, *, end: bool) -> dt.datetime | None:
        text = (request.args.get(name) or "").strip()
        if not text:
            return None
        try:
            date = dt.date.fromisoformat(text)
        except ValueError:
            problems.append(f"“{text}” is not a date; use the date picker or YYYY-MM-DD.")
            return None
        start = dt.datetime.combine(date, dt.time.min, tzinfo=dt.UTC)
        return start + dt.timedelta(days=1) if end else start

    actor = (request.args.get("actor") or "").strip()[:200]
    # People are filtered by username: the trail names them by their (opaque) subject id.
    person = admin_sessions.find_user(actor) if actor else None
    filters = audit.EventFilter(
        actor=person.subject if person is not None else actor,
        subject=(request.args.get("album") or "").strip()[:200],
        action=(request.args.get("action") or "").strip()[:200],
        since=day("from", end=False),
        until=day("to", end=True),
    )
    return filters, problems


@bp.get("/audit")
@admin_only
def audit_trail() -> str:
    """The audit trail, newest first, with filters and a CSV export."""
    filters, problems = _audit_filters()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    events, has_more = audit.search(
        filters, offset=(page - 1) * AUDIT_PAGE_SIZE, limit=AUDIT_PAGE_SIZE
    )
    subjects = {
        e.actor.split(":", 1)[1] for e in events if e.actor.startswith(("user:", "apikey-owner:"))
    }
    album_ids = {e.subject[6:] for e in events if e.subject and e.subject.startswith("album:")}
    album_names = {
        row.id: row.name
        for row in db.session.execute(
            sa.select(Album.id, Album.name).where(Album.id.in_(sorted(album_ids)))
        )
    }
    return render_template(
        "admin/audit.html",
        people=admin_sessions.known_users(sorted(subjects)),
        album_names=album_names,
        events=events,
        filters=filters,
        args=request.args,
        problems=problems,
        page=page,
        has_more=has_more,
        actions=sorted(a.value for a in audit.AuditAction),
        describe=audit.describe_detail,
    )


@bp.get("/audit.csv")
@admin_only
def audit_csv() -> Response:
    """The filtered audit trail as a CSV file (spreadsheet-safe)."""
    filters, _problems = _audit_filters()
    events, _more = audit.search(filters, offset=0, limit=AUDIT_CSV_LIMIT)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time (UTC)", "action", "actor", "subject", "outcome", "request id", "detail"])
    for event in events:
        writer.writerow(
            [
                _csv_cell(event.occurred_at.strftime("%Y-%m-%d %H:%M:%S")),
                _csv_cell(event.action),
                _csv_cell(event.actor),
                _csv_cell(event.subject or ""),
                _csv_cell(event.outcome),
                _csv_cell(event.request_id or ""),
                _csv_cell(audit.describe_detail(event.detail)),
            ]
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="authsvc-audit-{stamp}.csv"'},
    )


def _csv_cell(value: str) -> str:
    """Neutralise spreadsheet formulas: a cell starting with = + - @ is prefixed with '."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


# --- albums ------------------------------------------------------------------------------------

STUDIES_PAGE_SIZE = 50
#: Studies added per request of a bulk add; the page shows progress between batches.
ADD_BATCH_SIZE = 50
MAX_REFS_PER_ADD = 5000
_ORTHANC_ID = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}")
_STUDY_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_ROLE_WORDS = {
    AlbumRole.OWNER: "Owner — everything, including renaming and deleting the album",
    AlbumRole.MANAGER: "Manager — add and remove studies and people, share",
    AlbumRole.CONTRIBUTOR: "Contributor — add and upload studies",
    AlbumRole.VIEWER: "Viewer — look at the studies",
}
_EXPIRY_CHOICES = (
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "1 week"),
    (30 * 86_400, "30 days"),
)


def _caller() -> albums.Caller:
    """Return the signed-in user as the album use-cases see them."""
    identity = current_user()
    if identity is None:
        raise Forbidden("Please sign in first.")
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


def _form_error(exc: AuthsvcError) -> None:
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


def _can(
    caller: albums.Caller, role: AlbumRole | None, action: Action, target: Target = NO_TARGET
) -> bool:
    """Ask the policy whether to show a control (the server checks again when it is used)."""
    return bool(decide(caller.actor, action, album_role=role, target=target))


@bp.get("/albums", endpoint="albums")
@signed_in
def albums_page() -> str:
    """My albums, with study and member counts, and the form to create one."""
    caller = _caller()
    everything = request.args.get("all") == "1" and caller.actor.is_global_admin
    page = albums.list_albums(caller, offset=0, limit=500, everything=everything)
    return render_template(
        "admin/albums.html",
        page=page,
        everything=everything,
        can_create=_can(caller, None, Action.ALBUM_CREATE),
    )


@bp.post("/albums")
@signed_in
def create_album() -> WerkzeugResponse:
    """Create an album; the creator becomes its owner."""
    try:
        view = albums.create_album(
            _caller(), request.form.get("name", ""), request.form.get("description", "")
        )
    except (ValidationFailed, Conflict) as exc:
        _form_error(exc)
        return redirect(url_for("admin.albums"))
    flash(f"Album “{view.album.name}” created. Add studies and invite colleagues below.", "success")
    return redirect(url_for("admin.album", album_id=view.album.id))


def _member_rows(
    caller: albums.Caller, role: AlbumRole | None, members: list[Any]
) -> list[dict[str, Any]]:
    """Describe each member for people, with the changes the policy would allow."""
    people = admin_sessions.known_users(
        [m.principal for m in members if m.principal_kind == "user"]
    )
    owners = sum(1 for m in members if m.role == "owner" and m.principal_kind != "email")
    rows = []
    for member in members:
        member_role = AlbumRole(member.role)
        if member.principal_kind == "user":
            person = people.get(member.principal)
            if person is not None:
                who = f"{person.name} ({person.username})" if person.name else person.username
            else:
                who = "A colleague who has not opened these pages yet"
            kind = "Person"
        elif member.principal_kind == "group":
            who, kind = member.principal, "Group"
        else:
            who, kind = member.principal, "Invitation by e-mail (waiting for first sign-in)"
        owner_count = owners + (
            1 if member.principal_kind == "email" and member_role is AlbumRole.OWNER else 0
        )
        choices = [
            r
            for r in AlbumRole
            if r is member_role
            or _can(
                caller,
                role,
                Action.ALBUM_MEMBER_ROLE_CHANGE,
                Target(owner_count=owners, member_role=member_role, new_role=r),
            )
        ]
        rows.append(
            {
                "id": member.id,
                "who": who,
                "kind": kind,
                "role": member_role,
                "is_me": member.principal_kind == "user" and member.principal == caller.subject,
                "role_choices": choices if len(choices) > 1 else [],
                "can_remove": _can(
                    caller,
                    role,
                    Action.ALBUM_MEMBER_REMOVE,
                    Target(owner_count=owner_count, member_role=member_role),
                ),
            }
        )
    return rows


def _viewer_links(study: dict[str, Any], album_id: str) -> list[tuple[str, str]]:
    """Links that open a study in the configured viewers.

    With ``public_ohif_root`` set, OHIF comes first (unless a configured viewer is already
    named OHIF): ``<root>viewer?StudyInstanceUIDs=<uid>&album=<album id>``. The OHIF
    deployment's app-config.js (config/ohif/app-config.js) turns ``album`` into the album's
    DICOMweb root, and OHIF signs the user in with Keycloak itself: no credential in the link.
    """
    uid = study.get("study_instance_uid") or ""
    settings = services().settings
    links = []
    ohif_root = settings.public_ohif_root
    if ohif_root and uid and not any(v.get("name") == "OHIF" for v in settings.study_viewers):
        root = ohif_root if ohif_root.endswith("/") else ohif_root + "/"
        links.append(
            (
                "OHIF",
                f"{root}viewer?StudyInstanceUIDs={quote(uid, safe='')}"
                f"&album={quote(album_id, safe='')}",
            )
        )
    for viewer in settings.study_viewers:
        name, url = viewer.get("name"), viewer.get("url")
        if not isinstance(name, str) or not isinstance(url, str) or not uid:
            continue
        links.append(
            (
                name,
                url.replace("{StudyInstanceUID}", quote(uid, safe="")).replace(
                    "{OrthancStudyId}", quote(str(study.get("id") or ""), safe="")
                ),
            )
        )
    return links


def _dicom_date(value: object) -> str:
    """Show a DICOM date (YYYYMMDD) as YYYY-MM-DD."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else text


def _person_name(value: object) -> str:
    """Show a DICOM person name (Family^Given) the way people write it."""
    parts = [p for p in str(value or "").split("^") if p]
    return ", ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")


@bp.get("/albums/<album_id>")
@signed_in
def album(album_id: str) -> str:
    """One album: its studies, its members, and what the user may do with them."""
    caller = _caller()
    view = albums.get_album(caller, album_id)
    role = view.role if view.role is not None else albums.album_role(caller, album_id)
    try:
        page_number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page_number = 1
    studies_error = None
    studies: albums.Page | None = None
    try:
        studies = albums.list_studies(
            caller,
            album_id,
            offset=(page_number - 1) * STUDIES_PAGE_SIZE,
            limit=STUDIES_PAGE_SIZE,
        )
    except DependencyUnavailable:
        studies_error = (
            "The image archive (Orthanc) is not answering, so the studies cannot "
            "be listed right now. Try again in a minute."
        )
    members = albums.list_members(caller, album_id, limit=500)
    member_rows = _member_rows(caller, role, members.items)
    own = next((m for m in member_rows if m["is_me"]), None)
    owners = sum(1 for m in members.items if m.role == "owner" and m.principal_kind != "email")
    can = {
        "edit": _can(caller, role, Action.ALBUM_EDIT),
        "delete": _can(caller, role, Action.ALBUM_DELETE),
        "add": _can(caller, role, Action.ALBUM_STUDY_ADD, Target(study_visible_to_actor=True)),
        "remove": _can(caller, role, Action.ALBUM_STUDY_REMOVE),
        "invite": _can(caller, role, Action.ALBUM_MEMBER_INVITE, Target(new_role=AlbumRole.VIEWER)),
        "upload": _can(caller, role, Action.ALBUM_UPLOAD_TOKEN_CREATE),
        "upload_files": _can(caller, role, Action.ALBUM_UPLOAD),
        "share": _can(caller, role, Action.ALBUM_READ_TOKEN_CREATE),
        "leave": own is not None
        and _can(caller, own["role"], Action.ALBUM_LEAVE, Target(owner_count=owners)),
    }
    invite_roles = [
        r for r in AlbumRole if _can(caller, role, Action.ALBUM_MEMBER_INVITE, Target(new_role=r))
    ]
    rows = []
    for study in studies.items if studies is not None else []:
        rows.append(
            {
                **study,
                "date": _dicom_date(study.get("study_date")),
                "patient": _person_name(study.get("patient_name")),
                "viewers": _viewer_links(study, album_id),
            }
        )
    return render_template(
        "admin/album.html",
        view=view,
        role=role,
        role_words=_ROLE_WORDS,
        studies=rows,
        total_studies=studies.total if studies is not None else None,
        studies_error=studies_error,
        page=page_number,
        has_more=studies is not None and page_number * STUDIES_PAGE_SIZE < studies.total,
        members=member_rows,
        can=can,
        invite_roles=invite_roles,
    )


@bp.post("/albums/<album_id>/edit")
@signed_in
def edit_album(album_id: str) -> WerkzeugResponse:
    """Rename the album or change its description (owners)."""
    try:
        albums.update_album(
            _caller(),
            album_id,
            name=request.form.get("name", ""),
            description=request.form.get("description", ""),
        )
        flash("The album's name and description are saved.", "success")
    except (ValidationFailed, Conflict) as exc:
        _form_error(exc)
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/delete")
@signed_in
def delete_album(album_id: str) -> WerkzeugResponse:
    """Delete the album (owners); the studies stay in the archive."""
    caller = _caller()
    name = albums.get_album(caller, album_id).album.name
    if request.form.get("confirm") != "yes":
        flash("Tick the box to confirm that the album should be deleted.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    albums.delete_album(caller, album_id)
    flash(f"Album “{name}” deleted. Its studies are still in the archive.", "success")
    return redirect(url_for("admin.albums"))


def _split_refs(text: str) -> list[str]:
    """Split pasted study UIDs (lines, spaces, commas or semicolons), keeping their order."""
    return list(dict.fromkeys(t for t in re.split(r"[\s,;]+", text) if t))


def _looks_like_study(ref: str) -> bool:
    return bool(_ORTHANC_ID.fullmatch(ref) or (_STUDY_UID.fullmatch(ref) and len(ref) <= 64))


@bp.post("/albums/<album_id>/studies/add")
@signed_in
def add_studies(album_id: str) -> WerkzeugResponse | str:
    """Add studies by UID, in batches; between batches the page shows progress and continues.

    The remaining references and the running totals travel in the progress page's form, so
    nothing is kept on the server between batches and a lost page loses nothing done so far.
    """
    caller = _caller()
    refs = request.form.getlist("study") + _split_refs(request.form.get("uids", ""))
    refs = list(dict.fromkeys(r.strip() for r in refs if r.strip()))
    if not refs:
        flash("Paste at least one Study Instance UID, or pick studies from the list.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    if len(refs) > MAX_REFS_PER_ADD:
        flash(f"At most {MAX_REFS_PER_ADD} studies can be added at once.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    totals = {k: _form_int(k) for k in ("added", "present", "missing", "done", "total")}
    totals["total"] = totals["total"] or len(refs)
    missing = [m for m in request.form.get("missing_list", "").split() if m][:200]
    batch, rest = refs[:ADD_BATCH_SIZE], refs[ADD_BATCH_SIZE:]
    valid = [r for r in batch if _looks_like_study(r)]
    for ref in batch:
        if ref not in valid:
            totals["missing"] += 1
            missing.append(ref)
    if valid:
        for result in albums.add_studies(caller, album_id, valid):
            if result.status == "added":
                totals["added"] += 1
            elif result.status == "already-present":
                totals["present"] += 1
            else:
                totals["missing"] += 1
                missing.append(result.ref)
    totals["done"] += len(batch)
    if rest:
        return render_template(
            "admin/progress.html",
            album_id=album_id,
            rest=rest,
            totals=totals,
            missing=missing[:200],
            percent=int(100 * totals["done"] / max(1, totals["total"])),
        )
    parts = [f"{totals['added']} stud{'y' if totals['added'] == 1 else 'ies'} added"]
    if totals["present"]:
        parts.append(f"{totals['present']} already in the album")
    if totals["missing"]:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        parts.append(f"{totals['missing']} not found (or not visible to you): {shown}")
    flash("Done: " + "; ".join(parts) + ".", "success" if not totals["missing"] else "info")
    return redirect(url_for("admin.album", album_id=album_id))


def _form_int(name: str) -> int:
    try:
        return max(0, int(request.form.get(name, "0")))
    except ValueError:
        return 0


@bp.post("/albums/<album_id>/studies/remove")
@signed_in
def remove_studies(album_id: str) -> WerkzeugResponse:
    """Take the ticked studies out of the album (managers); they stay in the archive."""
    refs = [r for r in request.form.getlist("study") if r][: albums.MAX_BULK]
    if not refs:
        flash("Tick the studies to take out of the album first.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    results = albums.remove_studies(_caller(), album_id, refs)
    removed = sum(1 for r in results if r.status == "removed")
    flash(
        f"{removed} stud{'y' if removed == 1 else 'ies'} taken out of the album "
        "(they are still in the archive).",
        "success",
    )
    return redirect(url_for("admin.album", album_id=album_id))


@bp.get("/albums/<album_id>/pick")
@signed_in
def pick_studies(album_id: str) -> str:
    """Search the studies the user can already see, and tick some to add them."""
    caller = _caller()
    view = albums.get_album(caller, album_id)
    role = albums.album_role(caller, album_id)
    if not _can(caller, role, Action.ALBUM_STUDY_ADD, Target(study_visible_to_actor=True)):
        raise Forbidden("Your role in this album does not allow adding studies.")
    text = (request.args.get("q") or "").strip()[:64]
    found: list[dict[str, Any]] = []
    error = None
    if text:
        try:
            found = _visible_studies(caller, view.album, text)
        except DependencyUnavailable:
            error = "The image archive (Orthanc) is not answering. Try again in a minute."
    return render_template(
        "admin/pick.html", view=view, q=text, found=found, error=error, limit=PICK_LIMIT
    )


PICK_LIMIT = 100


def _visible_studies(caller: albums.Caller, album_row: Any, text: str) -> list[dict[str, Any]]:
    """Studies matching the text (patient name or id, description, UID) the caller can see."""
    client = services().orthanc.get(album_row.server_id or None)
    if client is None:
        raise DependencyUnavailable("This album's Orthanc server is not configured.")
    member_labels, _ = albums.album_grants(caller.subject, caller.groups, caller.email, bind=False)
    sees_everything = (
        caller.actor.is_global_admin
        or caller.actor.sees_all_studies
        or ("*" in caller.labels and not caller.actor.permissions.isdisjoint({"all", "view"}))
    )
    labels: list[str] = []
    if not sees_everything:
        labels = sorted(set(member_labels) | (set(caller.labels) - {"*"}))
        if not labels:
            return []
    pattern = "*" + re.sub(r"[*?\\]", "", text) + "*"
    queries = [{"PatientName": pattern}, {"PatientID": pattern}, {"StudyDescription": pattern}]
    if _STUDY_UID.fullmatch(text):
        queries.append({"StudyInstanceUID": text})
    seen: dict[str, dict[str, Any]] = {}
    for query in queries:
        for study in client.find_studies(
            labels=labels,
            constraint="Any",
            query=query,
            expand=True,
            limit=PICK_LIMIT,
            requested_tags=albums.STUDY_LIST_TAGS,
        ):
            if not isinstance(study, dict) or str(study.get("ID")) in seen:
                continue
            study_labels = [str(x) for x in study.get("Labels", [])]
            if not albums.can_see_study(caller, study_labels, member_labels):
                continue
            tags: dict[str, Any] = {}
            for key in ("PatientMainDicomTags", "MainDicomTags", "RequestedTags"):
                if isinstance(study.get(key), dict):
                    tags.update(study[key])
            seen[str(study["ID"])] = {
                "id": str(study["ID"]),
                "uid": tags.get("StudyInstanceUID") or "",
                "patient": _person_name(tags.get("PatientName")),
                "patient_id": tags.get("PatientID") or "",
                "date": _dicom_date(tags.get("StudyDate")),
                "description": tags.get("StudyDescription") or "",
                "modalities": str(tags.get("ModalitiesInStudy") or "").replace("\\", ", "),
                "in_album": album_row.label in study_labels,
            }
            if len(seen) >= PICK_LIMIT:
                break
    return list(seen.values())


@bp.post("/albums/<album_id>/members/invite")
@signed_in
def invite_member(album_id: str) -> WerkzeugResponse:
    """Invite a colleague by username, e-mail address or group, with a role."""
    caller = _caller()
    how = request.form.get("how", "username")
    who = (request.form.get("who") or "").strip()
    role = request.form.get("role", "viewer")
    shown = who
    if not who:
        flash("Type the username, e-mail address or group of the person to invite.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    if how == "username":
        person = admin_sessions.find_user(who)
        if person is None:
            flash(
                f"Nobody with the username “{who}” has signed in here yet. Invite them by "
                "e-mail address instead: the invitation waits for their first sign-in.",
                "error",
            )
            return redirect(url_for("admin.album", album_id=album_id))
        kind, principal, shown = "user", person.subject, person.name or person.username
    elif how == "email":
        kind, principal = "email", who
    elif how == "group":
        kind, principal = "group", who
    else:
        flash("Choose whether you typed a username, an e-mail address or a group.", "error")
        return redirect(url_for("admin.album", album_id=album_id))
    try:
        albums.invite_member(caller, album_id, kind, principal, role)
    except (ValidationFailed, Conflict) as exc:
        _form_error(exc)
        return redirect(url_for("admin.album", album_id=album_id))
    if kind == "email":
        flash(
            f"Invitation for {who} saved: they get access as {role} when they first sign in "
            "with that e-mail address.",
            "success",
        )
    elif kind == "group":
        flash(f"Everyone in the group “{who}” can now open this album as {role}.", "success")
    else:
        flash(f"{shown} can now open this album as {role}.", "success")
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/members/<int:member_id>/role")
@signed_in
def change_role(album_id: str, member_id: int) -> WerkzeugResponse:
    """Change a member's role."""
    try:
        member = albums.change_member_role(
            _caller(), album_id, member_id, request.form.get("role", "")
        )
        flash(f"Role changed to {member.role}.", "success")
    except (ValidationFailed, Conflict) as exc:
        _form_error(exc)
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/members/<int:member_id>/remove")
@signed_in
def remove_member(album_id: str, member_id: int) -> WerkzeugResponse:
    """Remove a member from the album."""
    caller = _caller()
    members = albums.list_members(caller, album_id, limit=500).items
    row = next((r for r in _member_rows(caller, None, members) if r["id"] == member_id), None)
    albums.remove_member(caller, album_id, member_id)
    who = row["who"] if row is not None else "The member"
    flash(f"{who} removed from the album: no more access through it.", "success")
    return redirect(url_for("admin.album", album_id=album_id))


@bp.post("/albums/<album_id>/leave")
@signed_in
def leave_album(album_id: str) -> WerkzeugResponse:
    """Leave the album."""
    name = albums.get_album(_caller(), album_id).album.name
    albums.leave_album(_caller(), album_id)
    flash(f"You left the album “{name}”.", "success")
    return redirect(url_for("admin.albums"))


# --- uploads and sharing -----------------------------------------------------------------------


def _token_state(row: Any) -> str:
    """Return active / expired / revoked / used up, in words."""
    now = dt.datetime.now(dt.UTC)
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at <= now:
        return "expired"
    max_uses = getattr(row, "max_uses", None)
    if max_uses is not None and getattr(row, "use_count", 0) >= max_uses:
        return "used up"
    return "active"


def _sharing_context(caller: albums.Caller, album_id: str) -> dict[str, Any]:
    """What the uploads & sharing page shows: the album, its tokens, the allowed actions."""
    view = albums.get_album(caller, album_id)
    role = albums.album_role(caller, album_id)
    can_upload = _can(caller, role, Action.ALBUM_UPLOAD_TOKEN_CREATE)
    can_read_tokens = _can(caller, role, Action.ALBUM_READ_TOKEN_LIST)
    if not can_upload and not can_read_tokens:
        raise Forbidden("Your role in this album does not allow uploads or sharing.")
    upload_tokens = upload_token_records.list_tokens(caller, album_id) if can_upload else []
    read_tokens = (
        album_access.list_read_tokens(caller.actor, album_id, role) if can_read_tokens else []
    )
    people = admin_sessions.known_users(
        sorted({t.created_by for t in upload_tokens} | {t.created_by for t in read_tokens})
    )
    base = request.url_root.rstrip("/")
    return {
        "view": view,
        "role": role,
        "upload_tokens": upload_tokens,
        "read_tokens": read_tokens,
        "people": people,
        "state": _token_state,
        "suspended": makers.album_token_suspension,
        "can_upload": can_upload,
        "can_share": _can(caller, role, Action.ALBUM_READ_TOKEN_CREATE),
        "can_revoke_read": _can(caller, role, Action.ALBUM_READ_TOKEN_REVOKE),
        "expiry_choices": _EXPIRY_CHOICES,
        "upload_url": f"{base}/api/albums/{album_id}/uploads",
        "dicomweb_url": f"{base}/dicom-web/albums/{album_id}",
        "max_lifetime": services().settings.upload_token_max_lifetime,
    }


@bp.get("/albums/<album_id>/sharing")
@signed_in
def sharing(album_id: str) -> str:
    """Upload tokens and read access for people and programs outside the album."""
    return render_template("admin/sharing.html", **_sharing_context(_caller(), album_id))


def _expiry_seconds(limit: int) -> int:
    try:
        seconds = int(request.form.get("expires", "86400"))
    except ValueError:
        seconds = 86_400
    return max(60, min(seconds, limit))


def _shown_once(html: str) -> Response:
    """A page holding a secret: never cached, never stored by the browser."""
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/albums/<album_id>/upload-tokens")
@signed_in
def create_upload_token(album_id: str) -> Response | WerkzeugResponse:
    """Create an upload token and show it once, with ready-to-paste examples."""
    caller = _caller()
    settings = services().settings
    body = {
        "lifetime_seconds": _expiry_seconds(settings.upload_token_max_lifetime),
        "note": (request.form.get("note") or "").strip()[:500] or None,
    }
    try:
        issued = upload_token_records.issue(
            caller,
            album_id,
            body,
            ring=services().upload_keys,
            limits=upload_token_records.TokenLimits(
                default_lifetime=settings.upload_token_default_lifetime,
                max_lifetime=settings.upload_token_max_lifetime,
            ),
        )
    except ValidationFailed as exc:
        _form_error(exc)
        return redirect(url_for("admin.sharing", album_id=album_id))
    context = _sharing_context(caller, album_id)
    return _shown_once(
        render_template(
            "admin/sharing.html",
            **context,
            new_upload_token=issued.token,
            new_upload_row=issued.row,
        )
    )


@bp.post("/albums/<album_id>/upload-tokens/<token_id>/revoke")
@signed_in
def revoke_upload_token(album_id: str, token_id: str) -> WerkzeugResponse:
    """Revoke an upload token: it stops working at once."""
    upload_token_records.revoke(_caller(), album_id, token_id)
    flash("Upload token revoked: it can no longer be used.", "success")
    return redirect(url_for("admin.sharing", album_id=album_id))


@bp.post("/albums/<album_id>/read-tokens")
@signed_in
def create_read_token(album_id: str) -> Response | WerkzeugResponse:
    """Create an album read token (a viewing link for programs) and show it once."""
    caller = _caller()
    ring = services().upload_keys
    if ring is None:
        raise DependencyUnavailable("Sharing is not set up on this server (no token keys).")
    try:
        issued = album_access.issue_read_token(
            ring,
            caller.actor,
            caller.name,
            album_id,
            albums.album_role(caller, album_id),
            lifetime=_expiry_seconds(album_access.READ_TOKEN_MAX_LIFETIME),
            note=(request.form.get("note") or "").strip()[:500] or None,
        )
    except ValidationFailed as exc:
        _form_error(exc)
        return redirect(url_for("admin.sharing", album_id=album_id))
    context = _sharing_context(caller, album_id)
    return _shown_once(
        render_template(
            "admin/sharing.html", **context, new_read_token=issued.token, new_read_row=issued.row
        )
    )


@bp.post("/albums/<album_id>/read-tokens/<token_id>/revoke")
@signed_in
def revoke_read_token(album_id: str, token_id: str) -> WerkzeugResponse:
    """Revoke an album read token: it stops working at once."""
    caller = _caller()
    album_access.revoke_read_token(
        caller.actor, caller.name, album_id, albums.album_role(caller, album_id), token_id
    )
    flash("Read access revoked: that token can no longer be used.", "success")
    return redirect(url_for("admin.sharing", album_id=album_id))


# --- roles & permissions (administrators) -------------------------------------------------------

#: The permission names of Orthanc's authorization plugin (its ``Permissions`` list), shown as
#: columns even when no role uses them yet; custom names from the configuration are added.
PLUGIN_PERMISSIONS = (
    "all",
    "view",
    "download",
    "upload",
    "send",
    "modify",
    "anonymize",
    "delete",
    "share",
    "edit-labels",
    "q-r-remote-modalities",
    "settings",
    "api-view",
    "admin-permissions",
)


def _split_list(text: str) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in re.split(r"[,\n]", text) if t.strip()))


@bp.get("/roles")
@signed_in
def roles() -> str:
    """The roles × permissions × labels grid: the same data as ``/settings/roles``."""
    if not decide(current_actor(), Action.ROLES_VIEW):
        raise Forbidden("This page is for administrators.")
    snapshot = services().roles.load()  # the stored version, not this worker's cache
    config = snapshot.config
    used = sorted(
        {p for grant in config.roles.values() for p in grant.permissions} - set(PLUGIN_PERMISSIONS)
    )
    return render_template(
        "admin/roles.html",
        config=config,
        version=snapshot.version,
        permissions=[*PLUGIN_PERMISSIONS, *used],
        editing=request.args.get("edit") == "1",
    )


@bp.post("/roles")
@signed_in
def save_roles() -> WerkzeugResponse:
    """Save the edited grid as the new roles configuration (refused if someone saved first)."""
    if not decide(current_actor(), Action.ROLES_EDIT):
        raise Forbidden("Only administrators change roles and permissions.")
    form = request.form
    document: dict[str, Any] = {"roles": {}, "group-roles": {}}
    names = form.getlist("role")
    for index, name in enumerate(names):
        name = name.strip()
        if not name or form.get(f"delete-{index}") == "yes":
            continue
        document["roles"][name] = {
            "permissions": form.getlist(f"perm-{index}"),
            "authorized-labels": _split_list(form.get(f"labels-{index}", "")),
        }
    new_name = (form.get("new-role") or "").strip()
    if new_name:
        document["roles"][new_name] = {
            "permissions": form.getlist("perm-new"),
            "authorized-labels": _split_list(form.get("labels-new", "")),
        }
    document["available-labels"] = _split_list(form.get("available-labels", ""))
    for line in (form.get("group-roles") or "").splitlines():
        group, sep, role_names = line.partition(":")
        if sep and group.strip():
            document["group-roles"][group.strip()] = _split_list(role_names)
    try:
        version = int(form.get("version", "0"))
    except ValueError:
        version = -1
    identity = current_user()
    actor = f"user:{identity.subject}" if identity is not None else "user:?"
    try:
        services().roles.save(document, actor=actor, source="admin", expected_version=version)
        db.session.commit()
    except (ValidationFailed, Conflict) as exc:
        db.session.rollback()
        _form_error(exc)
        return redirect(url_for("admin.roles", edit=1))
    flash("Roles and permissions saved. Users get the new rights within a minute.", "success")
    return redirect(url_for("admin.roles"))


# --- API keys and service accounts; share links ---------------------------------------------

_KEY_EXPIRY_CHOICES = ((30, "30 days"), (90, "90 days"), (365, "1 year"), (0, "never"))


def _key_state(row: ApiKey) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= dt.datetime.now(dt.UTC):
        return "expired"
    return "active"


def _key_entry(row: ApiKey) -> dict[str, Any]:
    """One row of the API keys page: state, and why a key in force is suspended."""
    state, reason = _key_state(row), None
    if state == "active" and row.kind == "user":
        backing = api_key_records.owner_backing(row.owner_subject)
        if not backing:
            state, reason = "suspended", backing.reason
    return {"row": row, "state": state, "reason": reason}


def _api_keys_page(**extra: Any) -> str:
    """The API keys page: the user's own keys; every key and service accounts for admins."""
    identity = current_user()
    assert identity is not None  # noqa: S101 - the views below are @signed_in
    actor = current_actor()
    see_all = bool(decide(actor, Action.API_KEY_LIST_ALL))
    if not see_all and not decide(actor, Action.API_KEY_LIST):
        raise Forbidden("You may not manage API keys.")
    rows = api_key_records.list_keys(owner_subject=None if see_all else identity.subject)
    authenticator = services().authenticator
    return render_template(
        "admin/api_keys.html",
        keys=[_key_entry(row) for row in rows],
        see_all=see_all,
        can_create=bool(
            decide(actor, Action.API_KEY_CREATE, target=Target(token_issued_by_actor=True))
        ),
        can_create_service=bool(
            decide(actor, Action.API_KEY_CREATE_SERVICE, target=Target(token_issued_by_actor=True))
        ),
        can_revoke=lambda row: bool(
            decide(
                actor,
                Action.API_KEY_REVOKE,
                target=Target(token_issued_by_actor=api_key_records.is_owned_by(row, identity)),
            )
        ),
        configured_roles=sorted(authenticator.assignable_roles()),
        expiry_choices=_KEY_EXPIRY_CHOICES,
        **extra,
    )


@bp.get("/api-keys")
@signed_in
def api_keys() -> str:
    """API keys: create (shown once), list, revoke."""
    return _api_keys_page()


@bp.post("/api-keys")
@signed_in
def create_api_key() -> Response | WerkzeugResponse:
    """Create an API key for oneself (holding one's own roles) or, for admins, a service account."""
    identity = current_user()
    assert identity is not None  # noqa: S101 - @signed_in
    actor = current_actor()
    service = request.form.get("kind") == "service"
    action = Action.API_KEY_CREATE_SERVICE if service else Action.API_KEY_CREATE
    if not decide(actor, action, target=Target(token_issued_by_actor=True)):
        raise Forbidden("You may not create this kind of API key.")
    now = dt.datetime.now(dt.UTC)
    authenticator = services().authenticator
    try:
        name = api_key_records.check_name(request.form.get("name", ""))
        days = _form_int("expires_in_days")
        expires_at = api_key_records.check_expiry(days or None, now)
        if service:
            roles = api_key_records.check_roles(
                request.form.getlist("roles"),
                allowed=authenticator.assignable_roles(),
                what="unknown roles",
            )
            if not roles:
                raise ValidationFailed("Tick at least one role for the service account.")
        else:
            # The same rule as POST /api/api-keys: a user's key holds the user's roles, no more.
            roles = sorted(authenticator.key_roles_held(identity))
        created = api_key_records.create_key(
            creator=identity,
            name=name,
            roles=roles,
            expires_at=expires_at,
            service=service,
            now=now,
        )
        db.session.commit()
    except ValidationFailed as exc:
        db.session.rollback()
        _form_error(exc)
        return redirect(url_for("admin.api_keys"))
    return _shown_once(_api_keys_page(new_key=created.plaintext, new_key_row=created.row))


@bp.post("/api-keys/<key_id>/revoke")
@signed_in
def revoke_api_key(key_id: str) -> WerkzeugResponse:
    """Revoke an API key: it stops working at once here, within seconds everywhere."""
    identity = current_user()
    assert identity is not None  # noqa: S101 - @signed_in
    row = api_key_records.get_key(key_id)
    own = api_key_records.is_owned_by(row, identity)
    decision = decide(
        current_actor(), Action.API_KEY_REVOKE, target=Target(token_issued_by_actor=own)
    )
    if not decision:
        raise NotFound("No such API key.")
    api_key_records.revoke_key(row, actor=identity, now=dt.datetime.now(dt.UTC))
    db.session.commit()
    services().authenticator.api_keys.forget(row.id)
    services().makers.clear()  # what a service key made stands on it
    flash(f"API key “{row.name}” revoked: it can no longer be used.", "success")
    return redirect(url_for("admin.api_keys"))


_LINK_KINDS = {
    "stone-viewer-publication": "Stone viewer link",
    "ohif-viewer-publication": "OHIF viewer link",
    "osimis-viewer-publication": "Osimis viewer link",
    "volview-viewer-publication": "VolView link",
    "viewer-instant-link": "Viewer link (short)",
    "download-instant-link": "Download link (short)",
}


@bp.get("/share-links")
@signed_in
def share_links() -> str:
    """The viewer and download links the user made from Orthanc's interface; revoke them."""
    identity = current_user()
    assert identity is not None  # noqa: S101 - @signed_in
    actor = current_actor()
    see_all = request.args.get("all") == "1" and bool(decide(actor, Action.SHARE_TOKEN_LIST_ALL))
    if not see_all and not decide(actor, Action.SHARE_TOKEN_LIST):
        raise Forbidden("You may not see share links.")
    tag = api_key_records.actor_tag(identity)
    rows = services().share_tokens.list(created_by=None if see_all else tag)
    now = dt.datetime.now(dt.UTC)
    links = []
    for row in rows:
        state = (
            "revoked"
            if row.revoked_at
            else ("expired" if row.expires_at is not None and row.expires_at <= now else "active")
        )
        studies = [
            str(r.get("dicom-uid") or r.get("orthanc-id") or "")
            for r in row.resources
            if isinstance(r, dict)
        ]
        reason = makers.share_link_suspension(row) if state == "active" else None
        links.append(
            {
                "row": row,
                "state": "suspended" if reason else state,
                "reason": reason,
                "studies": [s for s in studies if s],
                "kind": _LINK_KINDS.get(row.token_type, row.token_type),
                "mine": row.created_by == tag,
            }
        )
    people = admin_sessions.known_users(
        sorted({r.created_by.split(":", 1)[1] for r in rows if r.created_by.startswith("user:")})
    )
    return render_template(
        "admin/share_links.html",
        links=links,
        see_all=see_all,
        can_all=bool(decide(actor, Action.SHARE_TOKEN_LIST_ALL)),
        people=people,
    )


@bp.post("/share-links/<token_id>/revoke")
@signed_in
def revoke_share_link(token_id: str) -> WerkzeugResponse:
    """Revoke a share link: the viewer refuses it from now on."""
    identity = current_user()
    assert identity is not None  # noqa: S101 - @signed_in
    tag = api_key_records.actor_tag(identity)
    tokens = services().share_tokens
    row = tokens.get(token_id)
    decision = decide(
        current_actor(),
        Action.SHARE_TOKEN_REVOKE,
        target=Target(token_issued_by_actor=row.created_by == tag),
    )
    if not decision:
        raise NotFound("No such share link.")
    tokens.revoke(row, actor=tag, now=dt.datetime.now(dt.UTC))
    db.session.commit()
    flash("Link revoked: it no longer opens anything.", "success")
    return redirect(url_for("admin.share_links", all=request.args.get("all")))


# --- people: disable / enable in authsvc ---------------------------------------------------------


@bp.get("/people")
@signed_in
def people() -> str:
    """Everyone authsvc has seen, and whether they are disabled here (administrators)."""
    if not decide(current_actor(), Action.USER_DISABLE):
        raise Forbidden("This page is for administrators.")
    identity = current_user()
    rows = db.session.scalars(
        sa.select(KnownUser).order_by(KnownUser.username, KnownUser.subject).limit(1000)
    ).all()
    return render_template(
        "admin/people.html", people=rows, me=identity.subject if identity else ""
    )


def _set_person(subject: str, *, disabled: bool) -> WerkzeugResponse:
    identity = current_user()
    assert identity is not None  # noqa: S101 - @signed_in
    if not decide(current_actor(), Action.USER_DISABLE):
        raise Forbidden("This page is for administrators.")
    if subject == identity.subject:
        raise Forbidden("You cannot disable yourself.")
    row = makers.set_disabled(subject, disabled=disabled, actor=api_key_records.actor_tag(identity))
    db.session.commit()
    services().makers.clear()
    services().authenticator.api_keys.clear()
    who = row.name or row.username
    flash(
        f"{who} is disabled: their API keys, tokens and share links stop working."
        if disabled
        else f"{who} is enabled again.",
        "success",
    )
    return redirect(url_for("admin.people"))


@bp.post("/people/<path:subject>/disable")
@signed_in
def disable_person(subject: str) -> WerkzeugResponse:
    """Disable a person in authsvc."""
    return _set_person(subject, disabled=True)


@bp.post("/people/<path:subject>/enable")
@signed_in
def enable_person(subject: str) -> WerkzeugResponse:
    """Enable a person again."""
    return _set_person(subject, disabled=False)
