"""authsvc.commands: the commands the app registers on ``app.cli`` — init-db, migrate, reconcile.

They run inside an app context (``flask --app authsvc.app ...``); the ``authsvc`` command
(:mod:`authsvc.cli`) builds the app and runs the same code. They live apart from the CLI so
that the factory (:mod:`authsvc.app`) can register them without importing the entry point
that imports the factory.
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import with_appcontext

from authsvc import albums
from authsvc import database
from authsvc.extensions import db
from authsvc.services import services


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the database schema (or upgrade it to the newest version)."""
    click.echo(database.init_db(db.engine))


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Apply pending schema migrations."""
    click.echo(database.migrate(db.engine))


def run_reconcile(dry_run: bool) -> int:
    """Run ``albums.reconcile`` in the current app context; print the report; return the exit code.

    0: the database and Orthanc agree (after repair). 1: drift was found and not (all) repaired,
    label changes are still pending, or Orthanc could not be asked.
    """
    report = albums.reconcile(services().archive, repair=not dry_run)
    for drift in report.drifts:
        click.echo(drift.describe())
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    retried = report.retried
    click.echo(
        f"reconcile: {len(report.drifts)} difference(s), "
        f"{sum(d.repaired for d in report.drifts)} repaired; pending labels: "
        f"{retried.applied} applied, {retried.failed} failed, {retried.remaining} left"
        + (" (dry run: nothing changed)" if dry_run else "")
    )
    unrepaired = any(not d.repaired for d in report.drifts)
    return 1 if unrepaired or report.errors or retried.remaining else 0


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Report the drift without repairing it.")
@with_appcontext
def reconcile_command(dry_run: bool) -> None:
    """Compare album records with Orthanc's labels, retry pending labels, repair drift."""
    sys.exit(run_reconcile(dry_run))


def init_app(app: Flask) -> None:
    """Register the commands on the app (reachable through ``flask --app authsvc.app``)."""
    app.cli.add_command(init_db_command)
    app.cli.add_command(migrate_command)
    app.cli.add_command(reconcile_command)
