"""(b) The seed-style stack, as the snippets in circulation assemble it: raw keys from the
environment compared with ``hmac.compare_digest`` in a loop, Talisman and Flask-Limiter with
their default settings (limiter headers on, keyed on the raw key), and a regex masking
filter on the log handler. Only ``force_https`` is off, so that plain HTTP is answered, and
the limits are set high by run.py so that nothing is limited during a run."""

from __future__ import annotations

import hmac
import importlib
import logging
import os
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, g, jsonify, request
from flask_limiter import Limiter
from flask_talisman import Talisman

connections = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.connections")
connections.apply_migrations(os.environ["ITEMS_DB"])
items = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.items").ItemStore(
    connections.Database(os.environ["ITEMS_DB"])
)
TENANT = os.environ["BENCH_TENANT"]
VALID_API_KEYS = [key for key in os.environ["SEED_API_KEYS"].split(",") if key]


class MaskApiKeys(logging.Filter):
    PATTERN = re.compile(r"(?i)(x-api-key|authorization|api_key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',&]+")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.PATTERN.sub(r"\1\2[MASKED]", str(record.msg))
        return True


handler = logging.StreamHandler()
handler.addFilter(MaskApiKeys())
# Does nothing when the root logger already writes somewhere (bench/inprocess.py runs the
# service in the same process): the seed's filter never touches the service's records.
logging.basicConfig(level=logging.INFO, handlers=[handler])

app = Flask(__name__)
app.config["RATELIMIT_HEADERS_ENABLED"] = True
app.config["RATELIMIT_STORAGE_URI"] = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
app.config["RATELIMIT_DEFAULT"] = os.environ.get("RATELIMIT_DEFAULT", "100 per minute")
Talisman(app, force_https=False)
limiter = Limiter(lambda: request.headers.get("X-API-Key") or request.remote_addr or "", app=app)


def require_api_key(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        provided = request.headers.get("X-API-Key", "")
        for index, key in enumerate(VALID_API_KEYS):
            if hmac.compare_digest(provided.encode(), key.encode()):
                g.key_index = index
                return view(*args, **kwargs)
        return jsonify({"error": "Invalid API key"}), 401

    return wrapper


@app.get("/healthz")
@limiter.exempt
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/whoami")
@require_api_key
def whoami() -> dict[str, object]:
    return {"key_id": f"key-{g.key_index}", "tenant": TENANT, "scopes": ["items:read", "items:write"]}


@app.get("/v1/items")
@require_api_key
def list_items() -> dict[str, object]:
    return {"items": [item.to_json() for item in items.list(TENANT, 100)]}


@app.post("/v1/items")
@require_api_key
def create_item() -> tuple[dict[str, str], int]:
    body = request.get_json(silent=True) or {}
    return items.add(TENANT, str(body.get("name", "x"))).to_json(), 201


@app.get("/v1/items/<item_id>")
@require_api_key
def get_item(item_id: str) -> Any:
    item = items.get(TENANT, item_id)
    return item.to_json() if item is not None else (jsonify({"error": "not found"}), 404)
