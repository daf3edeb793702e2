"""Every error is problem+json: no HTML, no traceback, no server path, no key."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from flask import Flask

from .support import KeySet, bearer


@pytest.fixture
def failing_app(make_app) -> Flask:
    app = make_app()

    def explode() -> str:
        raise RuntimeError(f"boom while reading {app.root_path}/secret.txt")

    app.add_url_rule("/v1/explode", view_func=explode)
    return app


def assert_problem(response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("DELETE", "/v1/items", 405),
        ("PATCH", "/healthz", 405),
        ("BREW", "/healthz", 405),
    ],
)
def test_routing_errors_are_problem_json(client, method: str, path: str, status: int) -> None:
    assert_problem(client.open(path, method=method), status)


def test_405_lists_the_allowed_methods(client) -> None:
    assert set(client.delete("/v1/items").headers["Allow"].split(", ")) >= {"GET", "POST"}


def test_unhandled_exception_is_a_500_problem_without_details(failing_app: Flask, keys: KeySet) -> None:
    response = failing_app.test_client().get("/v1/explode", headers=bearer(keys.reader))
    body = assert_problem(response, 500)
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "boom" not in text
    assert failing_app.root_path not in text
    assert "request_id" in str(body["detail"])


def test_unhandled_exception_is_logged_once_with_its_traceback(
    failing_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        failing_app.test_client().get("/v1/explode")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "RuntimeError" in (errors[0].exc_text or "")


@pytest.mark.parametrize(
    "incoming",
    [
        "trace-1234abcd",
        "short",
        "x" * 65,
        "<script>alert(1)</script>",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    ],
)
def test_the_request_id_is_always_the_services_own(client, incoming: str) -> None:
    response = client.get("/nowhere", headers={"X-Request-ID": incoming})
    rid = response.headers["X-Request-ID"]
    assert rid != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.get_json()["request_id"] == rid


def test_two_requests_never_share_an_id(client) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(50)}
    assert len(ids) == 50


def request_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    (line,) = [r for r in caplog.records if r.name.endswith("requestlog")]
    return line


def test_a_client_uuid_is_logged_beside_the_request_id(client, caplog: pytest.LogCaptureFixture) -> None:
    incoming = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    with caplog.at_level(logging.INFO):
        rid = client.get("/healthz", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
    line = request_line(caplog)
    assert (line.request_id, line.client_request_id) == (rid, incoming)


def test_a_key_sent_as_request_id_is_neither_echoed_nor_logged(
    client, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = client.get("/healthz", headers={"X-Request-ID": keys.reader.secret})
    assert keys.reader.secret not in str(response.headers) + response.get_data(as_text=True)
    assert request_line(caplog).client_request_id is None
    assert keys.reader.secret not in caplog.text


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["//v1/items", "/v1//items", "/v1/items/", "//healthz"])
def test_no_path_is_ever_redirected(client, keys: KeySet, method: str, path: str) -> None:
    response = client.open(path, method=method, headers={**bearer(keys.writer), "Host": "evil.example"})
    assert "Location" not in response.headers
    assert_problem(response, 404)


@pytest.mark.slow
def test_body_that_breaks_http_framing_is_400_not_500(start_server, keys: KeySet, client_context) -> None:
    server = start_server()
    request = (
        "POST /v1/items HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {keys.writer.secret}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n"
    )
    raw = socket.create_connection(("127.0.0.1", server.port))
    with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request.encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400"
    assert b"application/problem+json" in rest


@pytest.mark.slow
def test_a_chunked_body_over_the_size_limit_is_413_through_gunicorn(
    start_server, keys: KeySet, client_context
) -> None:
    server = start_server(MAX_CONTENT_LENGTH="1024")
    chunk = b'{"name": "' + b"x" * 3000 + b'"}'
    request = (
        (
            "POST /v1/items HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {keys.writer.secret}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ).encode()
        + f"{len(chunk):x}\r\n".encode()
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    raw = socket.create_connection(("127.0.0.1", server.port))
    with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        answer = b""
        while chunk_read := tls.recv(65536):
            answer += chunk_read
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413"
    assert b"application/problem+json" in rest
