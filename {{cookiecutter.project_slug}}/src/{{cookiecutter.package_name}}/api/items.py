"""Items of the caller's tenant: the example to copy, or to generate with ``make resource``.

Its access is one line (``guard``), its shapes are pydantic models that validate requests and
describe the routes in the OpenAPI document, and every store call names the caller's tenant.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from ..access import guard
from ..auth import current_caller
from ..errors import fail, problem
from ..limits import limit
from ..shapes import accepts, answers
from ..store import ItemStore, StoreUnavailable

MAX_NAME = 200

blueprint = guard(
    Blueprint("items", __name__, url_prefix="/v1/items"), read="items:read", write="items:write"
)


class NewItem(BaseModel):
    """What a client sends to create an item; a tenant or an id it sends is ignored."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME)]

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        # No database text holds a NUL byte (PostgreSQL refuses it; C code reading SQLite's
        # stops at it): refused here, by name, for every text field.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character (U+0000)")
        return value


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    created_at: str


class ItemList(BaseModel):
    items: list[Item]


def _store() -> ItemStore:
    store: ItemStore = current_app.extensions["items"]
    return store


@blueprint.errorhandler(StoreUnavailable)
def _unavailable(error: StoreUnavailable) -> Response:
    # The database is down or too slow: the client may retry, and the rest of the API works on.
    return problem(503, headers={"Retry-After": str(error.retry_after)})


@blueprint.get("")
@answers(200, ItemList, "The items.")
@answers(503)
def list_items() -> dict[str, object]:
    """The caller's tenant's items, oldest first (at most 100)."""
    items = _store().list(current_caller().tenant)
    return {"items": [item.to_json() for item in items]}


@blueprint.post("")
@limit("30 per minute")
@accepts(body=NewItem)
@answers(201, Item, "The new item, with its id.")
@answers(503)
def create_item(new: NewItem) -> tuple[dict[str, str], int]:
    """Create an item in the caller's tenant (30 per minute per key)."""
    item = _store().add(current_caller().tenant, new.name)
    return item.to_json(), 201


@blueprint.get("/<item_id>")
@answers(200, Item, "The item.")
@answers(404, description="No such item in the caller's tenant.")
@answers(503)
def get_item(item_id: str) -> dict[str, str]:
    """One item of the caller's tenant."""
    # Another tenant's item is "not found", not "forbidden": its existence is not revealed.
    item = _store().get(current_caller().tenant, item_id)
    if item is None:
        fail(404)
    return item.to_json()
