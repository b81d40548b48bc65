"""authsvc.cli: the ``authsvc`` command — serve, init-db, migrate, check-config, config-doc.

A configuration error prints one line naming the key and exits with status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import Flask

from authsvc.errors import ConfigError


def _fail_on_config_error(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"authsvc: configuration error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
def main() -> None:
    """authsvc: authorization service for Orthanc."""


def _app() -> Flask:
    from authsvc.app import create_app

    return create_app()


@main.command("init-db")
@_fail_on_config_error
def main_init_db() -> None:
    """Create the database schema (or upgrade it to the newest version)."""
    from authsvc import database
    from authsvc.extensions import db

    with _app().app_context():
        click.echo(database.init_db(db.engine))


@main.command("migrate")
@_fail_on_config_error
def main_migrate() -> None:
    """Apply pending schema migrations."""
    from authsvc import database
    from authsvc.extensions import db

    with _app().app_context():
        click.echo(database.migrate(db.engine))


@main.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Report the drift without repairing it.")
@_fail_on_config_error
def main_reconcile(dry_run: bool) -> None:
    """Compare album records with Orthanc's labels, retry pending labels, repair drift.

    Run it from cron (e.g. every 5 minutes): it is also what retries label changes that
    failed while Orthanc was unavailable. Exit status 0 when everything agrees.
    """
    from authsvc.commands import run_reconcile

    with _app().app_context():
        code = run_reconcile(dry_run)
    sys.exit(code)


@main.command("check-config")
@_fail_on_config_error
def main_check_config() -> None:
    """Load and validate the configuration; print 'ok' or the one bad key."""
    from authsvc.config import load_settings

    settings = load_settings()
    click.echo(f"configuration ok (env={settings.env.value})")


@main.command("check-orthanc")
@_fail_on_config_error
def main_check_orthanc() -> None:
    """Check that every configured Orthanc answers and lets authsvc write labels."""
    from authsvc.config import load_settings
    from authsvc.errors import OrthancUnavailable
    from authsvc.services import orthanc_servers

    failed = False
    for client in orthanc_servers(load_settings()):
        name = client.server.id or "default"
        try:
            problem = client.label_write_problem()
        except OrthancUnavailable as exc:
            problem = exc.message
        if problem is None:
            click.echo(f"orthanc {name}: ok (label writes allowed)")
        else:
            failed = True
            click.echo(f"orthanc {name}: {problem}", err=True)
    if failed:
        raise SystemExit(1)


@main.command("config-doc")
@click.option("--format", "fmt", type=click.Choice(["markdown", "toml"]), default="markdown")
def main_config_doc(fmt: str) -> None:
    """Print the configuration reference.

    Markdown: the table to paste between the config-table markers of docs/configuration.md;
    toml: the content of config/authsvc.example.toml.
    """
    from authsvc.config_doc import example_toml
    from authsvc.config_doc import markdown_table

    click.echo(markdown_table() if fmt == "markdown" else example_toml(), nl=False)


@main.group("keys")
def main_keys() -> None:
    """Make token key rings (AUTHSVC_UPLOAD_TOKEN_KEYS). Prints to stdout only; logs nothing."""


@main_keys.command("generate")
@click.option("--key-id", default=None, help="Id of the new key (default: random k<8 hex>).")
def main_keys_generate(key_id: str | None) -> None:
    """Print a new key ring holding one fresh key."""
    from authsvc.credentials.sealing import generate_key

    click.echo(generate_key(key_id))


@main_keys.command("rotate")
@click.option(
    "--current",
    "current",
    default=None,
    help="The ring in use now (default: read AUTHSVC_UPLOAD_TOKEN_KEYS from the configuration).",
)
@click.option(
    "--keep",
    type=click.IntRange(1, 20),
    default=None,
    help="Keep only this many old keys (drop the oldest; their tokens stop working).",
)
@click.option("--key-id", default=None, help="Id of the new key (default: random k<8 hex>).")
@_fail_on_config_error
def main_keys_rotate(current: str | None, keep: int | None, key_id: str | None) -> None:
    """Print the ring with a fresh key first, followed by the current keys.

    Deploy the printed value to every replica: new tokens are sealed with the new key, and
    tokens sealed with the old keys keep opening until you drop those keys (after the longest
    token lifetime, `upload_token_max_lifetime`).
    """
    from authsvc.config import load_settings
    from authsvc.credentials.sealing import KeyRing
    from authsvc.credentials.sealing import generate_key

    text = current if current is not None else load_settings().upload_token_keys
    items = [item for item in text.replace(",", " ").split() if item]
    if items:
        KeyRing.from_text(" ".join(items), setting="current key ring")  # refuse a broken ring
    new = generate_key(key_id)
    if new.split(":", 1)[0] in {item.split(":", 1)[0] for item in items}:
        raise click.UsageError("the new key id is already in the ring; choose another --key-id")
    if keep is not None:
        items = items[:keep]
    click.echo(",".join([new, *items]))


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@_fail_on_config_error
def main_serve(gunicorn_args: tuple[str, ...]) -> None:
    """Serve with gunicorn (settings from AUTHSVC_BIND, AUTHSVC_WORKERS, AUTHSVC_THREADS)."""
    from authsvc.config import load_settings

    load_settings()  # fail here with one line, before gunicorn starts workers
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    argv = [
        gunicorn,
        "-c",
        "python:authsvc.gunicorn_conf",
        *gunicorn_args,
        "authsvc.app:create_app()",
    ]
    os.execv(gunicorn, argv)  # noqa: S606 - replaces this process with gunicorn, fixed argv
