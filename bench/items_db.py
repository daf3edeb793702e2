"""Requests per second of the items routes on SQLite and on PostgreSQL, and what writes do to
another route's latency, in one run.

    python bench/items_db.py [--seconds 5] [--rounds 3] [--connections 8] [--creates 300]
                             [--databases sqlite,postgresql]

Bakes the template (``database=sqlite`` and ``database=postgresql``) into a temporary
directory. Gives each its database as its own scripts do (a SQLite file; a PostgreSQL server of
its own, migrated with ``alembic upgrade head``), starts each with ``gunicorn`` from its directory (one gevent
worker, plain HTTP with APP_ENV=test so that TLS does not dilute the comparison), and measures
with keep-alive Python clients, the configurations alternating in rounds:

* ``GET /v1/items`` (10 items) and ``GET /v1/items/<id>`` for ``--seconds`` each, and
  ``--creates`` ``POST /v1/items`` (each key stays under that route's 30 per minute);
* ``GET /v1/whoami``'s latency from one more client, for ``--seconds`` alone, then while
  ``--creates`` writes arrive on ``--connections`` other connections, then for as long while
  those connections send writes that the service refuses with 422 before any database call
  (the same stack without the store: the event loop's share among the connections).

Prints the median req/s of each route, the median of the per-round ratios (PostgreSQL /
SQLite), the whoami latencies (p50, p99, max over every round), and what one SQLite store call
costs in one process without HTTP, in the caller's thread and through the gevent thread pool
(the price of keeping it off the event loop). Needs PostgreSQL's server programs for
``postgresql`` (as root, run as the ``postgres`` user). Stops by itself.

The SQLite store before it left the event loop (one connection per call, on the loop) was
measured with this script at commit 7c2c23f9 and its figures are in docs/benchmarks.md.
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
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path

CONFIGURATIONS = ("sqlite", "postgresql")
TENANT = "bench"
ITEMS = 10
KEYS = 500  # their entries stay well under the kernel's 128 KiB for one variable
NO_LIMIT = "1000000000 per hour"
Request = tuple[str, str, str, bytes | None]


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

    def __init__(self, project: Path, name: str, entries: str, workdir: Path) -> None:
        sys.path.insert(0, str(project / "scripts"))  # its local_database imports its siblings
        self.database = load(project / "scripts" / "local_database.py", f"local_database_{name}")
        workdir.mkdir()
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
    request: Callable[[int], Request],
    seconds: float = 0,
    count: int = 0,
    expect: range | tuple[int, ...] = range(200, 300),
) -> tuple[float, int]:
    """Requests per second over ``seconds`` (or for ``count`` requests), and the answers seen
    whose status was not in ``expect``."""
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
            (done if status in expect else errors).append(status)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done) / (time.monotonic() - started), len(errors)


def whoami_latencies(port: int, key: str, during: Callable[[], Any]) -> list[float]:
    """Seconds per ``GET /v1/whoami`` on one keep-alive connection, while ``during()`` runs."""
    seconds: list[float] = []
    finished = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not finished.is_set():
            started = time.perf_counter()
            call(connection, "GET", "/v1/whoami", key, None)
            seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        during()
    finally:
        finished.set()
        thread.join()
    return seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def seed(port: int, key: str) -> str:
    """``ITEMS`` items of the bench tenant; returns the id of the last."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    item_id = ""
    for number in range(ITEMS):
        body = json.dumps({"name": f"item {number}"}).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        connection.request("POST", "/v1/items", body=body, headers=headers)
        item_id = json.loads(connection.getresponse().read())["id"]
    return item_id


# One process, one store, no HTTP: microseconds per store call as the service makes it, in a
# thread of the gevent pool (argv[1] == "gevent") or in the caller's thread.
HOP = """
import sys, time
if sys.argv[1] == "gevent":
    from gevent import monkey

    monkey.patch_all()
import importlib

connections = importlib.import_module(sys.argv[2] + ".stores.connections")
connections.apply_migrations(sys.argv[3])
items = importlib.import_module(sys.argv[2] + ".stores.items").ItemStore(connections.Database(sys.argv[3]))
ids = [items.add("t", "x").id for _ in range(100)]
started = time.perf_counter()
for n in range(5000):
    items.get("t", ids[n % 100])
print("get", (time.perf_counter() - started) / 5000 * 1e6)
started = time.perf_counter()
for n in range(1000):
    items.add("t", "y")
print("add", (time.perf_counter() - started) / 1000 * 1e6)
"""


def hop_cost(projects: dict[str, Path], directory: Path, rounds: int) -> str:
    """The median microseconds per ``get`` and ``add`` of the SQLite store, in the caller's
    thread and through the gevent thread pool (where it runs under gunicorn); each in a fresh
    process on a fresh file."""
    columns = {"caller's thread": ("sqlite", "inline"), "gevent thread pool": ("sqlite", "gevent")}
    figures: dict[tuple[str, str], list[float]] = {}
    for number in range(rounds):
        for column, (name, mode) in columns.items():
            project = projects[name]
            path = directory / f"hop-{name}-{mode}-{number}.sqlite3"
            result = subprocess.run(
                [sys.executable, "-c", HOP, mode, baked.package_of(project), str(path)],
                env={**os.environ, "PYTHONPATH": str(project / "src")},
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            for line in result.stdout.splitlines():
                call, micros = line.split()
                figures.setdefault((call, column), []).append(float(micros))
    lines = [f"| store call, µs in process | {' | '.join(columns)} |", f"|---|{'---:|' * len(columns)}"]
    for call in ("get", "add"):
        cells = [f"{statistics.median(figures[(call, column)]):.0f}" for column in columns]
        lines.append(f"| `{call}` | {' | '.join(cells)} |")
    return "\n".join(lines)


def ratio(numerators: list[float], denominators: list[float]) -> str:
    return f"{statistics.median(n / d for n, d in zip(numerators, denominators, strict=True)):.2f}"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument("--databases", default=",".join(CONFIGURATIONS), help="which configurations to run")
    args = parser.parse_args()
    args.databases = [name for name in CONFIGURATIONS if name in args.databases.split(",")]
    return args


def bake_all(names: list[str], directory: Path) -> dict[str, Path]:
    """The project of each configuration."""
    return {name: baked.bake(directory / name, database=name, project_name="Items Bench") for name in names}


class Plan:
    """The keys, the requests of each route, and the figures gathered round after round."""

    def __init__(self, args: argparse.Namespace, minted: list[Any], services: dict[str, Service]) -> None:
        self.args, self.minted, self.services = args, minted, services
        self.ids = {name: seed(service.port, minted[0].secret) for name, service in services.items()}
        self.writes = itertools.count(1)
        self.rps: dict[tuple[str, str], list[float]] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.failures = 0
        self.routes: dict[str, Callable[[str], Callable[[int], Request]]] = {
            "GET /v1/items": lambda _name: lambda n: ("GET", "/v1/items", self.key(n), None),
            "GET /v1/items/<id>": lambda name: (
                lambda n: ("GET", f"/v1/items/{self.ids[name]}", self.key(n), None)
            ),
            "POST /v1/items": lambda _name: self.post,
        }

    def key(self, number: int) -> str:
        return str(self.minted[number % KEYS].secret)

    def post(self, _n: int) -> Request:
        # Each write takes the next key: no key nears the route's 30 per minute.
        number = next(self.writes)
        return "POST", "/v1/items", self.key(number), json.dumps({"name": f"bench {number}"}).encode()

    def refused(self, _n: int) -> Request:
        # The same stack as a write (key, limits, body), refused before the store: 422.
        return "POST", "/v1/items", self.key(next(self.writes)), b'{"name": ""}'

    def round(self, number: int) -> None:
        order = list(self.services) if number % 2 == 0 else list(self.services)[::-1]
        for route, make in self.routes.items():
            for name in order:
                timing = (
                    {"count": self.args.creates}
                    if route.startswith("POST")
                    else {"seconds": self.args.seconds}
                )
                rate, errors = measure(self.services[name].port, self.args.connections, make(name), **timing)
                self.rps.setdefault((route, name), []).append(rate)
                self.failures += errors
        for name in order:
            port, key = self.services[name].port, self.key(-1)
            alone = partial(time.sleep, self.args.seconds)
            writes = partial(measure, port, self.args.connections, self.post, count=self.args.creates)
            self.latency.setdefault(("alone", name), []).extend(whoami_latencies(port, key, alone))
            started = time.monotonic()
            self.latency.setdefault(("writes", name), []).extend(whoami_latencies(port, key, writes))
            refused = partial(
                measure, port, self.args.connections, self.refused, time.monotonic() - started, expect=(422,)
            )
            self.latency.setdefault(("refused", name), []).extend(whoami_latencies(port, key, refused))

    def tables(self) -> str:
        names = list(self.services)
        columns = [*names]
        if {"sqlite", "postgresql"} <= set(names):
            columns.append("PostgreSQL / SQLite")
        lines = [f"| route | {' | '.join(columns)} |", f"|---|{'---:|' * len(columns)}"]
        for route in self.routes:
            cells = [f"{statistics.median(self.rps[(route, name)]):.0f}" for name in names]
            if "PostgreSQL / SQLite" in columns:
                cells.append(ratio(self.rps[(route, "postgresql")], self.rps[(route, "sqlite")]))
            lines.append(f"| `{route}` req/s | {' | '.join(cells)} |")
        lines += ["", f"| `GET /v1/whoami`, ms | {' | '.join(names)} |", f"|---|{'---:|' * len(names)}"]
        phases = {
            "alone": "alone",
            "writes": f"during {self.args.creates} writes",
            "refused": "as long, during writes refused with 422 (no database call)",
        }
        for phase, label in phases.items():
            cells = []
            for name in names:
                values = [seconds * 1000 for seconds in self.latency[(phase, name)]]
                cells.append(
                    f"p50 {percentile(values, 0.5):.1f}, p99 {percentile(values, 0.99):.1f}, "
                    f"max {max(values):.0f} (n={len(values)})"
                )
            lines.append(f"| {label} | {' | '.join(cells)} |")
        return "\n".join(lines)


def main() -> int:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="items-db-") as scratch, ExitStack() as stack:
        directory = Path(scratch)
        projects = bake_all(args.databases, directory)
        keys = baked.module(next(iter(projects.values())), "keys")
        scopes = ["items:read", "items:write"]
        minted = [
            keys.mint(keys.KEY_PREFIX, key_id=f"b{n}", scopes=scopes, tenant=TENANT) for n in range(KEYS)
        ]
        entries = ",".join(m.entry for m in minted)
        services = {}
        for name, project in projects.items():
            services[name] = Service(project, name, entries, directory / f"{name}-data")
            services[name].start()
            stack.callback(services[name].stop)
        plan = Plan(args, minted, services)
        for number in range(args.rounds):
            plan.round(number)
        print(plan.tables())
        if "sqlite" in projects:
            print("\n" + hop_cost(projects, directory, args.rounds))
        print(
            f"\n{args.rounds} rounds, {args.connections} connections, one gevent worker each, "
            f"Python {sys.version.split()[0]}"
        )
        if plan.failures:
            print(
                f"(!) {plan.failures} responses were not 2xx: the figures are not comparable", file=sys.stderr
            )
        return 1 if plan.failures else 0


if __name__ == "__main__":
    sys.exit(main())
