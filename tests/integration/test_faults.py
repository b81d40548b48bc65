"""Faults with the real components: Orthanc, PostgreSQL or the OIDC provider stops mid-traffic.

authsvc runs under gunicorn on a PRIVATE PostgreSQL cluster (never the shared :5432 one), with
its own Orthanc and OIDC provider, so stopping them disturbs no other test. A round of mixed
traffic (gate decisions, album API reads and writes, plugin profiles) runs before, during and
after each outage. The rules:

* every answer is either the healthy answer or a *closed* one: the gate says 401/403 only
  (nginx turns anything else into a 500 for the viewer), the API and plugin a JSON 4xx/503;
  never a 500, never a 2xx where the healthy answer is a refusal;
* when the dependency returns, the healthy answers come back by themselves (no restart of
  authsvc).

An upload cut off mid-body leaves nothing lost: what Orthanc stored is in the album (or has a
pending label), and the attempt is in the audit trail.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import pydicom
import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from authsvc import albums
from authsvc.app import create_app
from authsvc.credentials.sealing import generate_key
from authsvc.database import init_db
from authsvc.extensions import db
from authsvc.models import AlbumStudy
from authsvc.models import AuditEvent
from authsvc.models import PendingLabel
from authsvc.policy import Actor
from authsvc.services import services
from tests import processes
from tests.dicom_factory import make_study
from tests.plugin_client import basic

INSECURE_SECRET = "insecure-faults-test-secret-key-0123456789abcdef"
INSECURE_PLUGIN_PASSWORD = "insecure-faults-plugin-password"
RECOVERY_SECONDS = 40.0
BOUNDARY = "faults-boundary"


@dataclass
class Outcome:
    """One request of a round: what a healthy system answers, and what came back."""

    name: str
    expected: int
    got: int
    body: str

    @property
    def closed(self) -> bool:
        """True for a refusal that fails closed (the request did not get through)."""
        if self.name.startswith("gate"):
            return self.got in (401, 403)
        return self.got in (401, 403, 503) and '"error"' in self.body


@dataclass
class Env:
    orthanc: processes.OrthancService
    idp: processes.IdpService
    postgres: processes.PostgresService
    server: processes.Service
    app: Flask
    album_a: str
    album_b: str
    label_a: str
    studies: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    log: list[Outcome] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.server.url

    def bearer(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def refresh_tokens(self) -> None:
        self.tokens = {
            u: self.idp.password_token(u)["access_token"] for u in ("alice", "bob", "carol")
        }


def _gate(env: Env, method: str, uri: str, headers: dict[str, str]) -> requests.Response:
    return requests.get(
        f"{env.base}/gate/auth",
        headers={"X-Original-Method": method, "X-Original-URI": uri, **headers},
        timeout=20,
    )


def _round(env: Env) -> list[Outcome]:
    """One of each kind of request, with the answer a healthy system gives it."""
    a1, b = env.studies["A1"], env.studies["B"]
    carol, alice, bob = env.bearer("carol"), env.bearer("alice"), env.bearer("bob")
    plugin = {"Authorization": basic("orthanc-plugin", INSECURE_PLUGIN_PASSWORD)}
    calls: list[tuple[str, int, Callable[[], requests.Response]]] = [
        ("gate viewer reads her study", 200, lambda: _gate(env, "GET", f"/studies/{a1}", carol)),
        ("gate viewer outside album", 403, lambda: _gate(env, "GET", f"/studies/{b}", carol)),
        ("gate viewer deletes", 403, lambda: _gate(env, "DELETE", f"/studies/{a1}", carol)),
        ("gate anonymous", 401, lambda: _gate(env, "GET", f"/studies/{a1}", {})),
        (
            "gate forged token",
            401,
            lambda: _gate(env, "GET", f"/studies/{a1}", {"Authorization": "Bearer x.y.z"}),
        ),
        ("gate admin", 200, lambda: _gate(env, "GET", f"/studies/{b}", bob)),
        (
            "api list albums",
            200,
            lambda: requests.get(f"{env.base}/api/albums", headers=carol, timeout=20),
        ),
        (
            "api list studies",
            200,
            lambda: requests.get(
                f"{env.base}/api/albums/{env.album_a}/studies", headers=alice, timeout=20
            ),
        ),
        (
            "api stranger album",
            404,
            lambda: requests.get(f"{env.base}/api/albums/{env.album_b}", headers=carol, timeout=20),
        ),
        (
            "api issue read token",
            201,
            lambda: requests.post(
                f"{env.base}/api/albums/{env.album_a}/read-tokens",
                json={},
                headers=alice,
                timeout=20,
            ),
        ),
        (
            "plugin profile",
            200,
            lambda: requests.post(
                f"{env.base}/user/get-profile",
                json={"token-key": "Authorization", "token-value": carol["Authorization"]},
                headers=plugin,
                timeout=20,
            ),
        ),
    ]
    out = []
    for name, expected, call in calls:
        try:
            response = call()
            outcome = Outcome(name, expected, response.status_code, response.text[:300])
        except requests.RequestException as exc:  # authsvc itself must never go away
            outcome = Outcome(name, expected, -1, repr(exc))
        out.append(outcome)
        env.log.append(outcome)
    return out


def _assert_fails_closed(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        assert o.got == o.expected or o.closed, (o.name, o.expected, o.got, o.body)
        if o.expected >= 400:  # never granted by accident
            assert o.got >= 400, (o.name, o.got)


def _wait_healthy(env: Env) -> float:
    """Return the seconds it took until a whole round gave the healthy answers."""
    start = time.monotonic()
    while True:
        outcomes = _round(env)
        _assert_fails_closed(outcomes)
        if all(o.got == o.expected for o in outcomes):
            return time.monotonic() - start
        assert time.monotonic() - start < RECOVERY_SECONDS, [
            (o.name, o.got, o.body[:120]) for o in outcomes if o.got != o.expected
        ]
        time.sleep(1)


def _store(orthanc: processes.OrthancService, description: str) -> tuple[str, str]:
    blob = make_study(n_series=1, n_instances=1, study_description=description)[0]
    stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
    stored.raise_for_status()
    return stored.json()["ParentStudy"], str(pydicom.dcmread(io.BytesIO(blob)).StudyInstanceUID)


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    state = tmp_path_factory.mktemp("faults")
    orthanc = processes.start_orthanc(state / "orthanc", processes.free_port())
    idp = processes.start_idp(state / "idp", processes.free_port())
    postgres = processes.start_private_postgres()
    settings = {
        "env": "testing",
        "data_dir": str(state / "data"),
        "secret_key": INSECURE_SECRET,
        "database_url": postgres.database_url,
        "orthanc_url": orthanc.url,
        "orthanc_retries": "0",
        "orthanc_timeout": "3",
        "oidc_issuer": idp.issuer,
        "oidc_client_id": "authsvc",
        "oidc_timeout": "3",
        "admin_roles": "admin",
        "upload_token_keys": generate_key("ft"),
        "plugin_username": "orthanc-plugin",
        "plugin_password": INSECURE_PLUGIN_PASSWORD,
    }
    app = create_app(settings)
    with app.app_context():
        init_db(db.engine)
    server = processes.start_gunicorn_app(
        state / "authsvc",
        processes.free_port(),
        {f"AUTHSVC_{key.upper()}": value for key, value in settings.items()},
    )
    tokens = {u: idp.password_token(u)["access_token"] for u in ("alice", "bob", "carol")}
    studies = {"A1": _store(orthanc, "faults A1")[0], "B": _store(orthanc, "faults B")[0]}
    with app.app_context():
        admin = albums.Caller(Actor(_subject(tokens["bob"]), is_global_admin=True))
        created = albums.create_album(services().archive, admin, "Faults A").album
        album_a, label_a = created.id, created.label
        album_b = albums.create_album(services().archive, admin, "Faults B").album.id
        albums.add_studies(services().archive, admin, album_a, [studies["A1"]])
        albums.add_studies(services().archive, admin, album_b, [studies["B"]])
        albums.invite_member(admin, album_a, "user", _subject(tokens["carol"]), "viewer")
        albums.invite_member(admin, album_a, "user", _subject(tokens["alice"]), "manager")
    env = Env(orthanc, idp, postgres, server, app, album_a, album_b, label_a, studies, tokens)
    try:
        yield env
    finally:
        server.stop()
        with app.app_context():
            db.engine.dispose()
        postgres.stop()
        idp.stop()
        orthanc.stop()


def test_healthy_round_gives_the_expected_answers(env: Env) -> None:
    outcomes = _round(env)
    assert [(o.name, o.got) for o in outcomes] == [(o.name, o.expected) for o in outcomes]


def test_faults_orthanc_stops_and_returns(env: Env) -> None:
    _wait_healthy(env)
    env.orthanc.stop()
    try:
        during = [_round(env) for _ in range(2)]
        for outcomes in during:
            _assert_fails_closed(outcomes)
        by_name = {o.name: o for o in during[-1]}
        # What needs Orthanc's answer now is refused with a clear error, not guessed.
        assert by_name["api list studies"].got == 503
        assert "orthanc" in by_name["api list studies"].body.lower()
    finally:
        env.orthanc.start()
    _wait_healthy(env)


def test_faults_postgres_stops_and_returns(env: Env) -> None:
    _wait_healthy(env)
    # Stop the postmaster but keep the cluster (PostgresService.stop would delete it).
    processes.Service.stop(env.postgres)
    try:
        during = [_round(env) for _ in range(2)]
        for outcomes in during:
            _assert_fails_closed(outcomes)
        by_name = {o.name: o for o in during[-1]}
        assert by_name["api list albums"].got == 503
        assert by_name["api issue read token"].got == 503
    finally:
        env.postgres.start()
    _wait_healthy(env)


def test_faults_identity_provider_stops_and_returns(env: Env) -> None:
    _wait_healthy(env)
    env.idp.stop()
    try:
        during = [_round(env) for _ in range(2)]
        for outcomes in during:
            _assert_fails_closed(outcomes)
        # A token under a key authsvc has never seen cannot be checked: refused, not a 500.
        head, body, sig = env.tokens["carol"].split(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        header["kid"] = "rotated-away"
        forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        odd = {"Authorization": f"Bearer {forged}.{body}.{sig}"}
        assert _gate(env, "GET", f"/studies/{env.studies['A1']}", odd).status_code in (401, 403)
        api = requests.get(f"{env.base}/api/albums", headers=odd, timeout=20)
        assert api.status_code in (401, 503) and api.json()["error"]
    finally:
        env.idp.start()
    env.refresh_tokens()  # tokens of the restarted provider (its keys may be new)
    _wait_healthy(env)


def _raw_post(port: int, path: str, headers: dict[str, str], body: bytes, announce: int) -> None:
    """Send ``body`` but announce ``announce`` bytes, then hang up (a client that dies)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {announce}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.5)
        sock.shutdown(socket.SHUT_WR)
        try:
            sock.recv(65536)  # whatever authsvc answers, if anything
        except OSError:
            pass


# Where the client dies, and how many instances were complete (their end seen) by then.
CUTS = {
    "inside-first-part": 0,
    "inside-second-part": 1,
    "inside-last-delimiter": 2,  # the third part's end is never seen: it is not complete
    "inside-closing-dashes": 3,  # every part complete, only the final "--" missing
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_faults_upload_cut_mid_body_loses_nothing(env: Env, cut: str) -> None:
    _wait_healthy(env)
    instances = make_study(n_series=1, n_instances=3, study_description=f"cut {cut}")
    uid = str(pydicom.dcmread(io.BytesIO(instances[0])).StudyInstanceUID)
    parts = [
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob + b"\r\n"
        for blob in instances
    ]
    full = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    cut_at = {
        "inside-first-part": len(parts[0]) // 2,
        "inside-second-part": len(parts[0]) + len(parts[1]) // 2,
        "inside-last-delimiter": len(full) - 10,
        "inside-closing-dashes": len(full) - 3,
    }[cut]
    with env.app.app_context():
        audits_before = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "album:upload")
        )
    _raw_post(
        env.server.port,
        f"/dicom-web/albums/{env.album_a}/studies",
        {
            **env.bearer("alice"),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        },
        full[:cut_at],
        len(full),
    )
    deadline = time.monotonic() + 15
    while True:
        found = requests.post(
            f"{env.orthanc.url}/tools/find",
            json={"Level": "Study", "Query": {"StudyInstanceUID": uid}, "Expand": True},
            timeout=20,
        ).json()
        with env.app.app_context():
            audits = db.session.scalar(
                sa.select(sa.func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "album:upload")
            )
        if audits > audits_before or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    # The attempt is reported in the audit trail, whatever it managed to store.
    assert audits > audits_before
    if CUTS[cut] == 0:
        assert found == []  # nothing incomplete ever reaches Orthanc
        return
    # What Orthanc holds is in the album: labelled, or recorded as a pending label.
    assert len(found) == 1
    study = found[0]
    with env.app.app_context():
        in_album = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(AlbumStudy)
            .where(AlbumStudy.album_id == env.album_a, AlbumStudy.study_id == study["ID"])
        )
        pending = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(PendingLabel)
            .where(PendingLabel.study_id == study["ID"])
        )
    assert in_album == 1
    assert env.label_a in study.get("Labels", []) or pending >= 1
    # Only complete parts were stored: the cut part never arrived.
    stored = requests.get(f"{env.orthanc.url}/studies/{study['ID']}/instances", timeout=20).json()
    assert len(stored) == CUTS[cut]
