"""Unit tests for authsvc.orthanc.dicomweb: URL rewriting (streamed), QIDO query split, Accept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authsvc.errors import BadRequest
from authsvc.orthanc import dicomweb

pytestmark = pytest.mark.unit

ROOT = "https://pacs.example/prefix/dicom-web/albums/AbC"
MARKER = f"http://{dicomweb.MARKER_HOST}"


def _doc(n: int, orthanc_root: str = "/dicom-web") -> bytes:
    items = [
        {
            "00081190": {
                "vr": "UR",
                "Value": [f"{MARKER}{orthanc_root}/studies/1.2.{i}/series/1.3.{i}"],
            },
            "7FE00010": {
                "vr": "OB",
                "BulkDataURI": f"{MARKER}{orthanc_root}/studies/1.2.{i}/series/1.3.{i}"
                f"/instances/1.4.{i}/bulk/7fe00010",
            },
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
        }
        for i in range(n)
    ]
    return json.dumps(items).encode()


def _expected(n: int) -> list[str]:
    return [f"{ROOT}/studies/1.2.{i}/series/1.3.{i}" for i in range(n)]


def test_whole_document_is_rewritten() -> None:
    out = b"".join(dicomweb.rewrite_urls([_doc(3)], ROOT))
    data = json.loads(out)
    assert [d["00081190"]["Value"][0] for d in data] == _expected(3)
    assert (
        data[1]["7FE00010"]["BulkDataURI"]
        == f"{ROOT}/studies/1.2.1/series/1.3.1/instances/1.4.1/bulk/7fe00010"
    )
    assert dicomweb.MARKER_HOST.encode() not in out


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    """Matches split across chunk boundaries are still found and replaced."""
    body = _doc(12)
    chunks, position = [], 0
    for cut in cuts:
        chunks.append(body[position : position + cut])
        position += cut
    chunks.append(body[position:])
    out = b"".join(dicomweb.rewrite_urls(chunks, ROOT))
    assert out == b"".join(dicomweb.rewrite_urls([body], ROOT))
    assert [d["00081190"]["Value"][0] for d in json.loads(out)] == _expected(12)


def test_orthanc_public_root_is_replaced_whole() -> None:
    """With Orthanc's PublicRoot set, its path differs: still everything up to studies/."""
    out = b"".join(dicomweb.rewrite_urls([_doc(1, "/orthanc/dicom-web")], ROOT))
    assert json.loads(out)[0]["00081190"]["Value"][0] == _expected(1)[0]


def test_other_urls_are_left_alone() -> None:
    text = b'{"x": "http://elsewhere.example/dicom-web/studies/1.2"}'
    assert b"".join(dicomweb.rewrite_urls([text], ROOT)) == text
    assert dicomweb.rewrite_text(text.decode(), ROOT) == text.decode()


def test_qido_query_split() -> None:
    query = dicomweb.parse_qido_query(
        "PatientName=Doe*&limit=5&offset=2&includefield=00081030&StudyInstanceUID=1.2,1.3&token=x",
        frozenset({"token"}),
    )
    assert query.limit == 5 and query.offset == 2
    assert query.study_uids == ["1.2", "1.3"]
    # Raw fields pass through untouched: Orthanc does not percent-decode arguments.
    assert query.orthanc_params(["1.2"]) == (
        "PatientName=Doe*&includefield=00081030&StudyInstanceUID=1.2"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "includefield=00081030%2C00080060",  # what OHIF 3 sends
        "includefield=00081030,00080060",
        "includefield=00081030&includefield=00080060",
        "includefield=%2000081030%20%2C%2C00080060",
    ],
)
def test_qido_includefield_lists_become_one_field_per_attribute(raw: str) -> None:
    # Orthanc does not decode %2C: a list must reach it as repeated includefield fields.
    assert dicomweb.parse_qido_query(raw).orthanc_params(["1.2"]) == (
        "includefield=00081030&includefield=00080060&StudyInstanceUID=1.2"
    )


def test_qido_includefield_keeps_keywords_and_all() -> None:
    query = dicomweb.parse_qido_query("includefield=all&includefield=StudyDescription")
    assert query.passthrough == ["includefield=all", "includefield=StudyDescription"]


@pytest.mark.parametrize(
    "raw", ["includefield=0008%261030", "includefield=a%3Db", "includefield=*"]
)
def test_qido_includefield_that_is_no_attribute_is_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        dicomweb.parse_qido_query(raw)


def test_qido_repeated_uid_filters_intersect() -> None:
    query = dicomweb.parse_qido_query("StudyInstanceUID=1.2,1.3&0020000D=1.3,1.4")
    assert query.study_uids == ["1.3"]


def test_qido_without_uid_filter() -> None:
    query = dicomweb.parse_qido_query("")
    assert query.study_uids is None and query.limit is None and query.offset == 0


@pytest.mark.parametrize(
    "raw", ["limit=-1", "limit=x", "offset=1.5", "limit=9999999999", "StudyInstanceUID=1.2.*"]
)
def test_qido_bad_values_are_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        dicomweb.parse_qido_query(raw)


def test_qido_limit_is_capped() -> None:
    assert dicomweb.parse_qido_query("limit=999999").limit == 10_000


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ('multipart/related; type="*/*"', "multipart/related"),
        ("multipart/related; type=*/*; transfer-syntax=*", "multipart/related; transfer-syntax=*"),
        (
            'multipart/related; type="application/octet-stream"',
            'multipart/related; type="application/octet-stream"',
        ),
        ("application/dicom+json", "application/dicom+json"),
    ],
)
def test_accept_any_part_type_is_dropped(accept: str, expected: str) -> None:
    assert dicomweb.normalize_accept(accept) == expected


def test_study_uid_of() -> None:
    assert dicomweb.study_uid_of({"0020000D": {"vr": "UI", "Value": ["1.2"]}}) == "1.2"
    for bad in (None, [], {}, {"0020000D": {}}, {"0020000D": {"Value": []}}, {"0020000D": "x"}):
        assert dicomweb.study_uid_of(bad) is None
