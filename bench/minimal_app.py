"""(m) The minimal stack the seeds' advice adds up to, done right where it is cheap: two raw keys
compared with ``hmac.compare_digest`` in one ``before_request``, Talisman with an API's
Content-Security-Policy and no HTTPS redirect, Flask-Limiter keyed by the key's id (never the
key) with its headers on, and a regex masking filter on the root logger. It writes no request
log line. The service must come near it while doing more (scopes, tenants, budgets, one masked
request line, problem+json): run.py prints the ratio."""

from __future__ import annotations

import hmac
import importlib
import logging
import os
import re

from flask import Flask, abort, g, request
from flask_limiter import Limiter
from flask_talisman import Talisman

connections = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.connections")
connections.apply_migrations(os.environ["ITEMS_DB"])
items = importlib.import_module(f"{os.environ['BENCH_PACKAGE']}.stores.items").ItemStore(
    connections.Database(os.environ["ITEMS_DB"])
)
TENANT = os.environ["BENCH_TENANT"]
# Two keys, the last of them the one run.py presents: the loop's worst case.
KEYS = [key.encode() for key in os.environ["MINIMAL_API_KEYS"].split(",") if key][-2:]


class MaskKeys(logging.Filter):
    PATTERN = re.compile(r"(?i)(x-api-key|authorization|api_key)([\"']?\s*[:=]\s*[\"']?)[^\s\"',&]+")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.PATTERN.sub(r"\1\2[MASKED]", str(record.msg))
        return True


logging.getLogger().addFilter(MaskKeys())

app = Flask(__name__)


@app.before_request
def authenticate() -> None:
    if request.endpoint == "healthz":
        return
    presented = request.headers.get("X-API-Key", "").encode()
    for index, key in enumerate(KEYS):
        if hmac.compare_digest(presented, key):
            g.key_id = f"key-{index}"
            return
    abort(401)


# Registered after the key check: Flask runs app-level before_request hooks in order, and the
# limiter's key function reads the id the check found.
limiter = Limiter(
    lambda: g.get("key_id") or request.remote_addr or "",
    app=app,
    default_limits=["100000000 per minute"],
    headers_enabled=True,
    storage_uri=os.environ.get("RATELIMIT_STORAGE_URI", "memory://"),
)
Talisman(app, force_https=False, content_security_policy={"default-src": "'none'"})


@app.get("/healthz")
@limiter.exempt
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/whoami")
def whoami() -> dict[str, object]:
    return {"key_id": g.key_id, "tenant": TENANT, "scopes": ["items:read", "items:write"]}


@app.get("/v1/items")
def list_items() -> dict[str, object]:
    return {"items": [item.to_json() for item in items.list(TENANT, 100)]}


@app.post("/v1/items")
def create_item() -> tuple[dict[str, str], int]:
    body = request.get_json(silent=True) or {}
    return items.add(TENANT, str(body.get("name", "x"))).to_json(), 201
