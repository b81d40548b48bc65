"""nginx/*.template: every combination the compose files use passes ``nginx -t``, and the
routing does what the templates' comments promise, on the test environment's real nginx.

authsvc's side is a stand-in here (``stub_authsvc``: 204/403/401 from the Authorization
header), so these tests pin nginx's half of the auth_request contract: which headers reach
``GET /gate/auth``, that no body does, that the answer is obeyed, and where each path goes.
The Orthanc behind nginx is the real one, on the kit's configuration files.
"""

from __future__ import annotations

import http.client
import io
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from authsvc.orthanc.routes import Capability
from authsvc.orthanc.routes import RouteFamily
from authsvc.orthanc.routes import classify
from tests import deploy_kit
from tests import processes
from tests.deploy import files
from tests.deploy.conftest import KitOrthanc
from tests.deploy.conftest import Seen
from tests.deploy.conftest import StubAuthsvc
from tests.deploy.conftest import TlsFiles
from tests.dicom_factory import make_study

pytestmark = pytest.mark.integration

RETRIEVE_URL = "00081190"


def _upstreams(authsvc: int, orthanc: int, keycloak: int) -> dict[str, str]:
    return {
        "SERVER_NAME": "_",
        "AUTHSVC_UPSTREAM": f"127.0.0.1:{authsvc}",
        "ORTHANC_UPSTREAM": f"127.0.0.1:{orthanc}",
        "KEYCLOAK_UPSTREAM": f"127.0.0.1:{keycloak}",
    }


def _tls(tls: TlsFiles, http_port: int, https_port: int) -> dict[str, str]:
    return {
        "TLS_CERTIFICATE": str(tls.certificate),
        "TLS_CERTIFICATE_KEY": str(tls.key),
        "HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "SERVER_NAME": "_",
        "PUBLIC_URL": f"https://127.0.0.1:{https_port}",
    }


# ---------------------------------------------------------------- nginx -t


@pytest.mark.parametrize(
    ("combination", "orthanc_auth_request"),
    [
        (("gate.conf.template",), None),
        (("tls.conf.template", "gate.conf.template"), None),
        (("tls.conf.template", "plugin.conf.template"), "off"),
        (("tls.conf.template", "plugin.conf.template"), "/_authsvc_gate"),
    ],
    ids=["gate-plain", "gate-tls", "plugin-tls", "plugin-and-gate-tls"],
)
def test_rendered_templates_pass_nginx_t(
    combination: tuple[str, ...],
    orthanc_auth_request: str | None,
    tls_files: TlsFiles,
    tmp_path: Path,
) -> None:
    """Each combination the compose files (or the tests) render is a valid nginx config."""
    ports = [processes.free_port() for _ in range(5)]
    values: dict[str, dict[str, str]] = {}
    for name in combination:
        if name == "tls.conf.template":
            values[name] = _tls(tls_files, ports[0], ports[1])
        elif name == "gate.conf.template":
            listen = f"127.0.0.1:{ports[1]}" + (
                " ssl" if "tls.conf.template" in combination else ""
            )
            values[name] = {**_upstreams(*ports[2:]), "GATE_LISTEN": listen}
        else:
            values[name] = {
                **_upstreams(*ports[2:]),
                "HTTPS_LISTEN": f"127.0.0.1:{ports[1]}",
                "ORTHANC_AUTH_REQUEST": orthanc_auth_request or "off",
            }
    output = deploy_kit.check(tmp_path, values)
    assert "test is successful" in output


def test_compose_renders_a_combination_that_is_tested() -> None:
    """The template sets compose mounts are the ones test_rendered_templates_pass_nginx_t runs."""
    for name, expected in (
        ("docker-compose.yml", {"tls.conf.template", "plugin.conf.template"}),
        ("docker-compose.gate.yml", {"tls.conf.template", "gate.conf.template"}),
    ):
        nginx = files.compose(name)["services"]["nginx"]
        mounted = {Path(t).name for _, t in files.bind_mounts(nginx) if "/templates/" in t}
        assert mounted == expected


def test_image_main_config_loads_njs_and_passes_nginx_t(tmp_path: Path) -> None:
    """nginx/nginx.conf (the gate stack's main file) loads njs and runs the gate template.

    The image's paths are moved under tmp_path (module, pid, logs, conf.d), so the file nginx
    checks is the deployed one with only its locations changed.
    """
    nginx = files.compose("docker-compose.gate.yml")["services"]["nginx"]
    mounts = {target: files.path_of(source) for source, target in files.bind_mounts(nginx)}
    env = files.service_environment(nginx)
    assert mounts["/etc/nginx/nginx.conf"] == deploy_kit.NGINX_DIR / "nginx.conf"
    assert mounts[env["GATE_NJS"]] == deploy_kit.NGINX_DIR / "authsvc_gate.js"
    ports = [processes.free_port() for _ in range(4)]
    gate_values = {**_upstreams(*ports[1:]), "GATE_LISTEN": f"127.0.0.1:{ports[0]}"}
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "gate.conf").write_text(
        deploy_kit.render(
            deploy_kit.NGINX_DIR / "gate.conf.template",
            {
                **gate_values,
                "GATE_NJS": str(deploy_kit.NGINX_DIR / "authsvc_gate.js"),
                "GATE_CACHE_DIR": str(tmp_path / "cache"),
            },
        )
    )
    text = (deploy_kit.NGINX_DIR / "nginx.conf").read_text()
    for image_path, here in (
        ("modules/ngx_http_js_module.so", str(deploy_kit.js_module())),
        ("user nginx;", "user root;" if os.geteuid() == 0 else ""),
        ("/var/log/nginx/error.log", str(tmp_path / "error.log")),
        ("/var/run/nginx.pid", str(tmp_path / "nginx.pid")),
        ("/etc/nginx/conf.d/*.conf", f"{conf_d}/*.conf"),
    ):
        assert image_path in text
        text = text.replace(image_path, here)
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    result = subprocess.run(
        [*deploy_kit.nginx_argv(tmp_path, config), "-t"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_nginx_t_catches_a_broken_template(tmp_path: Path) -> None:
    """The check can fail: an upstream that is not host:port is refused by nginx -t."""
    values = {**_upstreams(1, 2, 3), "GATE_LISTEN": "127.0.0.1:9"}
    values["ORTHANC_UPSTREAM"] = "127.0.0.1:notaport"
    with pytest.raises(processes.ServiceError, match="nginx -t failed"):
        deploy_kit.check(tmp_path, {"gate.conf.template": values})


def test_templates_document_their_placeholders() -> None:
    """Each template's header lists exactly the placeholders its directives use."""
    for template in sorted(deploy_kit.NGINX_DIR.glob("*.template")):
        header = "\n".join(
            line for line in template.read_text().splitlines() if line.lstrip().startswith("#")
        )
        documented = set(deploy_kit.PLACEHOLDER.findall(header))
        assert documented >= deploy_kit.placeholders(template), template.name


# ---------------------------------------------------------------- the gate, running


@pytest.fixture(scope="module")
def gate(
    kit_state: Path, stub_authsvc: StubAuthsvc, gate_orthanc: KitOrthanc
) -> Iterator[processes.NginxService]:
    """nginx/gate.conf.template in front of the gate Orthanc and the authsvc stand-in."""
    port = processes.free_port()
    values = {
        **_upstreams(stub_authsvc.port, gate_orthanc.port, processes.free_port()),
        "GATE_LISTEN": f"127.0.0.1:{port}",
    }
    service = deploy_kit.start_nginx_templates(
        kit_state / "nginx-gate", port, {"gate.conf.template": values}, ready_path="/gate/"
    )
    yield service
    service.stop()


def _last_gate_call(stub: StubAuthsvc) -> Seen:
    calls = stub.requests_to("/gate/auth")
    assert calls, "nginx did not ask authsvc"
    return calls[-1]


def test_gate_asks_authsvc_with_method_uri_and_credentials(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """GET /gate/auth gets X-Original-Method/-URI (query kept) and every credential header."""
    headers = {"Authorization": "Bearer allow", "api-key": "k-1", "token": "t-1"}
    answer = requests.get(f"{gate.url}/system?token=abc", headers=headers, timeout=10)
    assert answer.status_code == 200 and "Version" in answer.json()
    call = _last_gate_call(stub_authsvc)
    assert call.method == "GET"
    assert call.headers["x-original-method"] == "GET"
    assert call.headers["x-original-uri"] == "/system?token=abc"
    assert call.headers["authorization"] == "Bearer allow"
    assert call.headers["api-key"] == "k-1" and call.headers["token"] == "t-1"
    assert call.headers["x-forwarded-proto"] == "http"
    assert "x-forwarded-prefix" not in call.headers


def test_gate_sends_no_body_to_authsvc_and_streams_uploads_to_orthanc(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """An upload is decided on method and URI alone; the body goes to Orthanc only."""
    instance = make_study(n_instances=1)[0]
    answer = requests.post(
        f"{gate.url}/instances",
        data=instance,
        headers={"Authorization": "Bearer allow", "Content-Type": "application/dicom"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["Status"] in ("Success", "AlreadyStored")
    call = _last_gate_call(stub_authsvc)
    assert call.headers["x-original-method"] == "POST"
    assert call.method == "GET" and call.body == b""
    assert call.headers.get("content-length", "0") == "0"


@pytest.mark.parametrize(
    ("authorization", "status"), [("Bearer deny", 403), ("", 401), ("Bearer other", 401)]
)
def test_gate_obeys_denials(gate: processes.NginxService, authorization: str, status: int) -> None:
    """403 and 401 from authsvc reach the client; a 401 keeps authsvc's challenge."""
    headers = {"Authorization": authorization} if authorization else {}
    answer = requests.delete(f"{gate.url}/studies/anything", headers=headers, timeout=10)
    assert answer.status_code == status
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="authsvc"'


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/albums/a1/studies",
        "/api/albums",
        "/admin",
        "/admin/albums/a1",
        "/static/admin.css",
    ],
)
def test_gate_routes_authsvc_paths_to_authsvc(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc, path: str
) -> None:
    """Album DICOMweb, the JSON API and the admin pages go to authsvc, without a gate call."""
    before = len(stub_authsvc.requests_to("/gate/auth"))
    answer = requests.get(f"{gate.url}{path}", headers={"X-Forwarded-Prefix": "/evil"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"stub": "authsvc", "path": path}
    assert len(stub_authsvc.requests_to("/gate/auth")) == before
    seen = stub_authsvc.requests_to(path)[-1]
    assert "x-forwarded-prefix" not in seen.headers  # a client cannot move authsvc's URLs
    assert seen.headers["x-forwarded-host"] == f"127.0.0.1:{gate.port}"


def test_gate_decision_point_is_not_reachable_from_outside(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """/gate/auth from a client is a 404 from nginx; authsvc never sees it."""
    before = len(stub_authsvc.seen)
    for path in ("/gate/auth", "/_authsvc_gate"):
        assert requests.get(f"{gate.url}{path}", timeout=10).status_code == 404
    assert len(stub_authsvc.seen) == before


def test_gate_dicomweb_urls_point_back_through_nginx(
    gate: processes.NginxService, gate_orthanc: KitOrthanc
) -> None:
    """QIDO through the gate gives RetrieveURLs on nginx's host:port, at the site root."""
    instance = make_study(n_instances=1)
    requests.post(f"{gate_orthanc.url}/instances", data=instance[0], timeout=30).raise_for_status()
    uid = pydicom.dcmread(io.BytesIO(instance[0])).StudyInstanceUID
    answer = requests.get(
        f"{gate.url}/dicom-web/studies",
        params={"StudyInstanceUID": uid},
        headers={"Authorization": "Bearer allow", "Accept": "application/dicom+json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    url = answer.json()[0][RETRIEVE_URL]["Value"][0]
    assert url == f"http://127.0.0.1:{gate.port}/dicom-web/studies/{uid}"
    assert requests.get(url, headers={"Authorization": "Bearer allow"}, timeout=10).ok


def test_gate_fails_closed_with_503_when_authsvc_is_down(
    kit_state: Path, gate_orthanc: KitOrthanc
) -> None:
    """No authsvc: nginx answers 503 with a JSON reason, and Orthanc is never reached."""
    port = processes.free_port()
    dead = processes.free_port()  # nothing listens there
    values = {**_upstreams(dead, gate_orthanc.port, dead), "GATE_LISTEN": f"127.0.0.1:{port}"}
    nginx = deploy_kit.start_nginx_templates(
        kit_state / "nginx-gate-down", port, {"gate.conf.template": values}, ready_path="/gate/"
    )
    secret = "sekret-share-link-4712"
    try:
        answer = requests.get(
            f"{nginx.url}/system?token={secret}",
            headers={"Authorization": "Bearer allow"},
            timeout=10,
        )
        assert answer.status_code == 503
        assert answer.json()["error"] == "authorization_unavailable"
    finally:
        nginx.stop()
    # nginx's error messages quote the request line: at "error" level, "connect() failed ...
    # request: GET /system?token=..." put the token in the log (the templates log at "crit").
    log = nginx.log_path.read_text()
    assert '"GET /system HTTP/1.1" 503' in log
    assert secret not in log


def test_gate_keeps_authsvc_credentials_from_orthanc(
    kit_state: Path, stub_authsvc: StubAuthsvc
) -> None:
    """authsvc gets every credential; the Orthanc behind the gate gets none of them (HTTP Basic
    alone would pass, by the template's map). The stand-in plays both authsvc and Orthanc."""
    port = processes.free_port()
    values = {
        **_upstreams(stub_authsvc.port, stub_authsvc.port, processes.free_port()),
        "GATE_LISTEN": f"127.0.0.1:{port}",
    }
    nginx = deploy_kit.start_nginx_templates(
        kit_state / "nginx-gate-strip", port, {"gate.conf.template": values}, ready_path="/gate/"
    )
    credentials = {
        "Authorization": "Bearer allow",
        "token": "sh1.k1.a-share-link",
        "api-key": "ask_0123456789abcdef_secret",
        "Cookie": "authsvc_session=the-admin-session",
    }
    try:
        path = f"/patients?strip={secrets.token_hex(4)}"
        answer = requests.get(f"{nginx.url}{path}", headers=credentials, timeout=10)
        assert answer.status_code == 200 and answer.json()["path"] == path
    finally:
        nginx.stop()
    asked = _last_gate_call(stub_authsvc).headers
    assert {name.lower(): asked[name.lower()] for name in credentials} == {
        name.lower(): value for name, value in credentials.items()
    }
    (forwarded,) = stub_authsvc.requests_to(path)
    assert not {"authorization", "token", "api-key", "cookie"} & set(forwarded.headers)


def test_templates_log_errors_at_crit_only() -> None:
    """Each server block that handles Orthanc's URIs keeps request lines (and ?token=) out of
    nginx's error log."""
    for name in ("gate.conf.template", "plugin.conf.template"):
        text = (deploy_kit.NGINX_DIR / name).read_text()
        servers = text.count("\nserver {")
        assert servers >= 1 and text.count("    error_log stderr crit;") == servers, name
    plugin = (deploy_kit.NGINX_DIR / "plugin.conf.template").read_text()
    orthanc_location = plugin.split("location /orthanc/ {", 1)[1].split("\n    }", 1)[0]
    assert 'proxy_set_header Cookie "";' in orthanc_location


def test_gate_access_log_never_holds_query_strings(
    gate: processes.NginxService,
) -> None:
    """Tokens travel in ?token=...; the access log records the path only."""
    secret = "sekret-token-value-4711"
    requests.get(f"{gate.url}/system?token={secret}", timeout=10)
    requests.get(f"{gate.url}/api/albums?token={secret}", timeout=10)
    log = gate.log_path.read_text()
    assert '"GET /api/albums HTTP/1.1"' in log
    assert secret not in log


# ---------------------------------------------------------------- the decision cache

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.1.1.1"
_S = f"/dicom-web/studies/{STUDY}"
_I = f"{_S}/series/{SERIES}/instances/{INSTANCE}"

# Reads below one study that share its decision (authsvc_gate.js groups them).
GROUPED = [
    _S,
    f"{_S}/metadata",
    f"{_S}/series",
    f"{_S}/instances",
    f"{_S}/rendered",
    f"{_S}/thumbnail",
    f"{_S}/series/{SERIES}",
    f"{_S}/series/{SERIES}/metadata",
    f"{_S}/series/{SERIES}/instances",
    _I,
    f"{_I}/metadata",
    f"{_I}/rendered",
    f"{_I}/frames/1",
    f"{_I}/frames/2",
    f"{_I}/frames/1,2,3",
    f"{_I}/frames/7/rendered",
    f"{_I}/frames/1/thumbnail",
]
# Same study, but each keeps its own key: authsvc must see them.
UNGROUPED = [
    f"{_S}/",  # trailing slash
    f"{_S}/series/{SERIES}/instances/{INSTANCE}/bulk/7FE00010",
    f"{_S}/series/{SERIES}/../../../../tools/find",
    f"{_S}/series/{SERIES}/%2e%2e/%2e%2e",
    f"{_S}/Series/{SERIES}",
    f"{_S}/series?includefield=all",
    f"{_S}/series?token=abc&limit=1",
    f"{_S}/series/{'1' * 65}",
    f"{_S}/series/{SERIES}/frames/1",
    f"{_I}/frames/",
    f"{_I}/frames/a",
    f"{_S}/series/1..2",
    f"{_S}/series/.1",
    f"{_I}/frames/1,,2",
    f"{_I}/frames/1/rendered/x",
    f"{_S}/metadata?token=a%2Fb",
    f"{_S}/metadata?Token=abc",
    f"{_S}/metadata/",
]


def _gate_calls(stub: StubAuthsvc, authorization: str) -> list[Seen]:
    return [
        s for s in stub.requests_to("/gate/auth") if s.headers.get("authorization") == authorization
    ]


def _raw_get(port: int, uri: str, headers: dict[str, str]) -> int:
    """Send ``GET uri`` exactly as written; return the status."""
    connection = http.client.HTTPConnection(processes.LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", uri, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def _fresh(ttl: int) -> str:
    return f"Bearer allow-ttl-{ttl}-{secrets.token_hex(8)}"


def test_grouped_reads_are_what_authsvc_decides_on_the_study_alone() -> None:
    """Every URI the nginx script groups is, for authsvc's classifier, a read of that study."""
    for uri in GROUPED:
        for method in ("GET", "HEAD"):
            target = classify(method, uri)
            assert target.capability is Capability.READ, uri
            assert target.family is RouteFamily.DICOMWEB_WADO, uri
            assert {r.study_uid for r in target.resources} == {STUDY}, uri


def test_gate_reuses_a_yes_for_the_reads_of_one_study(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """One decision per (credentials, method, study) while authsvc's TTL runs."""
    bearer = _fresh(60)
    headers = {"Authorization": bearer}
    with requests.Session() as http:
        for uri in GROUPED:
            assert http.get(f"{gate.url}{uri}", headers=headers, timeout=10).status_code != 401
        assert len(_gate_calls(stub_authsvc, bearer)) == 1
        # Another study, another method, another header: each asks authsvc once.
        http.get(f"{gate.url}/dicom-web/studies/{OTHER_STUDY}", headers=headers, timeout=10)
        http.head(f"{gate.url}{_S}/metadata", headers=headers, timeout=10)
        http.get(f"{gate.url}{_S}", headers={**headers, "api-key": "k"}, timeout=10)
        assert len(_gate_calls(stub_authsvc, bearer)) == 4
        # A URI outside the grouped shapes is its own key (asked once, then reused as is).
        http.get(f"{gate.url}/system", headers=headers, timeout=10)
        http.get(f"{gate.url}/system", headers=headers, timeout=10)
        assert len(_gate_calls(stub_authsvc, bearer)) == 5
        # Accept and a request id are not: a viewer's metadata and frames share the study's yes.
        for uri, accept in ((f"{_S}/metadata", "application/dicom+json"), (_I, "*/*")):
            extra = {"Accept": accept, "X-Request-ID": secrets.token_hex(4)}
            http.get(f"{gate.url}{uri}", headers={**headers, **extra}, timeout=10)
        assert len(_gate_calls(stub_authsvc, bearer)) == 5
        # A token argument is part of the key; reads with the same one share it.
        for uri in (f"{_S}/metadata", f"{_I}/frames/3"):
            http.get(f"{gate.url}{uri}?token=abc-DEF_0.9~", headers=headers, timeout=10)
        assert len(_gate_calls(stub_authsvc, bearer)) == 6


def test_gate_asks_about_every_odd_shape_under_a_cached_study(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """Dot segments, escapes, case variants, extra arguments: never served from the cache."""
    bearer = _fresh(60)
    headers = {"Authorization": bearer}
    requests.get(f"{gate.url}{_I}/frames/1", headers=headers, timeout=10)
    asked = {s.headers["x-original-uri"] for s in _gate_calls(stub_authsvc, bearer)}
    assert asked == {f"{_I}/frames/1"}
    for uri in UNGROUPED:
        _raw_get(gate.port, uri, headers)  # requests would resolve the dot segments itself
    asked = [s.headers["x-original-uri"] for s in _gate_calls(stub_authsvc, bearer)]
    assert asked[1:] == UNGROUPED


def test_gate_never_reuses_a_no_nor_a_zero_ttl_yes(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    for authorization in ("Bearer deny", _fresh(0)):
        before = len(_gate_calls(stub_authsvc, authorization))
        for _ in range(3):
            requests.get(
                f"{gate.url}{_S}/metadata", headers={"Authorization": authorization}, timeout=10
            )
        assert len(_gate_calls(stub_authsvc, authorization)) == before + 3


def test_gate_asks_again_when_the_ttl_is_over(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    bearer = _fresh(1)
    requests.get(f"{gate.url}{_S}", headers={"Authorization": bearer}, timeout=10)
    requests.get(f"{gate.url}{_S}", headers={"Authorization": bearer}, timeout=10)
    assert len(_gate_calls(stub_authsvc, bearer)) == 1
    time.sleep(2.1)
    requests.get(f"{gate.url}{_S}", headers={"Authorization": bearer}, timeout=10)
    assert len(_gate_calls(stub_authsvc, bearer)) == 2


def test_gate_cache_holds_no_credential(
    gate: processes.NginxService, stub_authsvc: StubAuthsvc
) -> None:
    """Entries are keyed by a SHA-256 digest: no token, key or URI query is written to disk."""
    bearer = _fresh(60)
    key = f"api-key-{secrets.token_hex(8)}"
    query = f"token-{secrets.token_hex(8)}"
    headers = {"Authorization": bearer, "api-key": key}
    requests.get(f"{gate.url}/system?token={query}", headers=headers, timeout=10)
    requests.get(f"{gate.url}{_S}?token={query}", headers=headers, timeout=10)
    assert len(_gate_calls(stub_authsvc, bearer)) == 2
    entries = [p for p in (gate.config_path.parent / "gate-cache").rglob("*") if p.is_file()]
    assert entries
    for entry in entries:
        stored = entry.read_bytes()
        for secret in (bearer.split()[1], key, query):
            assert secret.encode() not in stored


# ---------------------------------------------------------------- the plugin stack's proxy


def _plugin_proxy(
    state: Path, stub: StubAuthsvc, orthanc: KitOrthanc, tls_files: TlsFiles, auth_request: str
) -> processes.NginxService:
    https, http = processes.free_port(), processes.free_port()
    service = deploy_kit.start_nginx_templates(
        state,
        https,
        {
            "tls.conf.template": _tls(tls_files, http, https),
            "plugin.conf.template": {
                **_upstreams(stub.port, orthanc.port, processes.free_port()),
                "HTTPS_LISTEN": f"127.0.0.1:{https}",
                "ORTHANC_AUTH_REQUEST": auth_request,
            },
        },
    )
    service.http_port = http  # type: ignore[attr-defined]
    return service


@pytest.fixture(scope="module")
def plugin_proxy(
    kit_state: Path, stub_authsvc: StubAuthsvc, plugin_orthanc: KitOrthanc, tls_files: TlsFiles
) -> Iterator[processes.NginxService]:
    """tls.conf.template + plugin.conf.template in front of the plugin stack's Orthanc."""
    service = _plugin_proxy(
        kit_state / "nginx-plugin", stub_authsvc, plugin_orthanc, tls_files, "off"
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def plugin_and_gate(
    kit_state: Path, stub_authsvc: StubAuthsvc, plugin_orthanc: KitOrthanc, tls_files: TlsFiles
) -> Iterator[processes.NginxService]:
    """The same, with ORTHANC_AUTH_REQUEST=/_authsvc_gate: the gate also decides /orthanc/."""
    service = _plugin_proxy(
        kit_state / "nginx-plugin-gate", stub_authsvc, plugin_orthanc, tls_files, "/_authsvc_gate"
    )
    yield service
    service.stop()


def _https(proxy: processes.NginxService) -> str:
    return f"https://127.0.0.1:{proxy.port}"


def test_plugin_proxy_redirects_plain_http_to_the_public_url(
    plugin_proxy: processes.NginxService,
) -> None:
    """Port 80 only sends browsers to HTTPS, keeping the path and query."""
    http_port = plugin_proxy.http_port  # type: ignore[attr-defined]
    answer = requests.get(
        f"http://127.0.0.1:{http_port}/orthanc/ui/app/?x=1", allow_redirects=False, timeout=10
    )
    assert answer.status_code == 301
    assert answer.headers["Location"] == f"{_https(plugin_proxy)}/orthanc/ui/app/?x=1"


def test_plugin_proxy_serves_dicomweb_urls_with_prefix_scheme_and_port(
    plugin_proxy: processes.NginxService, plugin_orthanc: KitOrthanc, tls_files: TlsFiles
) -> None:
    """Behind /orthanc/ and TLS, RetrieveURL is https://<nginx host:port>/orthanc/dicom-web/..."""
    instance = make_study(n_instances=1)[0]
    requests.post(f"{plugin_orthanc.url}/instances", data=instance, timeout=30).raise_for_status()
    uid = pydicom.dcmread(io.BytesIO(instance)).StudyInstanceUID
    answer = requests.get(
        f"{_https(plugin_proxy)}/orthanc/dicom-web/studies",
        params={"StudyInstanceUID": uid},
        headers={"Accept": "application/dicom+json"},
        verify=str(tls_files.certificate),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    url = answer.json()[0][RETRIEVE_URL]["Value"][0]
    assert url == f"{_https(plugin_proxy)}/orthanc/dicom-web/studies/{uid}"
    assert requests.get(f"{url}/metadata", verify=str(tls_files.certificate), timeout=10).ok
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize(
    "path",
    ["/user/get-profile", "/tokens/validate", "/tokens/decode", "/settings/roles", "/gate/auth"],
)
def test_plugin_proxy_never_exposes_plugin_callbacks(
    plugin_proxy: processes.NginxService, stub_authsvc: StubAuthsvc, tls_files: TlsFiles, path: str
) -> None:
    """Only Orthanc calls authsvc's plugin callbacks; from outside they do not exist."""
    before = len(stub_authsvc.seen)
    answer = requests.post(
        f"{_https(plugin_proxy)}{path}", json={}, verify=str(tls_files.certificate), timeout=10
    )
    assert answer.status_code == 404
    assert len(stub_authsvc.seen) == before


@pytest.mark.parametrize(
    "path", ["/api/albums", "/admin", "/dicom-web/albums/a1/studies", "/static/admin.css"]
)
def test_plugin_proxy_routes_authsvc_paths_with_forwarded_headers(
    plugin_proxy: processes.NginxService, stub_authsvc: StubAuthsvc, tls_files: TlsFiles, path: str
) -> None:
    """authsvc gets its paths with the public scheme and host, and no client-made prefix."""
    answer = requests.get(
        f"{_https(plugin_proxy)}{path}",
        headers={"X-Forwarded-Prefix": "/evil", "Authorization": "Bearer x"},
        verify=str(tls_files.certificate),
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["path"] == path
    seen = stub_authsvc.requests_to(path)[-1]
    assert seen.headers["x-forwarded-proto"] == "https"
    assert seen.headers["x-forwarded-host"] == f"127.0.0.1:{plugin_proxy.port}"
    assert seen.headers["authorization"] == "Bearer x"
    assert "x-forwarded-prefix" not in seen.headers


def test_plugin_proxy_without_the_gate_never_asks_it(
    plugin_proxy: processes.NginxService, stub_authsvc: StubAuthsvc, tls_files: TlsFiles
) -> None:
    """ORTHANC_AUTH_REQUEST=off: Orthanc's plugin alone decides; nginx asks authsvc nothing."""
    before = len(stub_authsvc.requests_to("/gate/auth"))
    answer = requests.get(
        f"{_https(plugin_proxy)}/orthanc/system",
        headers={"Authorization": "Bearer deny"},
        verify=str(tls_files.certificate),
        timeout=10,
    )
    assert answer.status_code == 200 and "Version" in answer.json()
    assert len(stub_authsvc.requests_to("/gate/auth")) == before


@pytest.mark.parametrize(
    ("authorization", "status"), [("Bearer allow", 200), ("Bearer deny", 403), ("", 401)]
)
def test_plugin_and_gate_asks_the_gate_with_the_orthanc_uri(
    plugin_and_gate: processes.NginxService,
    stub_authsvc: StubAuthsvc,
    tls_files: TlsFiles,
    authorization: str,
    status: int,
) -> None:
    """Both: every /orthanc/ request is decided by the gate on the URI Orthanc sees."""
    headers = {"Authorization": authorization} if authorization else {}
    answer = requests.get(
        f"{_https(plugin_and_gate)}/orthanc/system?probe={status}",
        headers=headers,
        verify=str(tls_files.certificate),
        timeout=10,
    )
    assert answer.status_code == status
    if status == 200:
        assert "Version" in answer.json()
    call = _last_gate_call(stub_authsvc)
    assert call.headers["x-original-uri"] == f"/system?probe={status}"
    assert call.headers["x-original-method"] == "GET"
    assert call.headers["x-forwarded-proto"] == "https"


def test_plugin_and_gate_reuses_a_yes_per_study_of_the_orthanc_uri(
    plugin_and_gate: processes.NginxService, stub_authsvc: StubAuthsvc, tls_files: TlsFiles
) -> None:
    """The decision cache keys on the URI without /orthanc, so frames share their study's yes."""
    bearer = _fresh(60)
    for uri in GROUPED[:5]:
        requests.get(
            f"{_https(plugin_and_gate)}/orthanc{uri}",
            headers={"Authorization": bearer},
            verify=str(tls_files.certificate),
            timeout=10,
        )
    calls = _gate_calls(stub_authsvc, bearer)
    assert [c.headers["x-original-uri"] for c in calls] == [GROUPED[0]]
