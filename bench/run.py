"""Requests per second of a baked service against (a) bare Flask, (m) the minimal stack and
(b) the seed-style stack.

    python bench/run.py [--seconds 5] [--rounds 3] [--connections 8] [--markdown] [--project DIR]

Bakes the template with its defaults into a temporary directory (or takes --project), starts a
redis-server on a free port and eight gunicorn servers on 127.0.0.1 in two configurations:
``memory://`` on one worker and Redis on two (bare, minimal, seed and service in each), all
with gunicorn's gevent worker (the service's default) over plain HTTP. Then it measures
``GET /v1/whoami`` and ``GET /v1/items`` with wrk (keep-alive, a valid key in X-API-Key),
alternating the servers in rounds. Prints the median req/s, the medians of the per-round ratios
to (a), (m) and (b) of the same configuration, the worker CPU time per request, and the floors
on /v1/whoami. Needs wrk and redis-server on PATH. Stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType

import baked  # the bench directory is not a package: run as a script, it is on sys.path

BENCH = Path(__file__).resolve().parent
PATHS = ("/v1/whoami", "/v1/items")
TENANT = "bench"
ITEMS = 10
KEYS = 5  # configured keys; the benchmark presents the last one (the seed loop's worst case).
# High enough that no configuration is ever limited during a run.
NO_LIMIT = "1000000000 per hour"
# On GET /v1/whoami the service must do at least this share of the minimal stack's req/s.
FLOORS = {"memory": 0.85, "redis": 0.90}
STORAGES = tuple(FLOORS)
APPS = ("bare", "minimal", "seed", "service")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The run cannot give a meaningful figure."""


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user and system) of the server's workers so far: robust to a busy machine."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ticks = 0
        for child in children:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / CLOCK_TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Measurement:
    rps: float
    requests: int
    failures: int
    cpu_seconds: float

    @property
    def cpu_us(self) -> float:
        """Worker CPU per request, in microseconds."""
        return self.cpu_seconds / max(1, self.requests) * 1e6


@dataclass
class Results:
    rps: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cpu_us: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, name: str, path: str, measured: Measurement) -> None:
        self.rps.setdefault((name, path), []).append(measured.rps)
        self.cpu_us.setdefault((name, path), []).append(measured.cpu_us)
        self.errors[(name, path)] = self.errors.get((name, path), 0) + measured.failures

    def median(self, name: str, path: str) -> float:
        return statistics.median(self.rps[(name, path)])

    def ratio(self, name: str, path: str, to: str = "bare") -> float:
        """Median of the per-round ratios: each round's figures were taken minutes apart at most."""
        pairs = zip(self.rps[(name, path)], self.rps[(to, path)], strict=True)
        return statistics.median(mine / other for mine, other in pairs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(project: Path, db: Path) -> tuple[str, str, list[str]]:
    """Mint keys with the service's own code and fill the items store; returns the key
    presented, the service's entries and the seed's raw keys."""
    keys = baked.module(project, "keys")
    minted = [
        keys.mint(keys.KEY_PREFIX, key_id=f"bench{i}", scopes=["items:read", "items:write"], tenant=TENANT)
        for i in range(KEYS)
    ]
    items = baked.items_store(project, str(db))
    for number in range(ITEMS):
        items.add(TENANT, f"item {number}")
    secrets = [m.secret for m in minted]
    return secrets[-1], ",".join(m.entry for m in minted), secrets


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not on PATH")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise BenchError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def workers(args: argparse.Namespace, storage: str) -> int:
    return int(args.memory_workers if storage == "memory" else args.redis_workers)


def gunicorn_args(args: argparse.Namespace, port: int, storage: str) -> list[str]:
    """The same settings for every configuration; the command line wins over any config file."""
    return [
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers(args, storage)),
        # The service's default worker model, for every app: a greenlet per connection.
        "--worker-class",
        "gevent",
        "--worker-connections",
        str(args.worker_connections),
        "--keep-alive",
        "5",
    ]


def start(name: str, cwd: Path, app: list[str], env: dict[str, str], args: argparse.Namespace) -> Server:
    port = free_port()
    storage = name.rsplit("-", 1)[1]
    log = Path(env["BENCH_LOGS"]) / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *gunicorn_args(args, port, storage), *app],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, port, process, log)


def base_env(project: Path, package: str, work: Path, db: Path) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("API_KEYS", "GUNICORN_", "RATELIMIT_", "WEB_CONCURRENCY", "APP_ENV"))
    }
    environ["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(project / "src")])
    environ.update(BENCH_PACKAGE=package, BENCH_TENANT=TENANT, ITEMS_DB=str(db), BENCH_LOGS=str(work))
    return environ


def server_specs(
    args: argparse.Namespace, project: Path, env: dict[str, str], redis_uri: str, entries: str, raw: list[str]
) -> list[tuple[str, Path, list[str], dict[str, str]]]:
    """(name, working directory, gunicorn app argument, environment) of each configuration."""
    plain = Path(env["BENCH_LOGS"]) / "plain"  # no gunicorn.conf.py here: gunicorn's defaults.
    plain.mkdir(exist_ok=True)
    limits = {"RATELIMIT_DEFAULT": NO_LIMIT}
    service = {
        **env,
        **limits,
        # Plain HTTP: the service allows it outside production (TLS cost would dilute the ratios).
        "APP_ENV": "test",
        "API_KEYS": entries,
    }
    seed = {**env, **limits, "SEED_API_KEYS": ",".join(raw)}
    minimal = {**env, "MINIMAL_API_KEYS": ",".join(raw)}  # its own limit: 10^8 per minute
    specs = []
    for storage, uri in (("memory", "memory://"), ("redis", redis_uri)):
        stored = {"RATELIMIT_STORAGE_URI": uri}
        specs.append((f"bare-{storage}", plain, ["bare_app:app"], env))
        specs.append((f"minimal-{storage}", plain, ["minimal_app:app"], {**minimal, **stored}))
        specs.append((f"seed-{storage}", plain, ["seed_app:app"], {**seed, **stored}))
        # The service reads its own gunicorn.conf.py (its logging, its access logger).
        specs.append(
            (
                f"service-{storage}",
                project,
                [],
                {**service, **stored, "WEB_CONCURRENCY": str(workers(args, storage))},
            )
        )
    wanted = (
        {f"bare-{name.rsplit('-', 1)[1]}" for name in args.configs} | set(args.configs)
        if args.configs
        else None
    )
    return [spec for spec in specs if wanted is None or spec[0] in wanted]


def get(server: Server, path: str, key: str | None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", path, headers={"X-API-Key": key} if key else {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def wait_serving(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited:\n{server.log.read_text(errors='replace')[-3000:]}")
        try:
            if get(server, "/healthz", None).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise BenchError(f"{server.name} did not start")


def check(server: Server, key: str) -> None:
    """Every configuration answers the key with 200 and refuses a missing key (but the bare one)."""
    for path in PATHS:
        response = get(server, path, key)
        if response.status != 200:
            raise BenchError(f"{server.name} {path}: {response.status} with a valid key")
        # The seed sends Flask-Limiter's X-RateLimit-* fields, the service the IETF RateLimit.
        fields = (response.getheader("X-RateLimit-Limit"), response.getheader("RateLimit"))
        if not server.name.startswith("bare") and fields == (None, None):
            raise BenchError(f"{server.name} {path}: no rate-limit headers")
    if not server.name.startswith("bare") and get(server, "/v1/whoami", None).status != 401:
        raise BenchError(f"{server.name}: /v1/whoami without a key is not 401")


def wrk(server: Server, path: str, key: str, seconds: int, connections: int) -> Measurement:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    command += ["-H", f"X-API-Key: {key}", server.address + path]
    cpu = server.cpu_seconds()
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    cpu = server.cpu_seconds() - cpu
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if rate is None or count is None:
        raise BenchError(f"wrk printed no rate:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*timeout (\d+)", output)
    failures = (int(bad.group(1)) if bad else 0) + (int(errors.group(1)) if errors else 0)
    return Measurement(float(rate.group(1)), int(count.group(1)), failures, cpu)


def measure(servers: Sequence[Server], key: str, args: argparse.Namespace) -> Results:
    results = Results()
    for server in servers:  # warm-up: imports, first connections, Redis pools
        wrk(server, PATHS[0], key, 1, args.connections)
    for number in range(args.rounds):
        # Rotate the order each round, so no configuration always runs first or last.
        order = [*servers[number % len(servers) :], *servers[: number % len(servers)]]
        for path in args.paths:
            for server in order:
                results.add(server.name, path, wrk(server, path, key, args.seconds, args.connections))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    return results


def ratio_cell(results: Results, name: str, path: str, to: str, names: Sequence[str]) -> str:
    """The median per-round ratio of ``name`` to the app ``to`` of the same configuration."""
    other = f"{to}-{name.rsplit('-', 1)[1]}"
    if name == other or other not in names:
        return ""
    return f"{results.ratio(name, path, other):.2f}"


def table(results: Results, names: Sequence[str], paths: Sequence[str], markdown: bool) -> str:
    head = ("configuration", "path", "req/s (median)", "min-max")
    rows = [(*head, "ratio to (a)", "ratio to (m)", "ratio to (b)", "CPU us/req")]
    for path in paths:
        for name in names:
            values = results.rps[(name, path)]
            flag = " (!)" if results.errors[(name, path)] else ""
            rows.append(
                (
                    name,
                    path,
                    f"{results.median(name, path):.0f}{flag}",
                    f"{min(values):.0f}-{max(values):.0f}",
                    *(ratio_cell(results, name, path, to, names) for to in ("bare", "minimal", "seed")),
                    f"{statistics.median(results.cpu_us[(name, path)]):.0f}",
                )
            )
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def verdict(results: Results, args: argparse.Namespace) -> str:
    """The floors: on GET /v1/whoami the service does at least FLOORS[storage] of (m)'s req/s."""
    path = "/v1/whoami"
    have = {name for name, _ in results.rps}
    parts = []
    for storage, floor in FLOORS.items():
        service, minimal, bare = f"service-{storage}", f"minimal-{storage}", f"bare-{storage}"
        if {service, minimal, bare} <= have and path in args.paths:
            pairs = zip(results.rps[(service, path)], results.rps[(minimal, path)], strict=True)
            ratios = [mine / other for mine, other in pairs]
            ratio = statistics.median(ratios)
            parts.append(
                f"{storage} ({workers(args, storage)} worker(s)): {ratio:.2f} of (m) "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f}), "
                f"{results.ratio(service, path, bare):.2f} of (a); "
                f"floor {floor} {'PASS' if ratio >= floor else 'FAIL'}"
            )
    return f"floors on {path}, the service against the minimal stack (m):\n  " + "\n  ".join(parts)


def budget(args: argparse.Namespace) -> int:
    runs = args.rounds * len(args.paths) * 8
    return 300 + runs * (args.seconds + 10)


def on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise BenchError("time budget exceeded: stopping")


def run(args: argparse.Namespace) -> int:
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not on PATH")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(budget(args))  # every run stops by itself, whatever hangs.
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        project = baked.project_or_bake(args.project, work)
        package = baked.package_of(project)
        db = work / "items.sqlite3"
        key, entries, raw = prepare(project, db)
        redis_uri = stack.enter_context(redis_server(work))
        env = base_env(project, package, work, db)
        servers = []
        for name, cwd, app, server_env in server_specs(args, project, env, redis_uri, entries, raw):
            servers.append(start(name, cwd, app, server_env, args))
            stack.callback(servers[-1].stop)
        for server in servers:
            wait_serving(server)
            check(server, key)
        results = measure(servers, key, args)
        names = [server.name for server in servers]
        print(describe(args))
        print(table(results, names, args.paths, args.markdown))
        print(verdict(results, args))
        if any(results.errors.values()):
            print("(!) some responses were not 2xx: those figures are not comparable", file=sys.stderr)
            return 1
    return 0


def describe(args: argparse.Namespace) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = found.group(1) if found else model
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("gunicorn", "flask", "flask-limiter")
    )
    return (
        f"{os.cpu_count()} CPUs ({model}); Python {platform.python_version()}, {versions}\n"
        f"gunicorn --worker-class gevent --worker-connections {args.worker_connections}, plain HTTP, "
        f"--workers {args.memory_workers} with memory://, {args.redis_workers} with Redis; "
        f"wrk -t1 -c{args.connections}, {args.seconds}s per measurement, {args.rounds} rounds"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections")
    parser.add_argument("--memory-workers", type=int, default=1, help="gunicorn workers with memory://")
    parser.add_argument("--redis-workers", type=int, default=2, help="gunicorn workers with Redis")
    parser.add_argument(
        "--paths", type=lambda text: text.split(","), default=list(PATHS), help="comma-separated"
    )
    parser.add_argument(
        "--worker-connections", type=int, default=1000, help="gevent connections per worker, every server"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    baked.add_project_option(parser)
    parser.add_argument(
        "--configs",
        type=lambda text: text.split(","),
        help="only these (and bare of the same storage), e.g. minimal-memory,service-memory",
    )
    try:
        return run(parser.parse_args(argv))
    except (BenchError, baked.BakeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
