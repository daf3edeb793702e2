"""What the security stack costs per request: this service against the same routes on bare
Flask, in one process (WSGI calls in a loop, no server), alternating rounds.

    python scripts/bench_stack.py [--requests 5000] [--rounds 5]

A ratio near 1 means the stack costs little next to Flask itself. The template's bench/
measures the same under gunicorn and wrk, against a seed-style stack too.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from local_database import LocalDatabase

from {{ cookiecutter.package_name }} import create_app, requestlog
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint
from {{ cookiecutter.package_name }}.settings import settings_from
from {{ cookiecutter.package_name }}.store import ItemStore

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
TENANT = "bench"


def bare_app(items: ItemStore) -> Flask:
    """The same read routes with nothing around them: no key, no limit, no headers, no log."""
    app = Flask("bare")

    @app.get("/v1/whoami")
    def whoami() -> dict[str, object]:
        return {"key_id": "bench", "tenant": TENANT, "scopes": ["items:read"]}

    @app.get("/v1/items")
    def list_items() -> dict[str, object]:
        return {"items": [item.to_json() for item in items.list(TENANT)]}

    return app


def environ(path: str, key: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8443", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_AUTHORIZATION": f"Bearer {key}", "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }  # fmt: skip


def microseconds(app: WsgiApp, path: str, key: str, count: int) -> float:
    statuses: set[str] = set()
    started = time.perf_counter()
    for _ in range(count):
        b"".join(app(environ(path, key), lambda status, _headers, _exc=None: statuses.add(status)))
    elapsed = time.perf_counter() - started
    if statuses != {"200 OK"}:
        raise SystemExit(f"error: unexpected answers {statuses}")
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    minted = mint(KEY_PREFIX, key_id="bench", scopes=["items:read"], tenant=TENANT)
    with tempfile.TemporaryDirectory() as directory:
        database = LocalDatabase(Path(directory))
        database.start()
        env = {"APP_ENV": "test", "API_KEYS": minted.entry, **database.env}
        service = create_app(settings_from({**env, "RATELIMIT_DEFAULT": "1000000000 per hour"}))
        # The request line is part of the cost; write it where it costs what a file would.
        handler = logging.StreamHandler(io.StringIO())
        logging.getLogger(requestlog.__name__).handlers = [handler]
        logging.getLogger(requestlog.__name__).propagate = False
        # Both read the same store, so only the stack around it differs.
        bare = bare_app(service.extensions["items"])
        try:
            compare(bare, service, minted.secret, args)
        finally:
            service.extensions["items"].close()
            database.close()


def compare(bare: Flask, service: Flask, key: str, args: argparse.Namespace) -> None:
    for path in ("/v1/whoami", "/v1/items"):
        ratios: list[float] = []
        costs: dict[str, list[float]] = {"bare": [], "service": []}
        for _ in range(args.rounds):
            base = microseconds(bare.wsgi_app, path, key, args.requests)
            ours = microseconds(service, path, key, args.requests)
            costs["bare"].append(base)
            costs["service"].append(ours)
            ratios.append(base / ours)
        print(
            f"GET {path}: bare {statistics.median(costs['bare']):.0f} us, "
            f"service {statistics.median(costs['service']):.0f} us per request; "
            f"service / bare throughput {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
