"""The reference items API: tenant isolation, validation and the body limit."""

from __future__ import annotations

import io
import logging

import pytest
from flask.testing import FlaskClient

from .support import KeySet, bearer


def post_json(client: FlaskClient, key, body: bytes):
    return client.post("/v1/items", headers=bearer(key), data=body, content_type="application/json")


def create(client: FlaskClient, key, name: str = "widget"):
    return client.post("/v1/items", headers=bearer(key), json={"name": name})


def test_created_item_is_returned_with_its_id(client: FlaskClient, keys: KeySet) -> None:
    response = create(client, keys.writer, "  sprocket ")
    assert response.status_code == 201
    item = response.get_json()
    assert item["name"] == "sprocket"
    assert len(item["id"]) == 32
    fetched = client.get(f"/v1/items/{item['id']}", headers=bearer(keys.reader))
    assert fetched.status_code == 200
    assert fetched.get_json() == item


def test_list_shows_only_the_callers_tenant(client: FlaskClient, keys: KeySet) -> None:
    create(client, keys.writer, "ours")
    create(client, keys.other_tenant, "theirs")
    ours = client.get("/v1/items", headers=bearer(keys.reader)).get_json()["items"]
    theirs = client.get("/v1/items", headers=bearer(keys.other_tenant)).get_json()["items"]
    assert [i["name"] for i in ours] == ["ours"]
    assert [i["name"] for i in theirs] == ["theirs"]


def test_another_tenants_item_is_not_found(client: FlaskClient, keys: KeySet) -> None:
    theirs = create(client, keys.other_tenant).get_json()
    response = client.get(f"/v1/items/{theirs['id']}", headers=bearer(keys.reader))
    missing = client.get("/v1/items/0123456789abcdef0123456789abcdef", headers=bearer(keys.reader))
    assert response.status_code == missing.status_code == 404
    assert response.get_json()["detail"] == missing.get_json()["detail"]


def test_sql_in_an_id_is_just_an_unknown_id(client: FlaskClient, keys: KeySet) -> None:
    create(client, keys.other_tenant)
    response = client.get("/v1/items/x' OR '1'='1", headers=bearer(keys.reader))
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/v1/items/x%00", "/v1/items/%00", "/v1/items/0123456789abcdef%000123"])
def test_an_id_holding_a_nul_byte_is_not_found(
    client: FlaskClient, keys: KeySet, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """PostgreSQL's driver refuses a NUL byte in a parameter (DataError): that was a 500."""
    create(client, keys.writer)
    response = client.get(path, headers=bearer(keys.reader))
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


@pytest.mark.parametrize("name", ["a\u0000b", "\u0000", "widget\u0000"])
def test_a_name_holding_a_nul_byte_is_refused_naming_the_field(
    client: FlaskClient, keys: KeySet, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    response = client.post("/v1/items", headers=bearer(keys.writer), json={"name": name})
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert [error["pointer"] for error in response.get_json()["errors"]] == ["#/name"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert client.get("/v1/items", headers=bearer(keys.reader)).get_json() == {"items": []}


@pytest.mark.parametrize(
    ("body", "status"),
    [({"name": ""}, 422), ({"name": 5}, 422), ({}, 422), ([1, 2], 422), ({"name": "x" * 201}, 422)],
    ids=["empty", "number", "missing", "list", "too-long"],
)
def test_invalid_item_is_422(client: FlaskClient, keys: KeySet, body: object, status: int) -> None:
    response = client.post("/v1/items", headers=bearer(keys.writer), json=body)
    assert response.status_code == status
    assert response.content_type == "application/problem+json"


def test_body_that_is_not_json_is_400(client: FlaskClient, keys: KeySet) -> None:
    response = client.post(
        "/v1/items", headers=bearer(keys.writer), data=b"\xff\xfe{not json", content_type="application/json"
    )
    assert response.status_code == 400


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
    assert "Unicode" in response.get_json()["detail"]


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


def test_items_are_shared_by_apps_on_the_same_database(make_app, keys: KeySet) -> None:
    first, second = make_app().test_client(), make_app().test_client()
    item = create(first, keys.writer).get_json()
    assert second.get(f"/v1/items/{item['id']}", headers=bearer(keys.reader)).status_code == 200


def test_tenant_and_id_in_the_body_are_ignored(client: FlaskClient, keys: KeySet) -> None:
    body = {"name": "mine", "tenant": "globex", "id": "chosen-by-client", "created_at": "1970-01-01"}
    item = client.post("/v1/items", headers=bearer(keys.writer), json=body).get_json()
    assert item["id"] != "chosen-by-client"
    assert item["created_at"] != "1970-01-01"
    assert client.get(f"/v1/items/{item['id']}", headers=bearer(keys.other_tenant)).status_code == 404
    assert client.get(f"/v1/items/{item['id']}", headers=bearer(keys.reader)).status_code == 200


def test_item_ids_are_unpredictable(app) -> None:
    """Ids are random, so a tenant cannot count other tenants' items from its own ids, nor guess
    theirs. Across 32 ids in the order they were made: no prefix or suffix common to all, no
    order, and nearly every character position varies (a UUID4 fixes one of its 32 hex digits).
    An id made of a process id and a counter fails all three.

    Cannot fail by chance with 122 random bits per id: 32 ids share their first (or last) hex
    digit with probability 16**-31 = 2**-124; they come out sorted, either way, with probability
    2/32! < 2**-116; three of the 31 random positions are constant with probability below
    31**3 * 16**-93."""
    store = app.extensions["items"]
    ids = [store.add("acme", f"item {n}").id for n in range(32)]
    assert len(set(ids)) == len(ids)
    assert len({item_id[0] for item_id in ids}) > 1, "every id starts the same"
    assert len({item_id[-1] for item_id in ids}) > 1, "every id ends the same"
    assert ids not in (sorted(ids), sorted(ids, reverse=True)), "ids follow the order they were made in"
    varying = [position for position in range(len(ids[0])) if len({i[position] for i in ids}) > 1]
    assert len(varying) >= len(ids[0]) - 2, f"only {len(varying)} of {len(ids[0])} positions vary"
