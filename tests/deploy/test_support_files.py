"""The kit's helper files: the .env generator, the PostgreSQL init script, the image's package.

Each is run for real: make-env.py writes a .env that authsvc's key-ring parser accepts; the
init script creates the three databases on a throw-away PostgreSQL cluster; the authsvc wheel
is built from exactly the files the Dockerfile copies (the .dockerignore allow-list).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from authsvc.credentials.sealing import KeyRing
from tests import processes
from tests.deploy import files

MAKE_ENV = processes.REPO_ROOT / "scripts" / "deploy" / "make-env.py"
INIT_SCRIPT = processes.REPO_ROOT / "config" / "postgres" / "init-databases.sh"


def _run_make_env(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAKE_ENV), *args], capture_output=True, text=True, check=False
    )


@pytest.mark.unit
def test_make_env_fills_every_placeholder_with_fresh_secrets(tmp_path: Path) -> None:
    """Every CHANGE-ME becomes a distinct secret; the file is private; the rest is kept."""
    output = tmp_path / ".env"
    result = _run_make_env("--output", str(output))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    text = output.read_text()
    assert "CHANGE-ME" not in files.without_comments(text)
    example = files.env_example()
    written = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert set(written) == set(example)
    secrets_written = [written[k] for k, v in example.items() if v == "CHANGE-ME"]
    assert len(set(secrets_written)) == len(secrets_written)
    for key, value in example.items():
        if value != "CHANGE-ME":
            assert written[key] == value
    for key in ("AUTHSVC_UPLOAD_TOKEN_KEYS", "AUTHSVC_SHARE_TOKEN_KEYS"):
        KeyRing.from_text(written[key])  # authsvc's own parser accepts the generated key
    assert len(written["AUTHSVC_SECRET_KEY"]) == 64


@pytest.mark.unit
def test_make_env_never_overwrites_secrets_in_use(tmp_path: Path) -> None:
    """An existing .env is left alone unless --force is given."""
    output = tmp_path / ".env"
    output.write_text("AUTHSVC_SECRET_KEY=in-use\n")
    result = _run_make_env("--output", str(output))
    assert result.returncode == 1 and "exists" in result.stderr
    assert output.read_text() == "AUTHSVC_SECRET_KEY=in-use\n"
    assert _run_make_env("--output", str(output), "--force").returncode == 0
    assert "in-use" not in output.read_text()


@pytest.mark.integration
def test_postgres_init_script_creates_one_database_per_service(tmp_path: Path) -> None:
    """On a fresh cluster the script makes authsvc, orthanc and keycloak, each its own owner."""
    cluster = processes.start_private_postgres(tmp_path)
    try:
        bindir = processes._postgres_bindir()
        # A quote in a password must not break (or inject into) the SQL.
        env = {
            **os.environ,
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "PGHOST": processes.LOOPBACK,
            "PGPORT": str(cluster.port),
            "POSTGRES_USER": "postgres",
            "AUTHSVC_DB_PASSWORD": "a'; DROP ROLE postgres; --",
            "ORTHANC_DB_PASSWORD": "orthanc-secret",
            "KEYCLOAK_DB_PASSWORD": "keycloak-secret",
        }
        result = subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        admin = f"postgresql://postgres@{processes.LOOPBACK}:{cluster.port}/postgres"
        with psycopg.connect(admin) as connection:
            rows = connection.execute(
                "SELECT d.datname, r.rolname FROM pg_database d "
                "JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = ANY(%s)",
                (["authsvc", "orthanc", "keycloak"],),
            ).fetchall()
            assert sorted(rows) == [
                ("authsvc", "authsvc"), ("keycloak", "keycloak"), ("orthanc", "orthanc"),
            ]  # fmt: skip
            roles = {r[0] for r in connection.execute("SELECT rolname FROM pg_roles")}
            assert "postgres" in roles  # the quote did not end the statement
            public = connection.execute(
                "SELECT has_database_privilege('public', 'authsvc', 'CONNECT')"
            ).fetchone()
            assert public == (False,)
        # Without a password variable the script stops instead of creating a passwordless role.
        del env["KEYCLOAK_DB_PASSWORD"]
        again = subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True)
        assert again.returncode != 0
    finally:
        cluster.stop()


@pytest.mark.integration
def test_image_package_builds_from_the_docker_build_context(tmp_path: Path) -> None:
    """Building from only the files the Dockerfile copies yields schema, templates and code.

    setuptools' build_py does the file selection a wheel build does (packages and
    package_data from setup.cfg) without needing the network for build isolation.
    """
    context = tmp_path / "context"
    context.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(processes.REPO_ROOT / name, context / name)
    shutil.copytree(
        processes.REPO_ROOT / "authsvc",
        context / "authsvc",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    build = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()",
         "--quiet", "build_py", "--build-lib", str(build)],
        cwd=context, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    built = {str(p.relative_to(build)) for p in build.rglob("*") if p.is_file()}
    assert {"authsvc/schema.sql", "authsvc/gunicorn_conf.py", "authsvc/cli.py"} <= built
    source = processes.REPO_ROOT / "authsvc"
    data = {
        str(p.relative_to(processes.REPO_ROOT))
        for pattern in ("templates/**/*.html", "static/*", "*.json", "migrations/*.sql")
        for p in source.glob(pattern)
        if p.is_file()
    }
    assert data <= built, sorted(data - built)
