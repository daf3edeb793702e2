"""Shapes declared once: the same pydantic model validates a request and describes it, and a
validation error names the fields at fault without quoting anything the client sent."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from flask import Flask
from pydantic import BaseModel, Field

from {{ cookiecutter.package_name }}.access import requires
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.openapi import document
from {{ cookiecutter.package_name }}.shapes import accepts, answers

from .support import KeySet, bearer


class Address(BaseModel):
    city: Annotated[str, Field(min_length=1)]


class Order(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=20)]
    quantity: Annotated[int, Field(ge=1)]
    ship_to: Address
    notes: dict[str, int] = {}


class Page(BaseModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 100


@pytest.fixture
def orders(make_app) -> Flask:
    app = make_app()

    @requires()
    @accepts(body=Order, query=Page)
    @answers(201, Order, "The order.")
    def create(order: Order, page: Page) -> tuple[dict[str, object], int]:
        return {"order": order.model_dump(), "limit": page.limit}, 201

    app.add_url_rule("/test-only/orders", "create_order", create, methods=["POST"])
    return app


def post(app: Flask, keys: KeySet, body: object, query: str = "") -> dict[str, object]:
    response = app.test_client().post(
        f"/test-only/orders{query}",
        headers=bearer(keys.writer),
        data=json.dumps(body),
        content_type="application/json",
    )
    assert response.content_type in ("application/json", "application/problem+json")
    return {"status": response.status_code, **response.get_json()}


GOOD = {"name": "bolts", "quantity": 3, "ship_to": {"city": "Lyon"}}


def test_a_valid_body_and_query_reach_the_view_as_models(orders: Flask, keys: KeySet) -> None:
    answer = post(orders, keys, GOOD, "?limit=7")
    assert answer == {"status": 201, "order": {**GOOD, "notes": {}}, "limit": 7}


def test_a_422_names_the_fields_at_fault_and_never_the_value_sent(orders: Flask, keys: KeySet) -> None:
    secret = mint(KEY_PREFIX, key_id="x", scopes=["s"]).secret
    body = {"name": secret, "quantity": "three", "ship_to": {"city": ""}}
    answer = post(orders, keys, body, "?limit=1000")
    assert answer["status"] == 422
    assert answer["detail"] == "The request body is not valid for this resource."
    assert {(e["in"], e["pointer"]) for e in answer["errors"]} == {  # type: ignore[union-attr]
        ("body", "#/name"),
        ("body", "#/quantity"),
        ("body", "#/ship_to/city"),
    }
    assert secret not in str(answer)
    assert "three" not in str(answer)


def test_a_bad_query_is_422_naming_the_parameter(orders: Flask, keys: KeySet) -> None:
    answer = post(orders, keys, GOOD, "?limit=0")
    assert answer["status"] == 422
    assert answer["errors"] == [  # type: ignore[comparison-overlap]
        {"in": "query", "pointer": "limit", "detail": "Input should be greater than or equal to 1"}
    ]


def test_a_field_name_the_model_does_not_declare_is_not_echoed(orders: Flask, keys: KeySet) -> None:
    """A dict's keys are the client's text: shown as "*", since one of them may be a key."""
    secret = mint(KEY_PREFIX, key_id="x", scopes=["s"]).secret
    answer = post(orders, keys, {**GOOD, "notes": {secret: "not a number"}})
    assert answer["status"] == 422
    assert answer["errors"][0]["pointer"] == "#/notes/*"  # type: ignore[index]
    assert secret not in str(answer)


@pytest.mark.parametrize("body", [7, "x", None, [GOOD]], ids=["number", "text", "null", "list"])
def test_a_body_that_is_not_an_object_is_422(orders: Flask, keys: KeySet, body: object) -> None:
    answer = post(orders, keys, body)
    assert answer["status"] == 422
    assert answer["errors"][0]["pointer"] == "#/"  # type: ignore[index]


def test_nothing_is_coerced_into_text_or_numbers(orders: Flask, keys: KeySet) -> None:
    assert post(orders, keys, {**GOOD, "name": 7})["status"] == 422
    assert post(orders, keys, {**GOOD, "quantity": "3"})["status"] == 422
    assert post(orders, keys, {**GOOD, "quantity": 3.0})["status"] == 422


def test_the_same_models_describe_the_route(orders: Flask) -> None:
    operation = document(orders)["paths"]["/test-only/orders"]["post"]
    schemas = document(orders)["components"]["schemas"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    assert schemas["Order"]["properties"]["ship_to"] == {"$ref": "#/components/schemas/Address"}
    assert schemas["Order"]["required"] == ["name", "quantity", "ship_to"]
    (limit,) = operation["parameters"]
    assert (limit["name"], limit["in"], limit["schema"]["maximum"]) == ("limit", "query", 100)
    assert set(operation["responses"]) >= {"201", "400", "401", "408", "413", "415", "422", "429", "500"}


def test_each_stacked_answer_describes_the_route_with_its_own_model_and_words(make_app) -> None:
    app = make_app()

    @requires()
    @answers(200, Order, "The order.")
    @answers(202, Address, "Where the order goes, once it is placed.")
    def show(order_id: str) -> dict[str, object]:
        return {}

    app.add_url_rule("/test-only/orders/<order_id>", "show_order", show)
    responses = document(app)["paths"]["/test-only/orders/{order_id}"]["get"]["responses"]
    described = {
        status: (answer["description"], answer["content"]["application/json"]["schema"]["$ref"])
        for status, answer in responses.items()
        if status in ("200", "202")
    }
    assert described == {
        "200": ("The order.", "#/components/schemas/Order"),
        "202": ("Where the order goes, once it is placed.", "#/components/schemas/Address"),
    }
