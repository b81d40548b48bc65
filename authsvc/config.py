"""authsvc.config: the service's settings, loaded once, typed, validated, failing fast.

Layers, each overriding the one before:

1. defaults in this module (:class:`Settings` fields);
2. the TOML file named by ``AUTHSVC_CONFIG`` (lower-case keys, see ``config/authsvc.example.toml``);
3. environment variables ``AUTHSVC_<KEY>``;
4. Docker secrets: ``AUTHSVC_<KEY>_FILE`` (any key) or ``/run/secrets/authsvc_<key>`` (secret keys);
5. the mapping passed to ``create_app(config=...)`` (tests).

Every value is converted where it is read, by the parser declared next to its field (the
parsers are in :mod:`authsvc.config_parsers`). A bad or missing value raises
:class:`~authsvc.errors.ConfigError` whose message is one line naming the key; the CLI and the
gunicorn config print that line and exit. :mod:`authsvc.config_doc` renders the settings
reference (docs/configuration.md, config/authsvc.example.toml) from the fields below.

Secrets (``secret=True``) have no default in production. In development mode a missing secret is
generated once, persisted in the data directory (so sessions survive restarts) and announced
loudly in the log: those values are throw-away and must never reach production.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import tomllib
from collections.abc import Callable
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from authsvc.config_parsers import parse_bind
from authsvc.config_parsers import parse_bool
from authsvc.config_parsers import parse_choice
from authsvc.config_parsers import parse_database_url
from authsvc.config_parsers import parse_float
from authsvc.config_parsers import parse_int
from authsvc.config_parsers import parse_json_list
from authsvc.config_parsers import parse_key_ring
from authsvc.config_parsers import parse_label_prefix
from authsvc.config_parsers import parse_list
from authsvc.config_parsers import parse_nonempty
from authsvc.config_parsers import parse_service_key
from authsvc.config_parsers import parse_str
from authsvc.config_parsers import parse_url
from authsvc.credentials.sealing import generate_key
from authsvc.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "AUTHSVC_"
DOCKER_SECRETS_DIR = Path("/run/secrets")


class Environment(StrEnum):
    """Where the service runs; only ``production`` refuses missing secrets."""

    production = "production"
    development = "development"
    testing = "testing"


def _env(value: Any) -> Environment:
    """Accept an environment's name, any case."""
    return Environment(parse_choice(*[e.value for e in Environment])(value))


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,  # noqa: A002 - reads naturally at the call sites below
    *,
    secret: bool = False,
    example: str | None = None,
) -> Any:
    """Declare one settings key: its default, parser, documentation and secrecy."""
    return dataclasses.field(
        default=default,
        metadata={"parse": parse, "help": help, "secret": secret, "example": example},
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every configuration key of authsvc, with its default and meaning.

    The table of ``docs/configuration.md`` and ``config/authsvc.example.toml`` are checked against
    this class by ``tests/unit/test_config.py``, so the documentation cannot drift.
    """

    env: Environment = setting(
        Environment.production,
        _env,
        "`production`, `development` (throw-away secrets are generated) or `testing`.",
        example="production",
    )
    data_dir: str = setting(
        "instance",
        parse_nonempty,
        "Directory for the embedded SQLite database and development secrets.",
    )
    database_url: str = setting(
        "",
        parse_database_url,
        "SQLAlchemy URL. Empty: SQLite file `authsvc.sqlite3` in `data_dir`. "
        "Production: `postgresql://user:pass@host/db`.",
        secret=True,
        example="postgresql://authsvc:CHANGE-ME@postgres:5432/authsvc",
    )
    secret_key: str = setting(
        "",
        parse_str,
        "Signs session cookies and CSRF tokens (32+ random bytes). Required in production.",
        secret=True,
        example="CHANGE-ME-generate-with-python-secrets-token-urlsafe-48",
    )
    bind: str = setting("127.0.0.1:8000", parse_bind, "Address gunicorn listens on.")
    workers: int = setting(2, parse_int(1, 64), "gunicorn worker processes.")
    threads: int = setting(
        1, parse_int(1, 64), "Threads per worker (1: sync workers, the fastest for the plugin)."
    )
    worker_timeout: int = setting(
        60, parse_int(5, 3600), "Seconds before a stuck worker is recycled."
    )
    log_level: str = setting(
        "info", parse_choice("debug", "info", "warning", "error"), "Log level."
    )
    log_format: str = setting(
        "text", parse_choice("text", "json"), "`text` for people, `json` for JSON lines."
    )
    proxy_count: int = setting(
        0,
        parse_int(0, 5),
        "Number of trusted reverse proxies in front of authsvc that set X-Forwarded-* headers.",
    )
    max_body_bytes: int = setting(
        1_048_576, parse_int(1024), "Largest JSON request body accepted, in bytes."
    )
    orthanc_url: str = setting(
        "",
        parse_url,
        "Base URL of the default Orthanc server (service access, not through nginx).",
        example="http://orthanc:8042",
    )
    orthanc_server_id: str = setting(
        "",
        parse_str,
        "Id of that server, as the plugin's `WebServiceIdentifier` (empty: the plugin sends none).",
    )
    orthanc_username: str = setting("", parse_str, "User authsvc uses to call Orthanc.")
    orthanc_password: str = setting(
        "", parse_str, "Password authsvc uses to call Orthanc.", secret=True
    )
    orthanc_service_key: str = setting(
        "",
        parse_service_key,
        "Key authsvc sends to an Orthanc that runs the authorization plugin, in the "
        "`orthanc_service_key_header`, and answers the plugin's profile request for with its own "
        "service profile (view, upload, edit-labels on every label). At least 32 characters.",
        secret=True,
        example="CHANGE-ME-random-service-key-of-32-or-more-characters",
    )
    orthanc_service_key_header: str = setting(
        "api-key",
        parse_nonempty,
        "Header that carries `orthanc_service_key` (one of the plugin's `TokenHttpHeaders`).",
    )
    orthanc_servers: tuple[dict[str, Any], ...] = setting(
        (),
        parse_json_list,
        "More Orthanc servers: JSON list of "
        '`{"id", "url", "username", "password", "service_key"}`.',
        secret=True,
        example="[]",
    )
    orthanc_timeout: float = setting(
        10.0, parse_float(0.1), "Seconds before a call to Orthanc times out."
    )
    orthanc_retries: int = setting(
        2, parse_int(0, 10), "Retries of idempotent Orthanc calls after a connection failure."
    )
    album_label_prefix: str = setting(
        "album-",
        parse_label_prefix,
        "Prefix of the Orthanc labels authsvc generates for albums (1-32 of `a-z0-9_-`, "
        "starting with a letter). Changing it orphans nothing: existing albums keep their label.",
    )
    oidc_issuer: str = setting(
        "",
        parse_url,
        "Keycloak realm URL (the issuer); empty: no OIDC.",
        example="http://keycloak:8080/realms/orthanc",
    )
    oidc_client_id: str = setting(
        "",
        parse_str,
        "Keycloak client whose client roles count (`resource_access.<client>.roles`); "
        "also an accepted audience and `azp`.",
        example="orthanc",
    )
    oidc_audiences: tuple[str, ...] = setting(
        (),
        parse_list,
        "Accepted `aud` values (comma-separated). Empty: the client id and `account`. "
        "`account` (in every Keycloak client's tokens) only counts with an `azp` listed in "
        "`oidc_trusted_clients`.",
        example="authsvc",
    )
    oidc_trusted_clients: tuple[str, ...] = setting(
        ("orthanc", "authsvc"),
        parse_list,
        "Clients (`azp`) whose tokens are accepted when their only accepted audience is "
        "`account` (default: the clients of config/keycloak/orthanc-realm.json). `*`: any "
        "client of the realm, refused in production.",
        example="orthanc,authsvc",
    )
    oidc_discovery_url: str = setting(
        "",
        parse_url,
        "Discovery document URL. Empty: `<oidc_issuer>/.well-known/openid-configuration`.",
    )
    oidc_jwks_url: str = setting(
        "",
        parse_url,
        "JWKS URL, when the issuer URL is not reachable from authsvc. Empty: from discovery.",
    )
    oidc_algorithms: tuple[str, ...] = setting(
        ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384"),
        parse_list,
        "Accepted JWT signature algorithms (asymmetric only; never `none` or HMAC).",
        example="RS256,ES256",
    )
    oidc_leeway: float = setting(
        30.0, parse_float(0.0), "Seconds of clock skew tolerated on `exp`/`nbf`."
    )
    oidc_timeout: float = setting(
        5.0,
        parse_float(0.1),
        "Seconds before a call to the OIDC provider (discovery, JWKS) times out.",
    )
    admin_client_id: str = setting(
        "",
        parse_str,
        "OIDC client of the admin pages (confidential, standard flow, PKCE). "
        "Empty: `oidc_client_id`.",
        example="authsvc-admin",
    )
    admin_client_secret: str = setting(
        "",
        parse_str,
        "Secret of that client. Empty: the admin pages cannot sign anybody in.",
        secret=True,
        example="CHANGE-ME-client-secret-from-keycloak",
    )
    admin_cookie_secure: bool = setting(
        True,
        parse_bool,
        "Send the admin session cookie over HTTPS only. Set false only for plain-HTTP development.",
    )
    admin_session_lifetime: int = setting(
        28_800,
        parse_int(300, 604_800),
        "Seconds an admin-page sign-in lasts before the user must sign in again.",
    )
    admin_session_idle_timeout: int = setting(
        1_800,
        parse_int(0, 604_800),
        "Seconds without a request after which an admin-page sign-in ends (0: no idle limit).",
    )
    study_viewers: tuple[dict[str, Any], ...] = setting(
        (),
        parse_json_list,
        "Viewers the album page links studies to: a list of `{name, url}` (JSON in the "
        "environment), the URL containing `{StudyInstanceUID}` (and optionally "
        "`{OrthancStudyId}`).",
        example='[{ name = "OHIF", url = "https://pacs.example/ohif/viewer?StudyInstanceUIDs='
        '{StudyInstanceUID}" }]',
    )
    api_key_header: str = setting(
        "api-key", parse_nonempty, "Request header that carries an API key."
    )
    admin_roles: tuple[str, ...] = setting(
        (),
        parse_list,
        "Roles (comma-separated) that make a global admin, besides any role granting `all`.",
        example="admin",
    )
    anonymous_roles: tuple[str, ...] = setting(
        (),
        parse_list,
        "Roles from the roles configuration granted to callers without credentials "
        "(empty: anonymous callers get nothing).",
        example="",
    )
    roles_file: str = setting(
        "",
        parse_str,
        "Roles file imported on first start when the database holds no roles configuration "
        "(orthanc-auth-service `permissions.json` format, comments allowed).",
        example="/etc/authsvc/permissions.json",
    )
    plugin_username: str = setting(
        "orthanc-plugin",
        parse_nonempty,
        "User name the Orthanc plugin sends (its `WebServiceUsername`) with HTTP Basic.",
    )
    plugin_password: str = setting(
        "",
        parse_str,
        "Password the Orthanc plugin sends (its `WebServicePassword`). Empty: every plugin "
        "callback is refused (401).",
        secret=True,
        example="CHANGE-ME-long-random-password",
    )
    plugin_validity: int = setting(
        60,
        parse_int(1, 86_400),
        "Seconds the plugin may cache a profile or a token decision (`validity`, never 0).",
    )
    share_token_keys: str = setting(
        "",
        parse_key_ring,
        "Key ring sealing share tokens (viewer publications, instant links): `kid:base64url` "
        "items, newest first. Empty in production: share tokens cannot be created.",
        secret=True,
        example="CHANGE-ME:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    share_token_max_lifetime: int = setting(
        31_536_000,
        parse_int(0),
        "Longest share token lifetime in seconds (longer requests are shortened); 0: no limit.",
    )
    plugin_share_links: bool = setting(
        True,
        parse_bool,
        "Create share links asked for through the plugin's own `PUT /tokens/<type>`. The plugin "
        "does not say who asks, so such links belong to nobody and may name any study; with "
        "nginx routing OE2's requests to authsvc (nginx/plugin.conf.template), set false.",
    )
    share_token_never_expires: bool = setting(
        False,
        parse_bool,
        'Allow share links that never expire (OE2 "share duration 0") when there is no limit.',
    )
    legacy_share_secret: str = setting(
        "",
        parse_str,
        "orthanc-auth-service's `SECRET_KEY`: its HS256 share links keep working (migration).",
        secret=True,
        example="CHANGE-ME-the-old-services-secret-key",
    )
    public_orthanc_root: str = setting(
        "",
        parse_url,
        "Public URL of Orthanc for share links (Stone, Osimis, VolView, OE2 inbox page).",
        example="https://pacs.example.org/orthanc/",
    )
    public_landing_root: str = setting(
        "",
        parse_url,
        "OE2 token landing page; when set, share links open it instead of the viewer.",
        example="https://pacs.example.org/orthanc/ui/app/token-landing.html",
    )
    public_ohif_root: str = setting(
        "",
        parse_url,
        "Public URL of OHIF for OHIF share links.",
        example="https://pacs.example.org/ohif/",
    )
    ohif_data_source: str = setting(
        "dicom-web",
        parse_choice("dicom-web", "dicom-json"),
        "How shared OHIF links load studies: `dicom-web` or `dicom-json`.",
    )
    readiness_timeout: float = setting(
        2.0, parse_float(0.1), "Seconds each dependency check of `/readyz` may take."
    )
    upload_token_keys: str = setting(
        "",
        parse_key_ring,
        "Key ring sealing upload and album-read tokens: `kid:base64url` items, newest first "
        "(`authsvc keys rotate`). Empty in production: upload tokens are refused.",
        secret=True,
        example="CHANGE-ME:Q0hBTkdFLU1FLXJ1bi1hdXRoc3ZjLWtleXMtZ2VuISE",
    )
    upload_token_header: str = setting(
        "upload-token",
        parse_nonempty,
        "Request header that may carry an upload token (besides `Authorization: Bearer`).",
    )
    upload_token_default_lifetime: int = setting(
        86_400, parse_int(60), "Seconds an upload token lives when the issuer names no lifetime."
    )
    upload_token_max_lifetime: int = setting(
        2_592_000, parse_int(60), "Longest upload token lifetime that may be requested, in seconds."
    )
    upload_max_bytes: int = setting(
        4_294_967_296,
        parse_int(1024),
        "Largest upload request body (STOW-RS, DICOM or ZIP), in bytes.",
    )
    upload_max_instances: int = setting(
        10_000, parse_int(1), "Most DICOM instances one upload request may carry."
    )
    gate_cache_seconds: int = setting(
        5,
        parse_int(0, 60),
        "Seconds nginx may reuse an allowed gate decision for the same credentials and study "
        "(nginx/gate.conf.template); a revocation or removal reaches the gate within this "
        "time. 0: nginx asks on every request.",
    )

    # -- derived values -------------------------------------------------------------------

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver made explicit."""
        url = self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'authsvc.sqlite3'}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    @property
    def is_development(self) -> bool:
        """True when throw-away secrets may be generated."""
        return self.env is not Environment.production


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)
KEYS: tuple[str, ...] = tuple(f.name for f in FIELDS)
SECRET_KEYS: frozenset[str] = frozenset(f.name for f in FIELDS if f.metadata["secret"])
# Secrets that must be set in production. The others are optional (empty disables a feature).
REQUIRED_SECRETS: tuple[str, ...] = ("secret_key",)
# Optional secrets that development mode still generates, so every feature works out of the box.
_DEV_GENERATED: Mapping[str, Callable[[], str]] = {
    "secret_key": lambda: secrets.token_urlsafe(48),
    "share_token_keys": lambda: generate_key("dev"),
    "upload_token_keys": lambda: generate_key("dev"),
}


def env_name(key: str) -> str:
    """Return the environment variable name of a settings key."""
    return ENV_PREFIX + key.upper()


def _read_file_value(key: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{env_name(key)}: cannot read secret file {path}: {exc.strerror}"
        ) from None


def _collect_raw(
    environ: Mapping[str, str], secrets_dir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """Gather raw values from the file, environment and secrets; also where each came from."""
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_path = environ.get(ENV_PREFIX + "CONFIG", "").strip()
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(
                f"AUTHSVC_CONFIG: cannot read {config_path}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"AUTHSVC_CONFIG: {config_path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key not in KEYS:
                raise ConfigError(f"{key}: unknown key in {config_path}")
            raw[key] = value
            origin[key] = config_path
    for key in KEYS:
        name = env_name(key)
        if name in environ:
            raw[key] = environ[name]
            origin[key] = name
    for key in KEYS:
        file_var = env_name(key) + "_FILE"
        if environ.get(file_var):
            raw[key] = _read_file_value(key, Path(environ[file_var]))
            origin[key] = file_var
        elif key in SECRET_KEYS:
            candidate = secrets_dir / f"authsvc_{key}"
            if candidate.is_file():
                raw[key] = _read_file_value(key, candidate)
                origin[key] = str(candidate)
    return raw, origin


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    secrets_dir: Path = DOCKER_SECRETS_DIR,
) -> Settings:
    """Load, convert and validate every key; raise ConfigError naming the first bad key."""
    environ = os.environ if environ is None else environ
    raw, origin = _collect_raw(environ, secrets_dir)
    for key, value in (overrides or {}).items():
        if key.lower() not in KEYS:
            raise ConfigError(f"{key}: unknown configuration key")
        raw[key.lower()] = value
        origin[key.lower()] = "create_app(config=...)"
    values: dict[str, Any] = {}
    for field in FIELDS:
        if field.name not in raw:
            continue
        try:
            values[field.name] = field.metadata["parse"](raw[field.name])
        except (ValueError, TypeError) as exc:
            # Never echo the value of a secret; for other keys the value helps the operator.
            shown = "" if field.name in SECRET_KEYS else f" (got {raw[field.name]!r})"
            raise ConfigError(
                f"{env_name(field.name)}: {exc}{shown} [from {origin[field.name]}]"
            ) from None
    settings = Settings(**values)
    return _complete_secrets(settings)


def _complete_secrets(settings: Settings) -> Settings:
    """Refuse missing production secrets; in development generate and persist throw-away ones."""
    if not settings.is_development:
        for key in REQUIRED_SECRETS:
            if not getattr(settings, key):
                raise ConfigError(
                    f"{env_name(key)}: required in production (set it, or {env_name(key)}_FILE, "
                    f"or /run/secrets/authsvc_{key})"
                )
        _refuse_any_client(settings)
        return settings
    missing = [key for key in _DEV_GENERATED if not getattr(settings, key)]
    if not missing:
        return settings
    store = Path(settings.data_dir) / "dev-secrets.json"
    stored: dict[str, str] = {}
    if store.is_file():
        try:
            stored = json.loads(store.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = {}
    generated: dict[str, Any] = {key: stored.get(key) or _DEV_GENERATED[key]() for key in missing}
    if any(key not in stored for key in missing):
        store.parent.mkdir(parents=True, exist_ok=True)
        stored.update(generated)
        # Written with owner-only permissions: these are real (if throw-away) secrets.
        fd = os.open(store, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(stored, fh)
    log.warning(
        "DEVELOPMENT MODE: using throw-away secrets for %s stored in %s. "
        "Never run like this in production (set AUTHSVC_ENV=production and real secrets).",
        ", ".join(env_name(k) for k in missing),
        store,
    )
    return dataclasses.replace(settings, **generated)


def _refuse_any_client(settings: Settings) -> None:
    """Refuse a production configuration that accepts the tokens of every client of the realm.

    Keycloak puts ``account`` into the ``aud`` of every client's tokens, so accepting it from
    any ``azp`` lets a token minted for another application of the realm work here.
    """
    if not settings.oidc_issuer:
        return
    audiences = settings.oidc_audiences or (settings.oidc_client_id, "account")
    if "account" in audiences and "*" in settings.oidc_trusted_clients:
        raise ConfigError(
            f"{env_name('oidc_trusted_clients')}: `*` with the `account` audience accepts tokens "
            f"minted for any client of the realm; list the trusted clients, or set "
            f"{env_name('oidc_audiences')} to authsvc's own audience"
        )
