"""Scale-out: two authsvc instances (separate gunicorn processes) on one PostgreSQL behind nginx.

The deployed gate template (nginx/gate.conf.template) is rendered with both instances in its
``authsvc_gate`` upstream, so nginx spreads the traffic over them; the tests also talk to each
instance directly, to make a change through one and watch the other.

* A revocation (album read token, API key) or a membership change made through one instance is
  honoured by both within the configured validity: the per-process caches' lifetimes
  (``CALLER_TTL`` of the gate plus the album-role cache, the API-key cache), measured here.
* Concurrent membership and study edits through both instances lose nothing, and concurrent
  renames with the same ``If-Match`` have exactly one winner.

The PostgreSQL is a private cluster (tests/processes.start_private_postgres).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import time
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydicom
import pytest
import requests
from flask import Flask

from authsvc import albums
from authsvc.albums.access import RoleCache
from authsvc.app import create_app
from authsvc.credentials.sealing import generate_key
from authsvc.database import init_db
from authsvc.extensions import db
from authsvc.identity.authn import ApiKeyCache
from authsvc.policy import Actor
from authsvc.services import services
from authsvc.views.gate import CALLER_TTL
from tests import deploy_kit
from tests import processes
from tests.dicom_factory import make_study

INSECURE_SECRET = "insecure-scale-out-secret-key-0123456789abcdef"


def _default_ttl(cls: type) -> float:
    return float(inspect.signature(cls).parameters["ttl"].default)


# The longest a change made through one instance may stay unseen by the other, plus slack for
# a loaded 2-core machine: the gate's caller cache sits on top of the album-role cache.
MEMBERSHIP_VALIDITY = CALLER_TTL + _default_ttl(RoleCache)
API_KEY_VALIDITY = _default_ttl(ApiKeyCache)
SLACK = 3.0


@dataclass
class Cluster:
    base: str  # nginx
    instances: list[str]  # each authsvc directly
    orthanc: processes.OrthancService
    app: Flask
    album: str
    label: str
    studies: dict[str, str]
    tokens: dict[str, str]

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def gate(self, instance: str, method: str, uri: str, headers: dict[str, str]) -> int:
        return requests.get(
            f"{instance}/gate/auth",
            headers={"X-Original-Method": method, "X-Original-URI": uri, **headers},
            timeout=20,
        ).status_code


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def _store(orthanc: processes.OrthancService, description: str) -> str:
    blob = make_study(n_series=1, n_instances=1, study_description=description)[0]
    stored = requests.post(f"{orthanc.url}/instances", data=blob, timeout=30)
    stored.raise_for_status()
    assert pydicom.dcmread(io.BytesIO(blob)).StudyInstanceUID
    return str(stored.json()["ParentStudy"])


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: processes.OrthancService,
    idp: processes.IdpService,
) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("scale")
    postgres = processes.start_private_postgres()
    settings = {
        "env": "testing",
        "data_dir": str(state / "data"),
        "secret_key": INSECURE_SECRET,
        "database_url": postgres.database_url,
        "orthanc_url": orthanc.url,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": "authsvc",
        "admin_roles": "admin",
        "upload_token_keys": generate_key("so"),
        "proxy_count": "1",
        # Two threads each, so both instances also serve requests concurrently themselves.
        "threads": "2",
    }
    app = create_app(settings)
    with app.app_context():
        init_db(db.engine)
    env = {f"AUTHSVC_{key.upper()}": value for key, value in settings.items()}
    ports = [processes.free_port(), processes.free_port()]
    servers = [processes.start_gunicorn_app(state / f"authsvc-{p}", p, env) for p in ports]
    nginx_port = processes.free_port()
    nginx = None
    try:
        nginx = deploy_kit.start_nginx_templates(
            state / "nginx",
            nginx_port,
            {
                "gate.conf.template": {
                    "GATE_LISTEN": f"127.0.0.1:{nginx_port}",
                    "SERVER_NAME": "_",
                    # Both instances in the template's one upstream block (one line: the
                    # template's header comment names the placeholder too).
                    "AUTHSVC_UPSTREAM": f"127.0.0.1:{ports[0]}; server 127.0.0.1:{ports[1]}",
                    "ORTHANC_UPSTREAM": f"127.0.0.1:{orthanc.port}",
                    "KEYCLOAK_UPSTREAM": f"127.0.0.1:{idp.port}",
                }
            },
            ready_path="/app/explorer.html",
        )
        tokens = {u: idp.password_token(u)["access_token"] for u in ("alice", "bob", "carol")}
        studies = {f"S{i}": _store(orthanc, f"scale S{i}") for i in range(8)}
        with app.app_context():
            admin = albums.Caller(Actor(_subject(tokens["bob"]), is_global_admin=True))
            created = albums.create_album(services().archive, admin, "Scale-out").album
            albums.add_studies(services().archive, admin, created.id, [studies["S0"]])
            albums.invite_member(admin, created.id, "user", _subject(tokens["alice"]), "manager")
            albums.invite_member(admin, created.id, "user", _subject(tokens["carol"]), "viewer")
            album, label = created.id, created.label
        yield Cluster(
            f"http://127.0.0.1:{nginx_port}",
            [s.url for s in servers],
            orthanc,
            app,
            album,
            label,
            studies,
            tokens,
        )
    finally:
        if nginx is not None:
            nginx.stop()
        for server in servers:
            server.stop()
        with app.app_context():
            db.engine.dispose()
        postgres.stop()


def _until(check: Callable[[], bool], limit: float) -> float:
    """Poll ``check`` until it holds; return the seconds it took (fail after ``limit``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"not seen within {limit:.1f}s"
        time.sleep(0.2)
    return time.monotonic() - start


def test_both_instances_serve_behind_nginx(cluster: Cluster) -> None:
    s0 = cluster.studies["S0"]
    seen = []
    for _ in range(6):
        response = requests.get(
            f"{cluster.base}/studies/{s0}", headers=cluster.auth("carol"), timeout=20
        )
        assert response.status_code == 200
        seen.append(response.json()["ID"])
    assert set(seen) == {s0}
    for instance in cluster.instances:
        assert requests.get(f"{instance}/healthz", timeout=10).status_code == 200


def test_read_token_revoked_through_one_is_refused_by_both(cluster: Cluster) -> None:
    first, second = cluster.instances
    alice = cluster.auth("alice")
    made = requests.post(
        f"{first}/api/albums/{cluster.album}/read-tokens", json={}, headers=alice, timeout=20
    )
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["id"]
    uri = f"/studies/{cluster.studies['S0']}"
    for instance in cluster.instances:
        assert cluster.gate(instance, "GET", uri, {"token": token}) == 200
    revoked = requests.delete(
        f"{first}/api/albums/{cluster.album}/read-tokens/{token_id}", headers=alice, timeout=20
    )
    assert revoked.status_code == 200
    # Read tokens are checked against the database on every use: refused at once, by both.
    for instance in (first, second):
        assert cluster.gate(instance, "GET", uri, {"token": token}) == 401


def test_api_key_revoked_through_one_is_refused_by_both_within_its_ttl(cluster: Cluster) -> None:
    first, second = cluster.instances
    made = requests.post(
        f"{first}/api/api-keys",
        json={"name": "scale-out"},
        headers=cluster.auth("alice"),
        timeout=20,
    )
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    for instance in cluster.instances:
        assert (
            requests.get(f"{instance}/api/albums", headers={"api-key": key}, timeout=20).status_code
            == 200
        )
    revoked = requests.delete(
        f"{first}/api/api-keys/{key_id}", headers=cluster.auth("alice"), timeout=20
    )
    assert revoked.status_code == 200
    assert (
        requests.get(f"{first}/api/albums", headers={"api-key": key}, timeout=20).status_code == 401
    )
    took = _until(
        lambda: (
            requests.get(f"{second}/api/albums", headers={"api-key": key}, timeout=20).status_code
            == 401
        ),
        API_KEY_VALIDITY + SLACK,
    )
    assert took <= API_KEY_VALIDITY + SLACK


def test_membership_change_through_one_is_honoured_by_both(cluster: Cluster) -> None:
    first, second = cluster.instances
    carol, alice = cluster.auth("carol"), cluster.auth("alice")
    uri = f"/studies/{cluster.studies['S0']}"
    for instance in cluster.instances:
        assert cluster.gate(instance, "GET", uri, carol) == 200  # both have carol cached now
    members = requests.get(
        f"{first}/api/albums/{cluster.album}/members", headers=alice, timeout=20
    ).json()
    carol_row = next(
        m for m in members["items"] if m["principal"] == _subject(cluster.tokens["carol"])
    )
    removed = requests.delete(
        f"{first}/api/albums/{cluster.album}/members/{carol_row['id']}", headers=alice, timeout=20
    )
    assert removed.status_code == 204
    for instance in (first, second):
        _until(
            lambda i=instance: cluster.gate(i, "GET", uri, carol) == 403,
            MEMBERSHIP_VALIDITY + SLACK,
        )
    # And back, through the other instance this time.
    added = requests.post(
        f"{second}/api/albums/{cluster.album}/members",
        json={"kind": "user", "principal": _subject(cluster.tokens["carol"]), "role": "viewer"},
        headers=alice,
        timeout=20,
    )
    assert added.status_code == 201
    for instance in (first, second):
        _until(
            lambda i=instance: cluster.gate(i, "GET", uri, carol) == 200,
            MEMBERSHIP_VALIDITY + SLACK,
        )


def test_concurrent_edits_through_both_lose_nothing(cluster: Cluster) -> None:
    alice = cluster.auth("alice")
    bob = cluster.auth("bob")  # admin: may add any study
    doors = [*cluster.instances, cluster.base]
    groups = [f"scale-group-{i}" for i in range(24)]
    new_studies = [cluster.studies[f"S{i}"] for i in range(1, 8)]

    def invite(i: int) -> int:
        return requests.post(
            f"{doors[i % 3]}/api/albums/{cluster.album}/members",
            json={"kind": "group", "principal": groups[i], "role": "viewer"},
            headers=alice,
            timeout=30,
        ).status_code

    def add_study(i: int) -> int:
        return requests.put(
            f"{doors[i % 3]}/api/albums/{cluster.album}/studies/{new_studies[i]}",
            headers=bob,
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        invites = pool.map(invite, range(len(groups)))
        adds = pool.map(add_study, range(len(new_studies)))
        invite_statuses, add_statuses = list(invites), list(adds)
    assert invite_statuses == [201] * len(groups)
    assert add_statuses == [200] * len(new_studies)

    members = requests.get(
        f"{cluster.instances[1]}/api/albums/{cluster.album}/members?limit=500",
        headers=alice,
        timeout=20,
    ).json()
    principals = {m["principal"] for m in members["items"]}
    assert set(groups) <= principals
    listed = requests.get(
        f"{cluster.instances[0]}/api/albums/{cluster.album}/studies?limit=500",
        headers=alice,
        timeout=20,
    ).json()
    assert set(new_studies) <= {s["id"] for s in listed["items"]}
    for study in new_studies:
        labels = requests.get(f"{cluster.orthanc.url}/studies/{study}/labels", timeout=20).json()
        assert cluster.label in labels

    # Concurrent removals through both, with concurrent adds of others: the end state is exact.
    keep, drop = new_studies[:3], new_studies[3:]

    def remove(i: int) -> int:
        return requests.delete(
            f"{doors[i % 3]}/api/albums/{cluster.album}/studies/{drop[i]}", headers=bob, timeout=30
        ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(remove, range(len(drop)))) <= {200, 204}
    listed = requests.get(
        f"{cluster.base}/api/albums/{cluster.album}/studies?limit=500", headers=alice, timeout=20
    ).json()
    ids = {s["id"] for s in listed["items"]}
    assert set(keep) <= ids and not set(drop) & ids


def test_concurrent_renames_with_one_version_have_one_winner(cluster: Cluster) -> None:
    bob = cluster.auth("bob")
    current = requests.get(f"{cluster.base}/api/albums/{cluster.album}", headers=bob, timeout=20)
    etag = current.headers["ETag"]

    def rename(i: int) -> tuple[int, Any]:
        response = requests.patch(
            f"{cluster.instances[i % 2]}/api/albums/{cluster.album}",
            json={"name": f"Scale-out {i}"},
            headers={**bob, "If-Match": etag},
            timeout=30,
        )
        return response.status_code, response.json().get("name")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(rename, range(8)))
    winners = [name for status, name in results if status == 200]
    assert len(winners) == 1, results
    assert all(status in (200, 409, 412) for status, _ in results), results
    final = requests.get(
        f"{cluster.base}/api/albums/{cluster.album}", headers=bob, timeout=20
    ).json()
    assert final["name"] == winners[0]


def test_slow_bodies_do_not_starve_other_callers(cluster: Cluster) -> None:
    """Clients trickling JSON bodies through nginx must not hold every authsvc thread.

    nginx buffers request bodies outside the upload routes, so the trickling clients wait on
    nginx, and the four threads of the two instances stay free for everyone else.
    """
    import socket

    host, port = "127.0.0.1", int(cluster.base.rsplit(":", 1)[1])
    slow = []
    try:
        for _ in range(12):  # more than the threads of both instances together (2 x 2)
            sock = socket.create_connection((host, port), timeout=30)
            sock.sendall(
                (
                    f"POST /api/albums HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {cluster.tokens['alice']}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                ).encode()
            )
            slow.append(sock)
        time.sleep(1.0)
        for sock in slow:
            sock.sendall(b" ")
        for _ in range(4):
            # Starved instances would leave these hanging past the timeout.
            answer = requests.get(
                f"{cluster.base}/api/albums", headers=cluster.auth("carol"), timeout=10
            )
            assert answer.status_code == 200
    finally:
        for sock in slow:
            sock.close()
