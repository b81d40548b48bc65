"""authsvc under a real gunicorn receives what Orthanc's plugin sends: chunked JSON bodies."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import processes


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[processes.Service]:
    """gunicorn serving tests.gunicorn_echo on a free loopback port."""
    state = tmp_path_factory.mktemp("gunicorn-echo")
    server = processes.start_gunicorn_app(
        state,
        processes.free_port(),
        {"AUTHSVC_ENV": "testing", "AUTHSVC_DATA_DIR": str(Path(state) / "data")},
        app_spec="tests.gunicorn_echo:app()",
    )
    with server:
        yield server


def _raw_request(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send one request on a new connection, as the plugin does, and read the whole answer."""
    with socket.create_connection((processes.LOOPBACK, port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_chunked_json_body_reaches_the_view(echo_server: processes.Service) -> None:
    """A body split over several chunks, with no Content-Length, is read whole by the view."""
    payload = json.dumps(
        {"dicom-uid": "1.2.3", "level": "study", "method": "get", "token-value": "x" * 3000},
        sort_keys=True,
    ).encode()
    pieces = [payload[:7], payload[7:1500], payload[1500:]]
    head = (
        b"POST /_test/echo HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Authorization: Basic dXNlcjpwYXNz\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, body = _raw_request(
        echo_server.port, head, [*(_chunk(p) for p in pieces), b"0\r\n\r\n"]
    )
    assert status == 200, echo_server.log_tail()
    assert json.loads(body) == {"received": json.loads(payload)}


def test_truncated_chunked_body_is_a_4xx_not_a_500(echo_server: processes.Service) -> None:
    """A chunked body whose JSON is cut short gets the JSON 400, never a crash."""
    head = (
        b"POST /_test/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, body = _raw_request(echo_server.port, head, [_chunk(b'{"a": '), b"0\r\n\r\n"])
    assert status == 400
    assert json.loads(body)["error"] == "invalid-json"
