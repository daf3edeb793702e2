"""Every error is problem+json: no HTML, no traceback, no server path, no key."""

from __future__ import annotations

import io
import logging
import re
from http import HTTPStatus

import pytest
from flask import Flask
from gunicorn.http.errors import InvalidChunkSize, NoMoreData
from werkzeug.exceptions import Gone

from {{ cookiecutter.package_name }} import gate
from {{ cookiecutter.package_name }}.access import public, requires
from {{ cookiecutter.package_name }}.body import json_body
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX

from .support import KeySet, bearer, raw_exchange


@pytest.fixture
def failing_app(make_app) -> Flask:
    app = make_app()

    def explode() -> str:
        raise RuntimeError(f"boom while reading {app.root_path}/secret.txt")

    app.add_url_rule("/test-only/explode", view_func=requires()(explode))
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
def test_routing_errors_are_problem_json(client, keys: KeySet, method: str, path: str, status: int) -> None:
    assert_problem(client.open(path, method=method, headers=bearer(keys.reader)), status)


def test_405_lists_the_allowed_methods(client, keys: KeySet) -> None:
    response = client.delete("/v1/items", headers=bearer(keys.reader))
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize("path", ["/v1/items", "/healthz", "/metrics"])
def test_a_wrong_method_without_a_valid_key_is_a_401_that_maps_no_route(
    client, keys: KeySet, path: str
) -> None:
    """An Allow header would tell a caller without a key which routes exist, and which methods."""
    for headers in ({}, bearer(keys.unconfigured)):
        response = client.open(path, method="PUT", headers=headers)
        assert_problem(response, 401)
        assert "Allow" not in response.headers
        assert response.get_json()["detail"] == client.get("/v1/whoami").get_json()["detail"]


def test_unhandled_exception_is_a_500_problem_without_details(failing_app: Flask, keys: KeySet) -> None:
    response = failing_app.test_client().get("/test-only/explode", headers=bearer(keys.reader))
    body = assert_problem(response, 500)
    text = response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "boom" not in text
    assert failing_app.root_path not in text
    assert "request_id" in str(body["detail"])


def test_unhandled_exception_is_a_500_problem_also_in_debug_mode(failing_app: Flask, keys: KeySet) -> None:
    """As `flask run --debug` serves: the error still reaches the problem handler; Flask would
    otherwise let it through to the debugger, traceback and all."""
    failing_app.debug = True
    response = failing_app.test_client().get("/test-only/explode", headers=bearer(keys.reader))
    assert_problem(response, 500)
    assert "boom" not in response.get_data(as_text=True)


def test_unhandled_exception_is_logged_once_with_its_traceback(
    failing_app: Flask, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        failing_app.test_client().get("/test-only/explode", headers=bearer(keys.reader))
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


def logged_text(line: logging.LogRecord) -> str:
    """Everything the request line carries: its message and every field a formatter writes."""
    return " ".join(str(value) for value in vars(line).values())


UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.mark.parametrize("path", ["/healthz", "/v1/whoami", "/nowhere"], ids=["200", "401", "404"])
@pytest.mark.parametrize("shape", ["{key}", "{uuid}{key}", "{uuid} {key}", "{key}{uuid}"])
def test_a_key_sent_as_request_id_is_neither_echoed_nor_logged(
    client, keys: KeySet, caplog: pytest.LogCaptureFixture, path: str, shape: str
) -> None:
    """Alone or glued to a UUID (a client id must be a UUID and nothing more), on an answer, a
    refusal and an error alike."""
    secret = keys.unconfigured.secret
    with caplog.at_level(logging.INFO):
        response = client.get(path, headers={"X-Request-ID": shape.format(key=secret, uuid=UUID)})
    assert secret[len(KEY_PREFIX) + 1 :][:12] not in str(response.headers) + response.get_data(as_text=True)
    line = request_line(caplog)
    assert line.client_request_id is None
    assert secret[len(KEY_PREFIX) + 1 :][:12] not in logged_text(line) + caplog.text


@pytest.mark.parametrize(
    "query",
    ["?page=2&colour=red", "?x={key}", "?api_key={key}", "?next=/v1/items%3Fpage%3D3"],
    ids=["plain", "key-in-a-value", "key-parameter", "encoded"],
)
def test_the_query_string_never_reaches_the_request_log_line(
    client, keys: KeySet, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    """Keys travel in query strings (refused, but sent all the same): the line says the path."""
    with caplog.at_level(logging.INFO):
        response = client.get("/v1/items" + query.format(key=keys.reader.secret), headers=bearer(keys.reader))
    line = request_line(caplog)
    assert line.path == "/v1/items"
    assert (line.getMessage(), line.method, line.status) == ("request", "GET", response.status_code)
    text = logged_text(line)
    for part in ("?", "colour", "api_key", "page", keys.reader.secret[len(KEY_PREFIX) + 1 :][:12]):
        assert part not in text


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["//v1/items", "/v1//items", "/v1/items/", "//healthz"])
def test_no_path_is_ever_redirected(client, keys: KeySet, method: str, path: str) -> None:
    response = client.open(path, method=method, headers={**bearer(keys.writer), "Host": "evil.example"})
    assert "Location" not in response.headers
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("//v1/whoami", "//v1/whoami"),
        ("/v1//whoami", "/v1//whoami"),
        ("//metrics", "//metrics"),
        ("/v1/whoami", "/v1%2Fwhoami"),
        ("/v1/whoami", "/v1%2fwhoami"),
        ("/v1/whoami", "/v1%5Cwhoami"),
    ],
)
def test_a_doubled_or_encoded_slash_reaches_no_route(client, keys: KeySet, path: str, raw: str) -> None:
    """gunicorn hands routing "//v1/items" as it came, and Werkzeug matches it to "/v1/items";
    "%2F" is decoded before routing. An edge rule on the plain path would miss both."""
    response = client.get(
        path, headers=bearer(keys.reader), environ_overrides={"PATH_INFO": path, "RAW_URI": raw}
    )
    assert_problem(response, 404)
    assert "key_id" not in response.get_data(as_text=True)


def test_a_route_with_a_trailing_slash_is_not_redirected_to(make_app, keys: KeySet) -> None:
    """Werkzeug would answer "/test-only/things" with a redirect to "/test-only/things/", built from Host."""
    app = make_app()
    app.add_url_rule("/test-only/things/", "things", requires()(lambda: {"things": []}))
    response = app.test_client().get(
        "/test-only/things", headers={**bearer(keys.reader), "Host": "evil.example"}
    )
    assert "Location" not in response.headers
    assert_problem(response, 404)


def test_an_http_error_without_a_fixed_text_gets_its_standard_description(make_app) -> None:
    app = make_app()

    def gone() -> str:
        raise Gone

    app.add_url_rule("/test-only/gone", "gone", public(gone))
    body = assert_problem(app.test_client().get("/test-only/gone"), 410)
    assert body["detail"] == HTTPStatus.GONE.description


class BrokenStream(io.BytesIO):
    """A request body whose reading fails the way gunicorn's reader fails on broken framing."""

    def __init__(self, error: Exception) -> None:
        super().__init__(b"{}" * 5)
        self.error = error

    def read(self, *args: object) -> bytes:
        raise self.error

    def readinto(self, *args: object) -> int:
        raise self.error


@pytest.mark.parametrize("error", [NoMoreData(b""), InvalidChunkSize(b"ZZZ")], ids=["short", "bad-chunk"])
def test_a_body_that_breaks_http_framing_is_a_400_problem(make_app, keys: KeySet, error: Exception) -> None:
    """What gunicorn raises while a view reads such a body (the slow test below sends one)."""
    app = make_app()
    app.add_url_rule(
        "/test-only/read", "read_body", requires()(lambda: {"body": json_body()}), methods=["POST"]
    )
    response = app.test_client().post(
        "/test-only/read",
        input_stream=BrokenStream(error),
        headers={**bearer(keys.reader), "Content-Type": "application/json", "Content-Length": "10"},
    )
    body = assert_problem(response, 400)
    assert body["detail"] == "The request body is malformed."


@pytest.mark.slow
def test_body_that_breaks_http_framing_is_400_not_500(start_server, keys: KeySet, client_context) -> None:
    server = start_server()
    request = (
        "POST /v1/items HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {keys.writer.secret}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n"
    )
    answer = raw_exchange(server.port, client_context, request.encode())
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400"
    assert b"application/problem+json" in rest


@pytest.mark.slow
def test_doubled_and_encoded_slashes_reach_no_route_through_gunicorn(
    start_server, keys: KeySet, client_context
) -> None:
    """As a client sends them, past gunicorn's own parsing: the plain path answers, no other
    spelling of it does."""
    server = start_server()
    sent = {}
    for path in ("/v1/whoami", "//v1/whoami", "/v1//whoami", "/v1%2Fwhoami", "/v1%2fwhoami", "//metrics"):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {keys.reader.secret}\r\nConnection: close\r\n\r\n"
        )
        sent[path] = raw_exchange(server.port, client_context, request.encode()).split(b"\r\n", 1)[0]
    assert sent == {
        "/v1/whoami": b"HTTP/1.1 200 OK",
        "//v1/whoami": b"HTTP/1.1 404 NOT FOUND",
        "/v1//whoami": b"HTTP/1.1 404 NOT FOUND",
        "/v1%2Fwhoami": b"HTTP/1.1 404 NOT FOUND",
        "/v1%2fwhoami": b"HTTP/1.1 404 NOT FOUND",
        "//metrics": b"HTTP/1.1 404 NOT FOUND",
    }


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
    answer = raw_exchange(server.port, client_context, request)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413"
    assert b"application/problem+json" in rest


def test_the_request_line_carries_what_happened_and_who_asked(
    client, keys: KeySet, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that reads 10 s as the request starts and 123.456 ms later from then on.
    readings = iter([10.0])
    monkeypatch.setattr(gate, "perf_counter", lambda: next(readings, 10.123456))
    with caplog.at_level(logging.INFO):
        response = client.get("/v1/whoami", headers={**bearer(keys.reader), "X-Request-ID": UUID})
    line = request_line(caplog)
    assert line.getMessage() == "request"  # the path is in its field only: logged once
    assert {name: getattr(line, name) for name in ("method", "path", "status", "key_id", "auth_failure")} == {
        "method": "GET",
        "path": "/v1/whoami",
        "status": 200,
        "key_id": "reader",
        "auth_failure": None,
    }
    assert (line.duration_ms, line.remote_addr, line.client_request_id) == (123.46, "127.0.0.1", UUID)
    assert line.request_id == response.headers["X-Request-ID"]
