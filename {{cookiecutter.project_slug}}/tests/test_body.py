"""Request bodies that cannot end in a 500 or hold a connection: text that is not JSON or not
Unicode, nesting deep enough to exhaust the parser, another media type, a body over the size
limit, chunked or not. Sent to ``POST /v1/items``, the reference resource's write."""

from __future__ import annotations

import io

import gevent
import pytest
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }} import body as bodies

from .support import KeySet, bearer


class Trickle(io.RawIOBase):
    """A body whose bytes come ``pause`` seconds after the request starts."""

    def __init__(self, data: bytes, pause: float) -> None:
        self.data, self.pause = data, pause

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        gevent.sleep(self.pause)
        size = min(len(buffer), len(self.data))
        buffer[:size], self.data = self.data[:size], self.data[size:]
        return size


def test_body_that_is_not_json_is_400(client: FlaskClient, keys: KeySet) -> None:
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=b"\xff\xfe{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.get_json()["detail"] == "The request body is not valid JSON."


@pytest.mark.parametrize(
    "body",
    [b"[" * 2000 + b"]" * 2000, b'{"a":' * 2000 + b"1" + b"}" * 2000],
    ids=["nested-lists", "nested-objects"],
)
def test_deeply_nested_json_is_400_not_500(client: FlaskClient, keys: KeySet, body: bytes) -> None:
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "body", [b'{"name": "\\ud800"}', b'{"name": "a\\udfffb"}', b'{"\\ud800": 1, "name": "x"}']
)
def test_a_lone_surrogate_is_400_not_500(client: FlaskClient, keys: KeySet, body: bytes) -> None:
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.get_json()["detail"] == "The request body holds text that is not valid Unicode."


def test_a_surrogate_pair_is_just_text(client: FlaskClient, keys: KeySet) -> None:
    body = b'{"name": "\\ud83d\\ude00"}'
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=body, content_type="application/json"
    )
    assert response.status_code == 201
    assert response.get_json()["name"] == "\U0001f600"


def test_a_chunked_body_over_the_size_limit_is_413(make_app, keys: KeySet) -> None:
    client = make_app(MAX_CONTENT_LENGTH="1024").test_client()
    body = b'{"name": "' + b"x" * 2000 + b'"}'
    response = client.post(
        "/v1/items",
        headers={**bearer(keys.writer), "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"


def test_body_of_another_type_is_415(client: FlaskClient, keys: KeySet) -> None:
    response = client.post("/v1/items", headers=bearer(keys.writer), data="name=x")
    assert response.status_code == 415


def test_body_over_the_size_limit_is_413(make_app, keys: KeySet) -> None:
    client = make_app(MAX_CONTENT_LENGTH="1024").test_client()
    response = client.post(
        "/v1/items",
        headers=bearer(keys.writer),
        data=b'{"name": "' + b"x" * 2000 + b'"}',
        content_type="application/json",
    )
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"


def test_a_body_slower_than_its_deadline_is_a_408_that_closes_the_connection(
    client: FlaskClient, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slow tests send a real trickle to gunicorn; here the deadline is short, the body late.
    monkeypatch.setattr(bodies, "BODY_TIMEOUT", 0.05)
    data = b'{"name": "late"}'
    response = client.post(
        "/v1/items",
        headers=bearer(keys.writer),
        content_type="application/json",
        environ_overrides={"wsgi.input": Trickle(data, pause=2), "CONTENT_LENGTH": str(len(data))},
    )
    assert response.status_code == 408
    assert response.content_type == "application/problem+json"
    assert response.headers["Connection"] == "close"


def test_a_body_of_exactly_the_size_limit_is_accepted(make_app, keys: KeySet) -> None:
    client = make_app(MAX_CONTENT_LENGTH="1024").test_client()
    data = b'{"name": "fits"}'.ljust(1024)  # whitespace after a JSON document is still JSON
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=data, content_type="application/json"
    )
    assert response.status_code == 201
