"""Requests per second of the items routes with PostgreSQL against SQLite, in one run.

    python bench/items_db.py [--seconds 5] [--rounds 3] [--connections 8] [--creates 300]

Bakes the template twice (``database=sqlite`` and ``database=postgresql``) into a temporary
directory, gives each bake its database as its own scripts do (a SQLite file; a PostgreSQL
server of its own, migrated with ``alembic upgrade head``), starts each with ``gunicorn`` from
its directory (one gevent worker, plain HTTP with APP_ENV=test so that TLS does not dilute the
comparison), and measures with keep-alive Python clients, the two configurations alternating
in rounds: ``GET /v1/items`` (10 items), ``GET /v1/items/<id>`` for ``--seconds`` each, and
``--creates`` ``POST /v1/items`` (each key stays under that route's 30 per minute). Prints the
median req/s of each and the median of the per-round ratios PostgreSQL / SQLite. Needs
PostgreSQL's server programs (as root, run as the ``postgres`` user). Stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path

DATABASES = ("sqlite", "postgresql")
TENANT = "bench"
ITEMS = 10
KEYS = 100
NO_LIMIT = "1000000000 per hour"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Service:
    """One bake: its database (as its scripts/local_database.py gives it) and its gunicorn."""

    def __init__(self, project: Path, database: str, entries: str, workdir: Path) -> None:
        sys.path.insert(0, str(project / "scripts"))  # its local_database imports its siblings
        self.database = load(project / "scripts" / "local_database.py", f"local_database_{database}")
        self.store = self.database.LocalDatabase(workdir)
        self.project, self.port, self.entries = project, free_port(), entries
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.store.start()
        env = {
            **os.environ,
            "PYTHONPATH": str(self.project / "src"),
            "APP_ENV": "test",
            "API_KEYS": self.entries,
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": "1",
            "RATELIMIT_DEFAULT": NO_LIMIT,
            "LOG_LEVEL": "WARNING",
            **self.store.env,
        }
        log = open(self.project / "gunicorn.log", "ab")  # gunicorn keeps its own copy of the descriptor
        with log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn"], cwd=self.project, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"error: gunicorn exited; see {self.project / 'gunicorn.log'}") from None
                time.sleep(0.1)
        raise SystemExit("error: gunicorn did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.store.close()


def call(connection: http.client.HTTPConnection, method: str, path: str, key: str, body: bytes | None) -> int:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def measure(
    port: int,
    connections: int,
    request: Callable[[int], tuple[str, str, str, bytes | None]],
    seconds: float = 0,
    count: int = 0,
) -> tuple[float, int]:
    """Requests per second over ``seconds`` (or for ``count`` requests), and the non-2xx seen."""
    counter = itertools.count()
    done: list[int] = []
    errors: list[int] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            number = next(counter)
            if (count and number >= count) or (seconds and time.monotonic() >= deadline):
                return
            status = call(connection, *request(number))
            (done if 200 <= status < 300 else errors).append(status)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done) / (time.monotonic() - started), len(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--creates", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="items-db-") as scratch, ExitStack() as stack:
        directory = Path(scratch)
        projects = {
            database: baked.bake(directory / database, database=database, project_name="Items Bench")
            for database in DATABASES
        }
        sys.path.insert(0, str(projects["sqlite"] / "src"))
        keys = __import__("items_bench.keys", fromlist=["mint"])
        scopes = ["items:read", "items:write"]
        minted = [
            keys.mint(keys.KEY_PREFIX, key_id=f"b{n}", scopes=scopes, tenant=TENANT) for n in range(KEYS)
        ]
        entries = ",".join(m.entry for m in minted)
        services = {}
        for database, project in projects.items():
            services[database] = Service(project, database, entries, directory / f"{database}-data")
            (directory / f"{database}-data").mkdir()
            services[database].start()
            stack.callback(services[database].stop)
        ids = {}
        for database, service in services.items():
            connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
            for number in range(ITEMS):
                body = json.dumps({"name": f"item {number}"}).encode()
                connection.request(
                    "POST",
                    "/v1/items",
                    body=body,
                    headers={
                        "Authorization": f"Bearer {minted[0].secret}",
                        "Content-Type": "application/json",
                    },
                )
                response = connection.getresponse()
                ids[database] = json.loads(response.read())["id"]
        routes: dict[str, Callable[[str], Callable[[int], tuple[str, str, str, bytes | None]]]] = {
            "GET /v1/items": lambda _db: lambda n: ("GET", "/v1/items", minted[n % KEYS].secret, None),
            "GET /v1/items/<id>": lambda db: (
                lambda n: ("GET", f"/v1/items/{ids[db]}", minted[n % KEYS].secret, None)
            ),
            "POST /v1/items": lambda _db: (
                lambda n: (
                    "POST",
                    "/v1/items",
                    minted[(n + 1) % KEYS].secret,
                    json.dumps({"name": f"bench {n}"}).encode(),
                )
            ),
        }
        rps: dict[tuple[str, str], list[float]] = {}
        failures: dict[str, int] = {}
        for round_number in range(args.rounds):
            order = DATABASES if round_number % 2 == 0 else DATABASES[::-1]
            for route, make in routes.items():
                for database in order:
                    timing: dict[str, Any] = (
                        {"count": args.creates} if route.startswith("POST") else {"seconds": args.seconds}
                    )
                    rate, errors = measure(
                        services[database].port, args.connections, make(database), **timing
                    )
                    rps.setdefault((route, database), []).append(rate)
                    failures[route] = failures.get(route, 0) + errors
        print("| route | SQLite req/s | PostgreSQL req/s | PostgreSQL / SQLite |\n|---|---|---|---|")
        for route in routes:
            sqlite, postgres = rps[(route, "sqlite")], rps[(route, "postgresql")]
            ratio = statistics.median(p / s for p, s in zip(postgres, sqlite, strict=True))
            mark = " (!)" if failures[route] else ""
            print(
                f"| `{route}`{mark} | {statistics.median(sqlite):.0f} | {statistics.median(postgres):.0f} "
                f"| {ratio:.2f} |"
            )
        print(
            f"\n{args.rounds} rounds, {args.connections} connections, one gevent worker each, "
            f"Python {sys.version.split()[0]}"
        )
        return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
