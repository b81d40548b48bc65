"""The album page's OHIF link (``public_ohif_root`` set): the album's DICOMweb root, no secret.

tests/integration/test_ohif.py clicks it in Chromium and checks that OHIF draws the study.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.fake_orthanc import FakeOrthanc
from tests.functional.admin.test_admin import ROOT
from tests.functional.admin.test_admin import SIGN_IN_CONFIG
from tests.functional.admin.test_admin import make_album
from tests.functional.admin.test_admin import mock  # noqa: F401 (fixture)
from tests.functional.admin.test_admin import orthanc  # noqa: F401 (fixture)
from tests.functional.admin.test_admin import post
from tests.functional.admin.test_admin import sign_in

pytestmark = pytest.mark.functional


@pytest.fixture
def extra_config() -> dict[str, Any]:
    # The admin tests' settings, with no configured viewers: OHIF's link comes from the root.
    return {
        **SIGN_IN_CONFIG,
        "public_ohif_root": "https://pacs.test/ohif",
        "study_viewers": "[]",
    }


def _album_with_study(db_app: Flask, orthanc: FakeOrthanc) -> tuple[Any, str]:  # noqa: F811
    client = sign_in(db_app, ROOT)
    album_id = make_album(client)
    orthanc.add_study("1.2.3.4", patient_name="Doe^Jane", description="Chest CT")
    assert post(client, f"/admin/albums/{album_id}/studies/add", uids="1.2.3.4").status_code == 302
    return client, album_id


def test_album_page_links_each_study_to_ohif_on_the_album_root(
    db_app: Flask,
    orthanc: FakeOrthanc,  # noqa: F811
) -> None:
    client, album_id = _album_with_study(db_app, orthanc)
    page = client.get(f"/admin/albums/{album_id}").text
    assert (
        f'href="https://pacs.test/ohif/viewer?StudyInstanceUIDs=1.2.3.4&amp;album={album_id}"'
        in page
    )
    # No credential of any kind rides in the link.
    assert "token=" not in page.split("StudyInstanceUIDs=1.2.3.4", 1)[1].split('"', 1)[0]
