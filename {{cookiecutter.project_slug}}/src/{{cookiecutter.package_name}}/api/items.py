"""Items of the caller's tenant: the resource to copy, or to generate with ``make resource``.

Its access is one line (``guard``), its shapes are pydantic models that validate requests and
describe the routes in the OpenAPI document, every store call names the caller's tenant, and
its list is read one page at a time.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..access import guard
from ..auth import current_caller
from ..errors import fail
from ..limits import limit
from ..shapes import Body, accepts, answers
from ..stores.items import ItemStore
from .pages import PageQuery, page

MAX_NAME = 200

blueprint = guard(
    Blueprint("items", __name__, url_prefix="/v1/items"), read="items:read", write="items:write"
)


class NewItem(Body):
    """What a client sends to create one of the items; a tenant or an id it sends is ignored."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME)]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    created_at: str


class ItemPage(BaseModel):
    items: list[Item]
    next: Annotated[str | None, Field(description="The cursor of the next page; null on the last.")]


def _store() -> ItemStore:
    store: ItemStore = current_app.extensions["stores"]["items"]
    return store


@blueprint.get("")
@accepts(query=PageQuery)
@answers(200, ItemPage, "One page of the items, oldest first.")
@answers(503)
def list_items(query: PageQuery) -> dict[str, object]:
    """The caller's tenant's items, oldest first, one page at a time."""
    tenant = current_caller().tenant
    items, following = page(query, partial(_store().list, tenant), lambda item: item.position)
    return {"items": [item.to_json() for item in items], "next": following}


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
