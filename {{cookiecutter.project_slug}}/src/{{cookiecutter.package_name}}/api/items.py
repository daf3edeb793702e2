"""Items of the caller's tenant. Copy this module to add a resource: declare its scopes once."""

from __future__ import annotations

from flask import Response, current_app

from ..auth import current_caller, scoped_blueprint
from ..body import json_body
from ..errors import fail, problem
from ..limits import limit
from ..store import ItemStore, StoreUnavailable

MAX_NAME = 200

blueprint = scoped_blueprint(
    "items", __name__, url_prefix="/v1/items", scope="items:read", write_scope="items:write"
)


def _store() -> ItemStore:
    store: ItemStore = current_app.extensions["items"]
    return store


@blueprint.errorhandler(StoreUnavailable)
def _unavailable(error: StoreUnavailable) -> Response:
    # The database is down or too slow: the client may retry, and the rest of the API works on.
    return problem(503, headers={"Retry-After": str(error.retry_after)})


@blueprint.get("")
def list_items() -> dict[str, object]:
    items = _store().list(current_caller().tenant)
    return {"items": [item.to_json() for item in items]}


@blueprint.post("")
@limit("30 per minute")
def create_item() -> tuple[dict[str, str], int]:
    body = json_body()
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        fail(422, f"'name' must be a non-empty string of at most {MAX_NAME} characters.")
    item = _store().add(current_caller().tenant, name.strip())
    return item.to_json(), 201


@blueprint.get("/<item_id>")
def get_item(item_id: str) -> dict[str, str]:
    # Another tenant's item is "not found", not "forbidden": its existence is not revealed.
    item = _store().get(current_caller().tenant, item_id)
    if item is None:
        fail(404)
    return item.to_json()
