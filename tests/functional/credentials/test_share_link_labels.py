"""A share link's maker is judged on the study's real labels, also when the plugin sends none.

The real plugin omits ``labels`` from ``/tokens/validate`` for the study of a QIDO
``StudyInstanceUID=`` query (OHIF's first request of a shared study) and while its 60 s label
cache predates the study's labels; tests/integration/test_ohif.py found it. authsvc then reads
the labels of the link's own study from Orthanc. The world is tests/functional/test_attacks.py's
(vera is a viewer of album A, which holds study a; study b is in album B only).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from authsvc import albums
from tests.functional.test_attacks import ADMIN
from tests.functional.test_attacks import URL
from tests.functional.test_attacks import World
from tests.functional.test_attacks import _world
from tests.functional.test_attacks import bearer

pytestmark = pytest.mark.functional


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Any, log_stream: io.StringIO
) -> Iterator[World]:
    yield from _world(request, tmp_path, log_stream, request.param)


def _link(world: World, who: str) -> str:
    # A viewer may make instant links (publications need the share permission); the maker
    # check is the same for every share token type.
    body = {
        "Resources": [{"OrthancId": world.a.id, "DicomUid": world.a.uid, "Level": "study"}],
        "Type": "viewer-instant-link",
        "ValidityDuration": 3600,
    }
    made = world.client.put(
        "/api/orthanc/auth/tokens/viewer-instant-link", json=body, headers=bearer(who)
    )
    assert made.status_code == 200, made.get_json()
    return str(made.get_json()["Token"])


def test_validation_without_labels_reads_the_studys_labels(world: World) -> None:
    link = _link(world, "vera")
    # What the plugin sends for OHIF's QIDO of the shared study: no labels at all.
    assert world.validate(link, world.a) is True
    assert world.validate(link, world.a, labels=[]) is True
    # Another study is still not covered, labels or not.
    assert world.validate(link, world.b) is False


def test_validation_without_labels_still_follows_the_maker(world: World) -> None:
    link = _link(world, "vera")
    assert world.validate(link, world.a) is True
    with world.app.app_context():
        member = world.members_a["vera"]
        albums.remove_member(ADMIN, world.album_a, member)
    # vera no longer sees study a: the labels read from Orthanc do not save the link.
    assert world.validate(link, world.a) is False


def test_links_without_a_maker_never_send_authsvc_to_orthanc(world: World) -> None:
    """A link the plugin made (no user maker) has nobody to judge: validating it without
    labels must not cost a call to Orthanc on the plugin's hot path."""
    before = len(world.mock.request_history)
    for _ in range(3):
        assert world.validate(world.tokens["share"], world.b) is True
    calls = [r.url for r in world.mock.request_history[before:] if r.url.startswith(URL)]
    assert calls == []
