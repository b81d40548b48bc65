"""The Orthanc client: credentials, timeouts, bounded retries, one domain error per failure."""

from __future__ import annotations

import pytest
import requests
import requests_mock as rm

from authsvc.errors import ConfigError
from authsvc.errors import OrthancError
from authsvc.errors import OrthancUnavailable
from authsvc.orthanc import OrthancClient
from authsvc.orthanc import OrthancServer
from authsvc.orthanc import OrthancServers
from authsvc.orthanc import servers_from_settings

pytestmark = pytest.mark.unit

URL = "http://orthanc.test:8042"


@pytest.fixture
def client() -> OrthancClient:
    server = OrthancServer(id="main", url=URL, username="svc", password="pw-insecure", retries=2)
    return OrthancClient(server, backoff=0)


def test_sends_service_credentials(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/system", json={"Version": "1.12.7"})
        assert client.system()["Version"] == "1.12.7"
        assert mock.last_request.headers["Authorization"].startswith("Basic ")


def test_idempotent_calls_are_retried_then_succeed(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(
            f"{URL}/studies/s1/labels",
            [{"exc": requests.ConnectionError}, {"status_code": 503}, {"json": ["a"]}],
        )
        assert client.study_labels("s1") == ["a"]
        assert mock.call_count == 3


def test_retries_are_bounded(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.put(f"{URL}/studies/s1/labels/x", exc=requests.ConnectTimeout)
        with pytest.raises(OrthancUnavailable, match="timed out"):
            client.add_label("s1", "x")
        assert mock.call_count == 3  # 1 + retries


def test_non_idempotent_calls_are_not_retried(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/reset", exc=requests.ConnectionError)
        with pytest.raises(OrthancUnavailable, match="unreachable"):
            client.request("POST", "/tools/reset")
        assert mock.call_count == 1


def test_4xx_is_an_orthanc_error_with_status(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(
            f"{URL}/studies/nope/labels", status_code=404, json={"Message": "Unknown resource"}
        )
        with pytest.raises(OrthancError) as info:
            client.study_labels("nope")
    assert info.value.orthanc_status == 404
    assert info.value.details == {"Message": "Unknown resource"}
    assert info.value.status == 502


def test_5xx_after_retries_is_unavailable(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/system", status_code=500)
        with pytest.raises(OrthancUnavailable, match="answered 500"):
            client.system()


def test_errors_never_contain_credentials(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/system", exc=requests.ConnectionError(f"http://svc:pw-insecure@{URL}"))
        with pytest.raises(OrthancUnavailable) as info:
            client.system()
    assert "pw-insecure" not in str(info.value)


def test_non_json_answer(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/system", text="<html>proxy error</html>")
        with pytest.raises(OrthancError, match="non-JSON"):
            client.system()


def test_find_studies_by_label(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/find", json=["st1"])
        assert client.find_studies(labels=["album-x"], constraint="Any") == ["st1"]
        assert mock.last_request.json() == {
            "Level": "Study",
            "Query": {},
            "Expand": False,
            "Labels": ["album-x"],
            "LabelsConstraint": "Any",
        }


def test_lookup_study(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/find", [{"json": ["st1"]}, {"json": []}])
        assert client.lookup_study("1.2.3") == "st1"
        assert client.lookup_study("1.2.4") is None


def test_registry_from_settings() -> None:
    servers = OrthancServers(
        servers_from_settings(
            URL,
            "",
            "u",
            "p",
            [{"id": "research", "url": "http://other:8042/", "password": "q"}],
            timeout=5,
            retries=1,
        )
    )
    assert servers.ids() == ["", "research"]
    assert servers.get(None) is servers.get("")
    research = servers.get("research")
    assert research is not None and research.server.url == "http://other:8042"
    assert servers.get("unknown") is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([{"url": "http://x"}], 'entry 0 needs a non-empty "id"'),
        ([{"id": "a", "url": "ftp://x"}], 'entry 0 needs an http\\(s\\) "url"'),
        ([{"id": "a", "url": "http://x"}, {"id": "a", "url": "http://y"}], "duplicate server id"),
    ],
)
def test_bad_server_entries_name_the_key(extra: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^AUTHSVC_ORTHANC_SERVERS: .*{message}"):
        OrthancServers(servers_from_settings("", "", "", "", extra, timeout=5, retries=1))


# --- calls the albums feature adds ------------------------------------------------------------


def test_find_studies_asks_for_requested_tags(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/find", json=[{"ID": "s1", "RequestedTags": {}}])
        client.find_studies(
            labels=["a"], expand=True, since=10, limit=5, requested_tags=["ModalitiesInStudy"]
        )
        body = mock.last_request.json()
    assert body["RequestedTags"] == ["ModalitiesInStudy"]
    assert (body["Since"], body["Limit"], body["Labels"]) == (10, 5, ["a"])


def test_count_studies_uses_count_resources(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/count-resources", json={"Count": 7})
        assert client.count_studies(labels=["a"]) == 7
        assert mock.last_request.json()["Labels"] == ["a"]


def test_count_studies_falls_back_on_older_orthanc(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/count-resources", status_code=404)
        mock.post(f"{URL}/tools/find", json=["s1", "s2"])
        assert client.count_studies(labels=["a"]) == 2


@pytest.mark.parametrize("answer", [{"Count": "7"}, [], {"Nope": 1}])
def test_count_studies_refuses_odd_answers(client: OrthancClient, answer: object) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/tools/count-resources", json=answer)
        with pytest.raises(OrthancError):
            client.count_studies()


def test_get_study_is_none_when_unknown(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/studies/s1", json={"ID": "s1", "Labels": ["a"]})
        mock.get(f"{URL}/studies/s2", status_code=404, json={"Message": "Unknown resource"})
        mock.get(f"{URL}/studies/s3", status_code=403)
        assert client.get_study("s1") == {"ID": "s1", "Labels": ["a"]}
        assert client.get_study("s2") is None
        with pytest.raises(OrthancError):
            client.get_study("s3")


def test_all_labels(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.get(f"{URL}/tools/labels", json=["a", "b"])
        assert client.all_labels() == ["a", "b"]
        mock.get(f"{URL}/tools/labels", json={"a": 1})
        with pytest.raises(OrthancError):
            client.all_labels()


# --- store_instance: the upload path's lean send ----------------------------------------------


def test_store_instance_sends_credentials_type_and_body(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/instances", json={"ID": "i", "ParentStudy": "s", "Status": "Success"})
        assert client.store_instance(b"DICM-bytes")["ParentStudy"] == "s"
        sent = mock.last_request
        assert sent.headers["Authorization"].startswith("Basic ")
        assert sent.headers["Content-Type"] == "application/dicom"
        assert sent.body == b"DICM-bytes"


def test_store_instance_retries_bytes_but_not_streams(client: OrthancClient) -> None:
    import io

    with rm.Mocker() as mock:
        mock.post(
            f"{URL}/instances",
            [{"exc": requests.ConnectionError}, {"json": {"ID": "i", "ParentStudy": "s"}}],
        )
        assert client.store_instance(b"x")["ID"] == "i"
        assert mock.call_count == 2
    with rm.Mocker() as mock:
        mock.post(f"{URL}/instances", exc=requests.ConnectionError)
        with pytest.raises(OrthancUnavailable, match="unreachable"):
            client.store_instance(io.BytesIO(b"x"))
        assert mock.call_count == 1  # a stream cannot be rewound: one try


def test_store_instance_translates_refusals(client: OrthancClient) -> None:
    with rm.Mocker() as mock:
        mock.post(f"{URL}/instances", status_code=400, json={"Message": "Bad file format"})
        with pytest.raises(OrthancError) as caught:
            client.store_instance(b"x")
        assert caught.value.orthanc_status == 400
        assert caught.value.details == {"Message": "Bad file format"}


PROBE = f"{URL}/studies/00000000-00000000-00000000-00000000-00000000/labels/authsvc-probe"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"status_code": 404}, None),  # Orthanc looked for the study: writes are allowed
        ({"status_code": 403}, "refuses authsvc's label writes (HTTP 403)"),
        ({"status_code": 401}, "refuses authsvc's label writes (HTTP 401)"),
        ({"status_code": 400}, "answered HTTP 400 to a label write"),
    ],
)
def test_label_write_probe(
    client: OrthancClient, answer: dict[str, int], problem: str | None
) -> None:
    from authsvc.orthanc import label_write_problems

    with rm.Mocker() as mock:
        mock.put(PROBE, **answer)
        found = client.label_write_problem()
        assert (found is None) if problem is None else (problem in (found or ""))
        assert mock.call_count == 1  # never retried: a PUT that is refused stays refused
        assert label_write_problems([client]) == ([] if problem is None else [found])
    if found is not None:
        assert (
            "pw-insecure" not in found and "AUTHSVC_ORTHANC_SERVICE_KEY" in found or "400" in found
        )


def test_label_write_probe_of_an_unreachable_server_is_not_a_problem(client: OrthancClient) -> None:
    from authsvc.orthanc import label_write_problems

    with rm.Mocker() as mock:
        mock.put(PROBE, exc=requests.ConnectionError)
        with pytest.raises(OrthancUnavailable):
            client.label_write_problem()
        assert label_write_problems([client]) == []
