"""The compose stacks: valid Compose files, secure defaults, and in step with config/ and authsvc.

No Docker engine runs on these machines, so ``docker compose config`` is replaced by what it
checks that matters here: the Compose Specification schema (vendored, see tests/data/README.md),
interpolation of every ``${VAR}`` from .env.example, and the cross-references between services,
mounted files and authsvc's own settings (which must accept the environment compose gives it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from authsvc import config
from tests import deploy_kit
from tests.deploy import files
from tests.processes import REPO_ROOT

pytestmark = pytest.mark.unit

SCHEMA_PATH = REPO_ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
SECRET_WORDS = ("PASSWORD", "SECRET", "KEYS", "TOKEN")


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    # The schema says draft 2019-09 with a URI jsonschema does not recognise; name it here.
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_vendored_schema_is_the_recorded_one() -> None:
    """The schema file is exactly the one tests/data/README.md names (source and digest)."""
    import hashlib

    assert hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest() == SCHEMA_SHA256


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_compose_file_matches_the_compose_specification(name: str) -> None:
    """Each compose file validates against the Compose Specification JSON schema."""
    errors = sorted(_validator().iter_errors(files.compose(name)), key=str)
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_schema_check_rejects_broken_compose_files() -> None:
    """The validation can fail: unknown keys and unknown depends_on conditions are refused."""
    validator = _validator()
    bad_key = {"services": {"a": {"image": "x", "healthcheks": {}}}}
    bad_condition = {"services": {"a": {"image": "x", "depends_on": {"b": {"condition": "up"}}}}}
    assert list(validator.iter_errors(bad_key))
    assert list(validator.iter_errors(bad_condition))


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_start_order_waits_for_health(name: str) -> None:
    """Every dependency exists; "healthy" ones have a health check; one-shots do not restart."""
    services = files.compose(name)["services"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for service_name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{service_name} depends on unknown {target}"
            dependency = services[target]
            if rule["condition"] == "service_healthy":
                has_check = "healthcheck" in dependency or (
                    "build" in dependency and "HEALTHCHECK" in dockerfile
                )
                assert has_check, f"{service_name} waits for {target}, which has no health check"
            if rule["condition"] == "service_completed_successfully":
                assert "restart" not in dependency, f"{target} is a one-shot; it must not restart"
    # Every long-running service restarts by itself after a crash or a reboot.
    for service_name, service in services.items():
        if service_name != "authsvc-init":
            assert service.get("restart") == "unless-stopped", service_name


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_only_nginx_is_published_and_the_backend_is_internal(name: str) -> None:
    """Nothing but nginx publishes a port; the backend network has no route out."""
    data = files.compose(name)
    published = {n for n, s in data["services"].items() if s.get("ports")}
    assert published == {"nginx"}
    assert data["networks"]["backend"] == {"internal": True}
    for service_name, service in data["services"].items():
        networks = set(service["networks"])
        assert networks == ({"public", "backend"} if service_name == "nginx" else {"backend"})


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_every_variable_is_in_env_example(name: str) -> None:
    """Each ${VAR} of the compose file is set in .env.example or has a default."""
    example = files.env_example()
    text = files.without_comments((REPO_ROOT / name).read_text())
    for match in files.INTERPOLATION.finditer(text):
        variable, operator = match.group(1), match.group(2)
        if operator in (":-", "-"):
            continue
        assert variable in example, f"{name}: ${{{variable}}} is missing from .env.example"


def test_env_example_has_no_dead_or_real_secrets() -> None:
    """Every .env.example variable is used by a compose file; secrets are all placeholders."""
    used = set()
    for name in files.COMPOSE_FILES:
        text = files.without_comments((REPO_ROOT / name).read_text())
        used |= {m.group(1) for m in files.INTERPOLATION.finditer(text)}
    example = files.env_example()
    assert set(example) <= used, f"unused: {sorted(set(example) - used)}"
    for variable, value in example.items():
        if any(word in variable for word in SECRET_WORDS):
            assert value == "CHANGE-ME", f"{variable} must be a CHANGE-ME placeholder"


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_secrets_are_never_literals(name: str) -> None:
    """Secret-looking environment values all come from .env and refuse to be empty."""
    for service_name, service in files.compose(name)["services"].items():
        for key, value in files.service_environment(service).items():
            is_secret = any(word in key for word in SECRET_WORDS) or (
                key.startswith("AUTHSVC_")
                and key.removeprefix("AUTHSVC_").lower() in config.SECRET_KEYS
            )
            if not is_secret or key in ("AUTHSVC_ORTHANC_SERVER_ID",):
                continue
            found = list(files.INTERPOLATION.finditer(value))
            assert found, f"{name}: {service_name}.{key} is a literal secret"
            assert all(m.group(2) == ":?" for m in found), (
                f"{name}: {service_name}.{key} must use ${{VAR:?}} so compose refuses an empty one"
            )


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_authsvc_accepts_the_environment_compose_gives_it(name: str, tmp_path: Path) -> None:
    """authsvc's own configuration loader accepts the interpolated environment of authsvc."""
    data = files.compose(name)
    env = files.filled_env()
    for service_name in ("authsvc", "authsvc-init"):
        raw = files.service_environment(data["services"][service_name])
        unknown = [
            k
            for k in raw
            if k.startswith("AUTHSVC_") and k.removeprefix("AUTHSVC_").lower() not in config.KEYS
        ]
        assert not unknown, f"{name}: {service_name} sets keys authsvc does not know: {unknown}"
        environ = {k: files.interpolate(v, env) for k, v in raw.items()}
        settings = config.load_settings(environ=environ, secrets_dir=tmp_path)
        assert settings.env is config.Environment.production
        assert settings.sqlalchemy_url.startswith("postgresql+psycopg://authsvc:")
        assert settings.proxy_count == 1


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_mounted_files_exist(name: str) -> None:
    """Every bind-mounted path exists in the repository (./certs is the operator's)."""
    for service_name, service in files.compose(name)["services"].items():
        for source, _ in files.bind_mounts(service):
            if source == "./certs":
                continue
            assert files.path_of(source).exists(), f"{name}: {service_name} mounts {source}"


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_nginx_environment_fills_exactly_the_template_placeholders(name: str) -> None:
    """nginx gets a value for each placeholder of the templates it mounts, and nothing more."""
    nginx = files.compose(name)["services"]["nginx"]
    wanted: set[str] = set()
    for source, target in files.bind_mounts(nginx):
        if target.startswith("/etc/nginx/templates/"):
            assert target.endswith(".template")
            wanted |= deploy_kit.placeholders(files.path_of(source))
    assert wanted
    assert set(files.service_environment(nginx)) == wanted


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_orthanc_environment_fills_the_configuration(name: str) -> None:
    """Each Orthanc gets every ${VAR} its mounted configuration files expand."""
    for service_name, service in files.compose(name)["services"].items():
        if not service["image"].startswith("${ORTHANC_IMAGE"):
            continue
        env = files.service_environment(service)
        config_files = [s for s, t in files.bind_mounts(service) if t.startswith("/etc/orthanc/")]
        assert config_files, service_name
        for source in config_files:
            text = files.path_of(source).read_text()
            needed = set(files.INTERPOLATION_NAMES.findall(text))
            assert needed <= set(env), f"{service_name}: {source} needs {needed - set(env)}"


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_keycloak_environment_fills_the_realm(name: str) -> None:
    """Keycloak gets every placeholder of the realm it imports."""
    keycloak = files.compose(name)["services"]["keycloak"]
    assert set(files.service_environment(keycloak)) >= files.realm_placeholders()
    assert ("./config/keycloak", "/opt/keycloak/data/import") in files.bind_mounts(keycloak)


def test_shared_services_are_the_same_in_both_stacks() -> None:
    """postgres and keycloak are defined identically in both compose files."""
    plugin, gate = (files.compose(n)["services"] for n in files.COMPOSE_FILES)
    for service in ("postgres", "keycloak"):
        assert plugin[service] == gate[service], service
    # authsvc differs only in how it reaches Orthanc.
    plugin_env = files.service_environment(plugin["authsvc"])
    gate_env = files.service_environment(gate["authsvc"])
    # ...and in the plugin-only settings (its key and credentials, share links through OE2).
    orthanc_keys = {
        "AUTHSVC_ORTHANC_URL", "AUTHSVC_ORTHANC_SERVICE_KEY",
        "AUTHSVC_PLUGIN_USERNAME", "AUTHSVC_PLUGIN_PASSWORD", "AUTHSVC_PLUGIN_SHARE_LINKS",
        "AUTHSVC_PUBLIC_ORTHANC_ROOT", "AUTHSVC_PUBLIC_LANDING_ROOT",
    }  # fmt: skip
    assert {k: v for k, v in plugin_env.items() if k not in orthanc_keys} == {
        k: v for k, v in gate_env.items() if k not in orthanc_keys
    }


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_a_small_unprivileged_image() -> None:
    """Two stages, a slim Python 3.11 base, non-root, health check on /readyz, authsvc serve."""
    instructions = _dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    base = next(rest for word, rest in instructions if word == "ARG" and "PYTHON_IMAGE" in rest)
    assert re.search(r"python:3\.11-slim", base)
    final = instructions[[w for w, _ in instructions].index("FROM", 1) + 1 :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    # Nothing is compiled in the final stage: it installs wheels only, offline.
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert "--no-index" in runs and "apt-get" not in runs and "gcc" not in runs
    healthcheck = next(rest for word, rest in final if word == "HEALTHCHECK")
    assert "/readyz" in healthcheck
    assert ("ENTRYPOINT", '["authsvc"]') in final and ("CMD", '["serve"]') in final


def test_docker_build_context_holds_what_the_dockerfile_copies() -> None:
    """Each COPY source exists and is let through by .dockerignore (an allow-list)."""
    allowed = {
        line.strip().lstrip("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    for word, rest in _dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _target = rest.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f".dockerignore excludes {source}"


def _service(name: str, service: str) -> dict[str, Any]:
    return dict(files.compose(name)["services"][service])


@pytest.mark.parametrize("name", files.COMPOSE_FILES)
def test_authsvc_runs_read_only_from_the_built_image(name: str) -> None:
    """authsvc and its schema job share the image built here; the server's root is read-only."""
    authsvc, init = _service(name, "authsvc"), _service(name, "authsvc-init")
    assert authsvc["build"] == init["build"] == "."
    assert authsvc["image"] == init["image"]
    assert authsvc["read_only"] is True
    assert init["command"] == ["init-db"] and authsvc["command"] == ["serve"]
