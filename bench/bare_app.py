"""(a) The limit: the service's routes on bare Flask, with no authentication, no rate limiter,
no security headers and no request log. ``/v1/items`` reads the same sqlite store as the
service, so the ratio measures the security stack and not the database."""

from __future__ import annotations

import importlib
import os

from flask import Flask, request

# The baked package's store (standard library only); run.py names the package.
connections = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.connections")
connections.apply_migrations(os.environ["ITEMS_DB"])
items = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.items").ItemStore(
    connections.Database(os.environ["ITEMS_DB"])
)
TENANT = os.environ["BENCH_TENANT"]

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/whoami")
def whoami() -> dict[str, object]:
    return {"key_id": "bench", "tenant": TENANT, "scopes": ["items:read", "items:write"]}


@app.get("/v1/items")
def list_items() -> dict[str, object]:
    return {"items": [item.to_json() for item in items.list(TENANT, 100)]}


@app.post("/v1/items")
def create_item() -> tuple[dict[str, str], int]:
    body = request.get_json(silent=True) or {}
    return items.add(TENANT, str(body.get("name", "x"))).to_json(), 201


@app.get("/v1/items/<item_id>")
def get_item(item_id: str) -> dict[str, str] | tuple[dict[str, str], int]:
    item = items.get(TENANT, item_id)
    return item.to_json() if item is not None else ({"error": "not found"}, 404)
