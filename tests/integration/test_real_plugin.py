"""authsvc behind the REAL Orthanc authorization plugin: every promise checked through Orthanc.

One stack for the module (tests/integration/plugin_stack.py): private PostgreSQL, a private
IdP, authsvc under gunicorn (2 workers, service key), Orthanc with the real plugin asking
authsvc, nginx from nginx/plugin.conf.template in front. Requests go to Orthanc's own port
(the plugin decides) or through nginx where the promise is nginx's (upload-token STOW, share
links made for the user). Caches are the plugin's: ``validity`` is 2 s here, "has permission"
10 s, so waits are polling loops bounded by those, never timed assertions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.dicom_factory import make_study
from tests.integration import plugin_stack
from tests.integration.plugin_stack import PluginStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginStack]:
    """The module's one running stack."""
    with plugin_stack.running_stack(tmp_path_factory.mktemp("real-plugin")) as running:
        yield running


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _find_studies(stack: PluginStack, headers: dict[str, str]) -> Any:
    return stack.orthanc_call("POST", "/tools/find", headers, json={"Level": "Study", "Query": {}})


# ------------------------------------------------------------------ 1. users, labels, headers


@pytest.mark.parametrize("style", ["token-header", "bearer"])
def test_user_sees_only_studies_of_her_labels(stack: PluginStack, style: str) -> None:
    token = stack.jwt("alice")
    headers = {"token": token} if style == "token-header" else _bearer(token)
    s = stack.studies
    for name in ("cardio", "xray"):  # doctor -> cardio; group /radiology -> xray
        answer = stack.orthanc_call("GET", f"/studies/{s[name].orthanc_id}", headers)
        assert answer.status_code == 200, (name, answer.text)
    for name in ("neuro", "unlabelled"):
        answer = stack.orthanc_call("GET", f"/studies/{s[name].orthanc_id}", headers)
        assert answer.status_code == 403, name
    # Lists are for users who see every label; the others search, filtered by their labels.
    assert stack.orthanc_call("GET", "/studies", headers).status_code == 403
    found = _find_studies(stack, headers)
    assert found.status_code == 200, found.text
    ids = set(found.json())
    assert {s["cardio"].orthanc_id, s["xray"].orthanc_id} <= ids
    assert not {s["neuro"].orthanc_id, s["unlabelled"].orthanc_id} & ids


@pytest.mark.parametrize("style", ["token-header", "bearer"])
def test_admin_sees_every_study(stack: PluginStack, style: str) -> None:
    token = stack.jwt("bob")
    headers = {"token": token} if style == "token-header" else _bearer(token)
    listed = stack.orthanc_call("GET", "/studies", headers)
    assert listed.status_code == 200, listed.text
    seeded = {study.orthanc_id for study in stack.studies.values()}
    assert seeded <= set(listed.json())
    assert seeded <= set(_find_studies(stack, headers).json())
    for study in stack.studies.values():
        assert stack.orthanc_call("GET", f"/studies/{study.orthanc_id}", headers).ok


def test_user_without_roles_sees_nothing(stack: PluginStack) -> None:
    headers = {"token": stack.jwt("carol")}
    for study in stack.studies.values():
        answer = stack.orthanc_call("GET", f"/studies/{study.orthanc_id}", headers)
        assert answer.status_code == 403
    assert stack.orthanc_call("GET", "/studies", headers).status_code == 403
    assert _find_studies(stack, headers).status_code == 403


def test_user_reads_her_study_through_nginx(stack: PluginStack) -> None:
    headers = {"token": stack.jwt("alice")}
    cardio, neuro = stack.studies["cardio"], stack.studies["neuro"]
    assert stack.nginx_call("GET", f"/orthanc/studies/{cardio.orthanc_id}", headers).ok
    answer = stack.nginx_call("GET", f"/orthanc/studies/{neuro.orthanc_id}", headers)
    assert answer.status_code == 403


# ------------------------------------------------------------------ 2. role permissions


def test_role_permissions_are_enforced(stack: PluginStack) -> None:
    """alice may view cardio studies (doctor) but holds no delete, edit-labels or upload."""
    trash = stack.store("cardio", description="to be deleted")
    alice = {"token": stack.jwt("alice")}
    path = f"/studies/{trash.orthanc_id}"
    assert stack.orthanc_call("GET", path, alice).status_code == 200
    assert stack.orthanc_call("GET", f"{path}/archive", alice).status_code == 200  # view is enough
    assert stack.orthanc_call("DELETE", path, alice).status_code == 403
    assert stack.orthanc_call("PUT", f"{path}/labels/neuro", alice, data=b"").status_code == 403
    blob = make_study(n_instances=1)[0]
    assert stack.orthanc_call("POST", "/instances", alice, data=blob).status_code == 403
    assert stack.orthanc_call("GET", "/auth/settings/roles", alice).status_code == 403
    # Still there, unchanged; the admin's "all" may delete it.
    assert stack.study_labels(trash.orthanc_id) == ["cardio"]
    assert stack.orthanc_call("DELETE", path, stack.admin()).status_code == 200
    assert stack.orthanc_call("GET", path, stack.admin()).status_code == 404
