"""Configuration: layering, typing, failing fast in one line, secrets, docs that can't drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authsvc import config
from authsvc import config_doc
from authsvc.config import Environment
from authsvc.config import load_settings
from authsvc.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SECRET = "insecure-test-secret"


def load(environ: dict[str, str], tmp_path: Path, **overrides: object):
    """Load settings from a given environment only (never the developer's)."""
    return load_settings(overrides or None, environ=environ, secrets_dir=tmp_path / "secrets")


def test_defaults_need_a_secret_in_production(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load({}, tmp_path)
    assert str(info.value).startswith("AUTHSVC_SECRET_KEY: required in production")


def test_defaults_with_a_secret(tmp_path: Path) -> None:
    settings = load({"AUTHSVC_SECRET_KEY": SECRET}, tmp_path)
    assert settings.env is Environment.production
    assert settings.bind == "127.0.0.1:8000"
    assert settings.workers == 2
    assert settings.sqlalchemy_url.startswith("sqlite:///")
    assert settings.sqlalchemy_url.endswith("/instance/authsvc.sqlite3")


OIDC = {
    "AUTHSVC_SECRET_KEY": SECRET,
    "AUTHSVC_OIDC_ISSUER": "https://idp.example/realms/orthanc",
    "AUTHSVC_OIDC_CLIENT_ID": "authsvc",
}


@pytest.mark.parametrize(
    "extra",
    [
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "*"},
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "orthanc,*"},
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "*", "AUTHSVC_OIDC_AUDIENCES": "authsvc,account"},
    ],
)
def test_production_refuses_tokens_of_any_client(tmp_path: Path, extra: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(OIDC | extra, tmp_path)
    message = str(info.value)
    assert message.startswith("AUTHSVC_OIDC_TRUSTED_CLIENTS: `*` with the `account` audience")
    assert "\n" not in message


@pytest.mark.parametrize(
    "extra",
    [
        {},  # default: the shipped realm's clients
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "orthanc"},
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "*", "AUTHSVC_OIDC_AUDIENCES": "authsvc"},  # no account
        {"AUTHSVC_OIDC_TRUSTED_CLIENTS": "*", "AUTHSVC_ENV": "development"},
    ],
)
def test_production_accepts_bounded_audiences(tmp_path: Path, extra: dict[str, str]) -> None:
    settings = load(OIDC | extra, tmp_path)
    if not extra:
        assert settings.oidc_trusted_clients == ("orthanc", "authsvc")


def test_layers_file_then_env_then_secret_file_then_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "authsvc.toml"
    toml.write_text('workers = 3\nthreads = 2\nlog_level = "warning"\nbind = "0.0.0.0:9000"\n')
    secret_file = tmp_path / "key"
    secret_file.write_text(SECRET + "\n")
    environ = {
        "AUTHSVC_CONFIG": str(toml),
        "AUTHSVC_THREADS": "4",
        "AUTHSVC_BIND": "127.0.0.1:9001",
        "AUTHSVC_SECRET_KEY": "from-env",
        "AUTHSVC_SECRET_KEY_FILE": str(secret_file),
    }
    settings = load(environ, tmp_path, bind="127.0.0.1:9002")
    assert settings.workers == 3  # file
    assert settings.log_level == "warning"  # file
    assert settings.threads == 4  # env beats file
    assert settings.secret_key == SECRET  # the _FILE variable beats the plain one, stripped
    assert settings.bind == "127.0.0.1:9002"  # create_app(config=...) beats everything


def test_docker_secret_directory(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "authsvc_secret_key").write_text(SECRET)
    assert load({}, tmp_path).secret_key == SECRET


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AUTHSVC_WORKERS", "abc", "AUTHSVC_WORKERS: expected an integer (got 'abc')"),
        ("AUTHSVC_WORKERS", "0", "AUTHSVC_WORKERS: must be at least 1"),
        ("AUTHSVC_THREADS", "1.5", "AUTHSVC_THREADS: expected an integer"),
        ("AUTHSVC_ENV", "prod", "AUTHSVC_ENV: expected one of production, development, testing"),
        ("AUTHSVC_BIND", "localhost", "AUTHSVC_BIND: expected HOST:PORT or unix:PATH"),
        ("AUTHSVC_BIND", "h:70000", "AUTHSVC_BIND: expected HOST:PORT"),
        ("AUTHSVC_ORTHANC_URL", "orthanc:8042", "AUTHSVC_ORTHANC_URL: expected an http://"),
        ("AUTHSVC_ORTHANC_TIMEOUT", "-1", "AUTHSVC_ORTHANC_TIMEOUT: must be at least"),
        ("AUTHSVC_LOG_FORMAT", "xml", "AUTHSVC_LOG_FORMAT: expected one of text, json"),
        ("AUTHSVC_DATABASE_URL", "mysql://x", "AUTHSVC_DATABASE_URL: expected a sqlite:///"),
        ("AUTHSVC_ORTHANC_SERVERS", "{", "AUTHSVC_ORTHANC_SERVERS: expected a JSON list"),
    ],
)
def test_a_bad_value_names_the_key_in_one_line(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load({"AUTHSVC_SECRET_KEY": SECRET, name: value}, tmp_path)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_a_bad_secret_value_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(
            {"AUTHSVC_SECRET_KEY": SECRET, "AUTHSVC_DATABASE_URL": "mysql://u:hunter2@h/d"},
            tmp_path,
        )
    assert "hunter2" not in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("wokers = 3\n")
    with pytest.raises(ConfigError, match="^wokers: unknown key"):
        load({"AUTHSVC_CONFIG": str(toml), "AUTHSVC_SECRET_KEY": SECRET}, tmp_path)


def test_broken_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("workers = \n")
    with pytest.raises(ConfigError, match="^AUTHSVC_CONFIG: .* is not valid TOML"):
        load({"AUTHSVC_CONFIG": str(toml)}, tmp_path)


def test_missing_secret_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^AUTHSVC_SECRET_KEY: cannot read secret file"):
        load({"AUTHSVC_SECRET_KEY_FILE": str(tmp_path / "nope")}, tmp_path)


def test_development_generates_and_persists_throwaway_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"AUTHSVC_ENV": "development", "AUTHSVC_DATA_DIR": str(tmp_path / "data")}
    first = load(environ, tmp_path)
    second = load(environ, tmp_path)
    assert len(first.secret_key) >= 48
    assert first.secret_key == second.secret_key  # survives restarts: sessions stay valid
    store = tmp_path / "data" / "dev-secrets.json"
    assert store.stat().st_mode & 0o777 == 0o600
    assert "DEVELOPMENT MODE" in caplog.text
    assert first.secret_key not in caplog.text


def test_postgres_url_gets_the_psycopg_driver(tmp_path: Path) -> None:
    settings = load(
        {"AUTHSVC_SECRET_KEY": SECRET, "AUTHSVC_DATABASE_URL": "postgresql://u@h/db"}, tmp_path
    )
    assert settings.sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_every_key_is_documented_in_the_example_file() -> None:
    example = (ROOT / "config" / "authsvc.example.toml").read_text()
    assert example == config_doc.example_toml(), "run: authsvc config-doc --format toml"
    for key in config.KEYS:
        assert re.search(rf"^# {key} = ", example, re.M), key


def test_docs_configuration_table_matches_the_code() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    start = page.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = page.index("<!-- config-table:end -->")
    assert page[start:end].strip() == config_doc.markdown_table().strip(), (
        "docs/configuration.md table is stale: run `authsvc config-doc` and paste it there"
    )


def test_example_file_values_are_valid(tmp_path: Path) -> None:
    """Uncommenting every line of the example gives a configuration that loads."""
    text = (ROOT / "config" / "authsvc.example.toml").read_text()
    uncommented = "\n".join(
        line[2:] for line in text.splitlines() if re.match(r"^# [a-z_]+ = ", line)
    )
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    settings = load({"AUTHSVC_CONFIG": str(path)}, tmp_path)
    assert settings.orthanc_url == "http://orthanc:8042"
