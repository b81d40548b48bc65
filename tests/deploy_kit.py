"""Render and run the deployment kit's nginx templates (nginx/*.template) outside Docker.

The templates are http-context files with envsubst-style ``${NAME}`` placeholders, the way the
official nginx image renders ``/etc/nginx/templates/*.template`` into ``conf.d``. Here they are
rendered with explicit values, wrapped in a minimal main configuration that keeps every file
under a private state directory, and then checked with ``nginx -t`` or started as a child
process (see :func:`start_nginx_templates`), so the integration tests drive the very files an
operator deploys.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests import processes

NGINX_DIR = processes.REPO_ROOT / "nginx"
# Upper-case names only: nginx's own variables ($host, $request_uri...) are lower case, and
# the nginx image's envsubst only replaces variables that are defined, i.e. ours.
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class TemplateError(ValueError):
    """A template placeholder has no value, or a value names no placeholder."""


def _code(text: str) -> str:
    """Return the template without its comment lines (placeholders documented there)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def placeholders(template: Path) -> set[str]:
    """Return the names of the ``${NAME}`` placeholders the template's directives use."""
    return set(PLACEHOLDER.findall(_code(template.read_text())))


def render(template: Path, values: Mapping[str, str]) -> str:
    """Return the template with every placeholder replaced; refuse missing or extra values."""
    wanted = placeholders(template)
    missing = sorted(wanted - values.keys())
    extra = sorted(values.keys() - wanted)
    if missing or extra:
        raise TemplateError(f"{template.name}: missing values {missing}, unused values {extra}")
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template.read_text())


#: Placeholders that name files of the kit or directories nginx writes: the kit fills them in
#: (under the state directory) when a caller gives no value, as an operator's volume would.
KIT_PATHS = {
    "GATE_NJS": lambda state: NGINX_DIR / "authsvc_gate.js",
    "GATE_CACHE_DIR": lambda state: state / "gate-cache",
}
JS_MODULE = "ngx_http_js_module.so"


@functools.cache
def js_module() -> Path:
    """Return nginx's njs module (Debian: libnginx-mod-http-js; scripts/testenv installs it)."""
    version = subprocess.run(
        [processes._nginx_binary(), "-V"], capture_output=True, text=True, check=False
    ).stderr
    found = re.search(r"--modules-path=(\S+)", version)
    module = Path(found.group(1) if found else "/usr/lib/nginx/modules") / JS_MODULE
    if not module.exists():
        raise processes.ServiceError(f"{module} is missing: run scripts/testenv/setup.sh")
    return module


def main_config(state_dir: Path, includes: list[Path]) -> str:
    """Return a main nginx.conf that includes the rendered http-context files."""
    state = state_dir.resolve()
    # As root the workers would run as "nobody", who cannot enter pytest's 0700 directories.
    run_as = "user root;" if os.geteuid() == 0 else ""
    uses_js = any("js_import" in _code(path.read_text()) for path in includes)
    lines = [
        f"load_module {js_module()};" if uses_js else "",
        run_as,
        "worker_processes 1;",
        "daemon off;",
        f"pid {state}/nginx.pid;",
        "error_log stderr notice;",
        "events { worker_connections 128; }",
        "http {",
        "    default_type application/octet-stream;",
        f"    client_body_temp_path {state}/tmp/client_body;",
        f"    proxy_temp_path {state}/tmp/proxy;",
        f"    fastcgi_temp_path {state}/tmp/fastcgi;",
        f"    uwsgi_temp_path {state}/tmp/uwsgi;",
        f"    scgi_temp_path {state}/tmp/scgi;",
        *(f"    include {path.resolve()};" for path in includes),
        "}",
    ]
    return "\n".join(lines) + "\n"


def write_config(state_dir: Path, templates: Mapping[str, Mapping[str, str]]) -> Path:
    """Render each ``nginx/<name>`` template into state_dir; return the main config's path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "tmp").mkdir(exist_ok=True)
    includes = []
    for name, values in templates.items():
        template = NGINX_DIR / name
        defaults = {
            key: str(make(state_dir.resolve()))
            for key, make in KIT_PATHS.items()
            if key in placeholders(template)
        }
        rendered = state_dir / name.removesuffix(".template")
        rendered.write_text(render(template, {**defaults, **values}))
        includes.append(rendered)
    config = state_dir / "nginx.conf"
    config.write_text(main_config(state_dir, includes))
    return config


def nginx_argv(state_dir: Path, config: Path) -> list[str]:
    """Return the command that runs a private nginx on config (add ``-t`` to only check it)."""
    nginx = processes._nginx_binary()
    # -e: without it nginx opens /var/log/nginx/error.log before reading our config.
    return [nginx, "-p", str(state_dir.resolve()), "-c", str(config.resolve()), "-e", "stderr"]


def check(state_dir: Path, templates: Mapping[str, Mapping[str, str]]) -> str:
    """Run ``nginx -t`` on the rendered templates; return its output, raise if it fails."""
    config = write_config(state_dir, templates)
    result = subprocess.run(
        [*nginx_argv(state_dir, config), "-t"], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise processes.ServiceError(f"nginx -t failed on {list(templates)}:\n{output}")
    return output


def start_nginx_templates(
    state_dir: Path,
    port: int,
    templates: Mapping[str, Mapping[str, str]],
    *,
    ready_path: str | None = None,
) -> processes.NginxService:
    """Start a private nginx on the rendered templates; ``port`` is the one to wait for.

    Example, the gate in front of a test Orthanc and authsvc::

        start_nginx_templates(state, port, {"gate.conf.template": {
            "GATE_LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "_",
            "AUTHSVC_UPSTREAM": "127.0.0.1:8000", "ORTHANC_UPSTREAM": "127.0.0.1:8042",
            "KEYCLOAK_UPSTREAM": "127.0.0.1:8080"}})

    ``ready_path`` None waits for a TCP accept (a TLS listener answers no plain HTTP).
    """
    config = write_config(state_dir, templates)
    service = processes.NginxService(
        "nginx", nginx_argv(state_dir, config), port, state_dir / "nginx.log", ready_path=ready_path
    )
    service.config_path = config
    service.upstreams = {}
    return service.start()  # type: ignore[return-value]


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a throw-away certificate for localhost and 127.0.0.1; return (certificate, key).

    Self-signed and marked as a CA, so ``requests`` can verify it (``verify=certificate``).
    Named as nginx/tls.conf.template expects (``fullchain.pem``, ``privkey.pem``).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
