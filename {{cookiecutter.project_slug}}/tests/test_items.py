"""Items: who may read and write them, tenants kept apart, every 4xx a problem, lists that come
in pages without losing a row, and the routes in the OpenAPI document.

``make resource`` copies this file for a new resource, as it copies ``api/items.py`` and
``stores/items.py``: a new resource keeps the promises of this one, held by the same tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.openapi import document

from .support import bearer

PATH = "/v1/items"
READ, WRITE = "items:read", "items:write"


@dataclass(frozen=True)
class Holders:
    """One key per role, for this resource's own scopes."""

    reader: MintedKey
    writer: MintedKey
    other_tenant: MintedKey
    other_resource: MintedKey

    @property
    def entries(self) -> str:
        return ",".join(
            key.entry for key in (self.reader, self.writer, self.other_tenant, self.other_resource)
        )


@pytest.fixture(scope="module")
def holders() -> Holders:
    return Holders(
        reader=mint(KEY_PREFIX, key_id="reader", scopes=[READ], tenant="acme"),
        writer=mint(KEY_PREFIX, key_id="writer", scopes=[READ, WRITE], tenant="acme"),
        other_tenant=mint(KEY_PREFIX, key_id="other", scopes=[READ, WRITE], tenant="globex"),
        # Every scope but this resource's: a key made for another resource.
        other_resource=mint(
            KEY_PREFIX, key_id="elsewhere", scopes=["others:read", "others:write"], tenant="acme"
        ),
    )


@pytest.fixture
def app(make_app: Callable[..., Flask], holders: Holders) -> Flask:
    return make_app(API_KEYS=holders.entries)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def create(client: FlaskClient, key: MintedKey, name: str = "widget") -> dict[str, str]:
    response = client.post(PATH, headers=bearer(key), json={"name": name})
    assert response.status_code == 201, response.get_json()
    created: dict[str, str] = response.get_json()
    return created


def test_created_item_is_returned_with_its_id(client: FlaskClient, holders: Holders) -> None:
    item = create(client, holders.writer, "  sprocket ")
    assert item["name"] == "sprocket"
    assert len(item["id"]) == 32
    fetched = client.get(f"{PATH}/{item['id']}", headers=bearer(holders.reader))
    assert fetched.status_code == 200
    assert fetched.get_json() == item


def test_list_shows_only_the_callers_tenant(client: FlaskClient, holders: Holders) -> None:
    create(client, holders.writer, "ours")
    create(client, holders.other_tenant, "theirs")
    ours = client.get(PATH, headers=bearer(holders.reader)).get_json()["items"]
    theirs = client.get(PATH, headers=bearer(holders.other_tenant)).get_json()["items"]
    assert [i["name"] for i in ours] == ["ours"]
    assert [i["name"] for i in theirs] == ["theirs"]


def test_another_tenants_item_is_not_found(client: FlaskClient, holders: Holders) -> None:
    theirs = create(client, holders.other_tenant)
    response = client.get(f"{PATH}/{theirs['id']}", headers=bearer(holders.reader))
    missing = client.get(f"{PATH}/0123456789abcdef0123456789abcdef", headers=bearer(holders.reader))
    assert response.status_code == missing.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json()["detail"] == missing.get_json()["detail"]


def test_a_tenant_named_in_the_query_is_ignored(client: FlaskClient, holders: Holders) -> None:
    # The tenant is the key's, never the client's to name: another tenant's item stays not found.
    theirs = create(client, holders.other_tenant)
    tenant = holders.other_tenant.key.tenant
    response = client.get(f"{PATH}/{theirs['id']}?tenant={tenant}", headers=bearer(holders.reader))
    assert response.status_code == 404


def test_a_read_only_key_cannot_create_items(client: FlaskClient, holders: Holders) -> None:
    response = client.post(PATH, headers=bearer(holders.reader), json={"name": "nope"})
    assert response.status_code == 403
    assert response.content_type == "application/problem+json"
    assert client.get(PATH, headers=bearer(holders.reader)).get_json()["items"] == []


@pytest.mark.parametrize("method", ["GET list", "POST", "GET one"])
def test_a_key_for_another_resource_gets_403(client: FlaskClient, holders: Holders, method: str) -> None:
    theirs = create(client, holders.writer)
    sent = {
        "GET list": ("GET", PATH, None),
        "POST": ("POST", PATH, {"name": "x"}),
        "GET one": ("GET", f"{PATH}/{theirs['id']}", None),
    }[method]
    response = client.open(sent[1], method=sent[0], json=sent[2], headers=bearer(holders.other_resource))
    assert response.status_code == 403
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("method", ["GET list", "POST", "GET one"])
def test_no_key_gets_401(client: FlaskClient, method: str) -> None:
    sent = {"GET list": ("GET", PATH), "POST": ("POST", PATH), "GET one": ("GET", f"{PATH}/x")}[method]
    response = client.open(sent[1], method=sent[0], json={"name": "x"} if sent[0] == "POST" else None)
    assert response.status_code == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "body",
    [{"name": 7}, {"name": ""}, {"name": "   "}, {}, [1, 2], {"name": "x" * 201}],
    ids=["number", "empty", "blank", "missing", "list", "too-long"],
)
def test_an_invalid_item_is_a_422_problem_naming_the_field(
    client: FlaskClient, holders: Holders, body: object
) -> None:
    response = client.post(PATH, headers=bearer(holders.writer), json=body)
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    pointers = {error["pointer"] for error in response.get_json()["errors"]}
    assert pointers == ({"#/"} if isinstance(body, list) else {"#/name"})


def test_sql_in_an_id_is_just_an_unknown_id(client: FlaskClient, holders: Holders) -> None:
    create(client, holders.other_tenant)
    response = client.get(f"{PATH}/x' OR '1'='1", headers=bearer(holders.reader))
    assert response.status_code == 404


@pytest.mark.parametrize("path", [f"{PATH}/x%00", f"{PATH}/%00", f"{PATH}/0123456789abcdef%000123"])
def test_an_id_holding_a_nul_byte_is_not_found(
    client: FlaskClient, holders: Holders, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """PostgreSQL's driver refuses a NUL byte in a parameter (DataError): that was a 500."""
    create(client, holders.writer)
    response = client.get(path, headers=bearer(holders.reader))
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


@pytest.mark.parametrize("name", ["a\u0000b", "\u0000", "widget\u0000"])
def test_a_name_holding_a_nul_byte_is_refused_naming_the_field(
    client: FlaskClient, holders: Holders, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    response = client.post(PATH, headers=bearer(holders.writer), json={"name": name})
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert [error["pointer"] for error in response.get_json()["errors"]] == ["#/name"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert client.get(PATH, headers=bearer(holders.reader)).get_json()["items"] == []


def test_tenant_and_id_in_the_body_are_ignored(client: FlaskClient, holders: Holders) -> None:
    body = {"name": "mine", "tenant": "globex", "id": "chosen-by-client", "created_at": "1970-01-01"}
    item = client.post(PATH, headers=bearer(holders.writer), json=body).get_json()
    assert item["id"] != "chosen-by-client"
    assert item["created_at"] != "1970-01-01"
    assert client.get(f"{PATH}/{item['id']}", headers=bearer(holders.other_tenant)).status_code == 404
    assert client.get(f"{PATH}/{item['id']}", headers=bearer(holders.reader)).status_code == 200


def test_items_are_shared_by_apps_on_the_same_database(
    make_app: Callable[..., Flask], holders: Holders
) -> None:
    first = make_app(API_KEYS=holders.entries).test_client()
    second = make_app(API_KEYS=holders.entries).test_client()
    item = create(first, holders.writer)
    assert second.get(f"{PATH}/{item['id']}", headers=bearer(holders.reader)).status_code == 200


# --- lists come in pages ---------------------------------------------------------------------


def every_page(client: FlaskClient, key: MintedKey, query: str = "") -> list[dict[str, object]]:
    pages, url = [], f"{PATH}{query}"
    while url:
        response = client.get(url, headers=bearer(key))
        assert response.status_code == 200, response.get_json()
        pages.append(response.get_json())
        after = pages[-1]["next"]
        url = f"{PATH}?cursor={after}{query.replace('?', '&')}" if after is not None else ""
        assert len(pages) < 100, "the pages never end"
    return pages


def test_105_items_come_back_over_pages_none_lost_none_twice(app: Flask, holders: Holders) -> None:
    store = app.extensions["stores"]["items"]
    made = [store.add("acme", f"item {n}").id for n in range(105)]
    store.add("globex", "not ours")
    pages = every_page(app.test_client(), holders.reader)
    assert [len(page["items"]) for page in pages] == [50, 50, 5]  # type: ignore[arg-type]
    seen = [item["id"] for page in pages for item in page["items"]]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(made)
    assert pages[-1]["next"] is None


def test_a_page_holds_at_most_what_the_client_asks_and_at_most_100(app: Flask, holders: Holders) -> None:
    store = app.extensions["stores"]["items"]
    for n in range(7):
        store.add("acme", f"item {n}")
    pages = every_page(app.test_client(), holders.reader, "?limit=3")
    assert [len(page["items"]) for page in pages] == [3, 3, 1]  # type: ignore[arg-type]
    too_many = app.test_client().get(f"{PATH}?limit=101", headers=bearer(holders.reader))
    assert too_many.status_code == 422
    assert too_many.get_json()["errors"][0]["pointer"] == "limit"


def test_a_page_that_ends_on_the_last_item_says_there_is_no_next_page(app: Flask, holders: Holders) -> None:
    store = app.extensions["stores"]["items"]
    for n in range(3):
        store.add("acme", f"item {n}")
    response = app.test_client().get(f"{PATH}?limit=3", headers=bearer(holders.reader))
    assert len(response.get_json()["items"]) == 3
    assert response.get_json()["next"] is None


@pytest.mark.parametrize(
    "cursor", ["zz", "MjAyNi0wMS0wMQ", "A" * 129, "1" * 9 + "a" * 32, "1" * 10 + "A" * 32, "1" * 42 + "a"]
)
def test_a_cursor_not_of_the_documented_pattern_is_a_422(
    client: FlaskClient, holders: Holders, cursor: str
) -> None:
    response = client.get(f"{PATH}?cursor={cursor}", headers=bearer(holders.reader))
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["pointer"] == "cursor"
    assert cursor not in response.get_data(as_text=True)


def test_a_cursor_of_the_documented_pattern_is_read_as_a_position(app: Flask, holders: Holders) -> None:
    """Every cursor the document allows is one the stores can read: before every row, the whole
    list; past every row, an empty page (never a 422, nor a 500)."""
    store = app.extensions["stores"]["items"]
    made = {store.add("acme", f"item {n}").id for n in range(3)}
    client = app.test_client()
    before = client.get(f"{PATH}?cursor={'0' * 42}", headers=bearer(holders.reader))
    past = client.get(f"{PATH}?cursor={'9' * 10}{'f' * 32}", headers=bearer(holders.reader))
    assert before.status_code == past.status_code == 200
    assert {item["id"] for item in before.get_json()["items"]} == made
    assert past.get_json() == {"items": [], "next": None}


def test_items_come_oldest_first_across_pages(app: Flask, holders: Holders) -> None:
    store = app.extensions["stores"]["items"]
    for n in range(5):
        store.add("acme", f"item {n}")
    pages = every_page(app.test_client(), holders.reader, "?limit=2")
    times = [item["created_at"] for page in pages for item in page["items"]]  # type: ignore[attr-defined]
    assert times == sorted(times)


# --- the routes in the document --------------------------------------------------------------


def test_the_document_lists_the_routes_with_their_scopes(app: Flask) -> None:
    paths = document(app)["paths"]
    assert paths[PATH]["get"]["security"][0]["bearerAuth"] == [READ]
    assert paths[PATH]["post"]["security"][0]["bearerAuth"] == [WRITE]
    (one,) = [path for path in paths if path.startswith(f"{PATH}/")]
    assert paths[one]["get"]["security"][0]["bearerAuth"] == [READ]
    assert {"limit", "cursor"} <= {parameter["name"] for parameter in paths[PATH]["get"]["parameters"]}


def test_item_ids_are_unpredictable(app: Flask) -> None:
    """Ids are random, so a tenant cannot count other tenants' items from its own ids, nor guess
    theirs. Across 32 ids in the order they were made: no prefix or suffix common to all, no
    order, and nearly every character position varies (a UUID4 fixes one of its 32 hex digits).
    An id made of a process id and a counter fails all three.

    Cannot fail by chance with 122 random bits per id: 32 ids share their first (or last) hex
    digit with probability 16**-31 = 2**-124; they come out sorted, either way, with probability
    2/32! < 2**-116; three of the 31 random positions are constant with probability below
    31**3 * 16**-93."""
    store = app.extensions["stores"]["items"]
    ids = [store.add("acme", f"item {n}").id for n in range(32)]
    assert len(set(ids)) == len(ids)
    assert len({item_id[0] for item_id in ids}) > 1, "every id starts the same"
    assert len({item_id[-1] for item_id in ids}) > 1, "every id ends the same"
    assert ids not in (sorted(ids), sorted(ids, reverse=True)), "ids follow the order they were made in"
    varying = [position for position in range(len(ids[0])) if len({i[position] for i in ids}) > 1]
    assert len(varying) >= len(ids[0]) - 2, f"only {len(varying)} of {len(ids[0])} positions vary"
