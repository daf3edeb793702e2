"""Load and faults against a real service: gunicorn workers on a real Redis, a mixed load, one
worker killed, Redis stopped and started again (and, with PostgreSQL, the database too), then
hundreds of stalled connections from one address. Prints what happened and checks the rules.

    python bench/load_and_fault.py [--project BAKED_PROJECT] [--duration 30] [--clients 8] [--workers 4]

Everything runs on 127.0.0.1 and stops by itself, with the bake's own code: its service runner
(scripts/local_service.py, as `make smoke` starts it), its attacks (tests/hostile_clients.py)
and its keys. Needs redis-server on PATH and the bake's dev extra (cryptography, redis). Exits 1
when a rule fails.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import importlib.util
import itertools
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path
import redis

if TYPE_CHECKING:
    LocalService = Any
    Report = Any

JSON = "application/json"
WINDOW_SECONDS = 5
HOT_LIMIT = 20  # per key and window; the "hot" key asks for far more than that
MIX = {"valid": 30, "items": 10, "hot": 25, "unknown": 10, "hostile": 10, "oversized": 5, "health": 10}
PACE = 0.3  # seconds between one client's requests in the database outage phase
HOSTILE = ("\u00ff\u00fe" * 40, "A" * 8000, "Bearer \u0001\u007f", "ключ".encode().decode("latin-1"))
# The last phase: connections that stall in the handshake, send nothing or trickle headers, all
# from one address: more than the per-address cap of every worker together (64 x 4) lets it hold.
STALLED = {"stalled": 300, "silent": 200, "trickle": 100}
ATTACKER = "127.0.0.2"  # the load's clients connect from 127.0.0.1, the phase's probe from:
PROBE = "127.0.0.3"
QUOTA_RESET = re.compile(r";t=(\d+)")

Rule = tuple[str, bool, str]


@dataclass
class Outcome:
    started: float
    kind: str
    status: int | None  # None: the request got no answer at all
    latency: float
    error: str = ""
    window: int = 0  # when the fixed window that counted the request ends (RateLimit's t)


@dataclass
class Timeline:
    kill: float
    redis_down: float
    redis_up: float
    stalled: float
    duration: float

    def phase(self, at: float) -> str:
        if at < self.redis_down:
            return "redis up"
        if at < self.redis_up:
            return "redis down"
        if at < self.stalled:
            return "redis back"
        return "stalled connections"


class RedisServer:
    """A throwaway redis-server without persistence, which the script stops and starts."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("error: redis-server is not installed")
        self.port = bake.local.free_port()
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.command = [binary, *options, "--dir", str(workdir)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        bake.local.wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def limiter_keys(self) -> int:
        return len(redis.Redis(port=self.port).keys("LIMITS*"))


class Load:
    """Client threads, each with its own keep-alive connection, sending a fixed mix."""

    def __init__(self, port: int, context: ssl.SSLContext, keys: dict[str, list[str]], clients: int) -> None:
        self.port, self.context, self.keys, self.clients = port, context, keys, clients
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stop_at = 0.0

    def request(self, kind: str, rng: random.Random) -> tuple[str, str, dict[str, str], bytes | None]:
        valid = f"Bearer {rng.choice(self.keys['valid'])}"
        if kind == "valid":
            return "GET", "/v1/whoami", {"Authorization": valid}, None
        if kind == "items":
            return "GET", "/v1/items", {"X-API-Key": rng.choice(self.keys["valid"])}, None
        if kind == "hot":
            return "GET", "/v1/whoami", {"Authorization": f"Bearer {self.keys['hot'][0]}"}, None
        if kind == "unknown":
            return "GET", "/v1/items", {"Authorization": f"Bearer {self.keys['unknown'][0]}"}, None
        if kind == "hostile":
            return "GET", "/v1/whoami", {"X-API-Key": rng.choice(HOSTILE)}, None
        if kind == "oversized":
            body = b'{"name": "' + b"x" * 100_000 + b'"}'
            return "POST", "/v1/items", {"Authorization": valid, "Content-Type": JSON}, body
        return "GET", "/healthz", {}, None

    def send(self, connection: http.client.HTTPSConnection, kind: str, rng: random.Random) -> tuple[int, int]:
        method, path, headers, body = self.request(kind, rng)
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            connection.close()
        reset = QUOTA_RESET.search(response.getheader("RateLimit", ""))
        return response.status, round(time.time()) + int(reset.group(1)) if reset else 0

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", self.port, context=self.context, timeout=10)

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]
        connection: http.client.HTTPSConnection | None = None
        while time.monotonic() < self.stop_at:
            kind = rng.choice(kinds)
            started = time.monotonic()
            status, error, window = None, "", 0
            # As HTTP client libraries do: a kept-alive connection that the server closed
            # meanwhile is reopened once; a fresh connection that fails is an error.
            for attempt in ("reused", "fresh"):
                if connection is None or connection.sock is None:
                    connection, attempt = self.connect(), "fresh"
                try:
                    status, window = self.send(connection, kind, rng)
                    break
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    connection = None
                    if attempt == "fresh":
                        error = type(exc).__name__
                        break
            elapsed = time.monotonic() - started
            with self.lock:
                self.outcomes.append(Outcome(started, kind, status, elapsed, error, window))

    def run(self, duration: float) -> list[threading.Thread]:
        self.stop_at = time.monotonic() + duration
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def windows(ends: list[int]) -> Counter[int]:
    """Successes per fixed window, by the end of the window as clients saw it (give or take 2 s)."""
    counted: Counter[int] = Counter()
    current = None
    for end in sorted(ends):
        if current is None or end - current > 2:
            current = end
        counted[current] += 1
    return counted


def check_rules(
    outcomes: list[Outcome], timeline: Timeline, clients: int, keys_after: int, stalled: Report
) -> list[Rule]:
    five_hundreds = [o for o in outcomes if o.status is not None and o.status >= 500]
    errors = [o for o in outcomes if o.status is None]
    near_kill = [o for o in errors if timeline.kill - 1 <= o.started <= timeline.kill + 2]
    hot_ok = windows(
        [
            o.window
            for o in outcomes
            if o.kind == "hot" and o.status == 200 and o.started < timeline.redis_down
        ]
    )
    worst = max(hot_ok.values(), default=0)
    held = [o for o in outcomes if timeline.phase(o.started) == "stalled connections"]
    unanswered = [o for o in held if o.status is None]
    down = [o for o in outcomes if timeline.phase(o.started) == "redis down"]
    answered = [o for o in down if o.status is not None and o.status < 500]
    return [
        ("no 5xx answers", not five_hundreds, f"{len(five_hundreds)} seen"),
        (
            "no failed connection beyond the killed worker's in-flight requests",
            len(errors) == len(near_kill) <= clients,
            f"{len(errors)} failed, {len(near_kill)} of them around the kill (at most {clients} in flight)",
        ),
        (
            "limit held while Redis was up (hot key, per window)",
            0 < worst <= HOT_LIMIT,
            f"at most {worst} successes in a {WINDOW_SECONDS} s window, limit {HOT_LIMIT}",
        ),
        (
            "Redis down: every request answered, limits counted per worker",
            bool(down) and len(answered) == len(down),
            f"{len(answered)} of {len(down)} answered",
        ),
        (
            "Redis back: limits stored in Redis again by the end",
            keys_after > 0,
            f"{keys_after} limiter keys in Redis after the restart",
        ),
        (
            f"stalled connections: every new client answered 200 within {bake.hostile.PROMPT_SECONDS:.0f} s",
            bool(held) and not unanswered and bool(stalled.answers) and not stalled.failures,
            f"{len(stalled.answers) - len(stalled.failures)} of {len(stalled.answers)} requests on fresh "
            f"connections, {len(held) - len(unanswered)} of {len(held)} load requests answered, "
            f"while one address kept up {stalled.held} hostile connections",
        ),
        (
            "stalled connections: one address cannot take the workers (per-address cap)",
            sum(stalled.refused.values()) > 0,
            f"{sum(stalled.refused.values())} of its connections closed at once, beyond "
            "CONNECTIONS_PER_ADDRESS in each worker",
        ),
    ]


def print_report(outcomes: list[Outcome], timeline: Timeline, rules: list[Rule], stalled: Report) -> None:
    phases = ("redis up", "redis down", "redis back", "stalled connections")
    table: dict[str, Counter[str]] = {phase: Counter() for phase in phases}
    for o in outcomes:
        table[timeline.phase(o.started)][str(o.status) if o.status else f"failed:{o.error}"] += 1
    columns = sorted({column for counts in table.values() for column in counts})
    print("| phase | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for phase in phases:
        print(f"| {phase} | " + " | ".join(str(table[phase][c]) for c in columns) + " |")
    latencies = [o.latency * 1000 for o in outcomes if o.status is not None]
    print(
        f"\n{len(outcomes)} requests in {timeline.duration:.0f} s "
        f"({len(outcomes) / timeline.duration:.0f}/s); "
        f"latency p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms\n"
    )
    print("\n".join(stalled.lines()) + "\n")
    for name, passed, detail in rules:
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {detail}")


def database_outage(
    service: LocalService, context: ssl.SSLContext, keys: list[str], seconds: float
) -> list[Rule]:
    """The database stopped under load and started again: item routes answer 503 with
    Retry-After within DATABASE_CONNECT_TIMEOUT while it is down, other routes answer as
    usual, and items come back by themselves. Paced under the keys' limit (20 per 5 s each)."""
    timeout = 2.0 + 1.0  # DATABASE_CONNECT_TIMEOUT's default, and a margin for the request itself
    answers: list[tuple[float, str, int | None, str, float]] = []
    began = time.monotonic()
    down, up, end = began + seconds * 0.2, began + seconds * 0.6, began + seconds

    def client(key: str) -> None:
        connection = http.client.HTTPSConnection("localhost", service.port, context=context, timeout=10)
        for path in itertools.cycle(("/v1/items", "/v1/whoami")):
            if time.monotonic() >= end:
                return
            started = time.monotonic()
            try:
                connection.request("GET", path, headers={"Authorization": f"Bearer {key}"})
                response = connection.getresponse()
                response.read()
                status, retry = response.status, response.getheader("Retry-After", "")
            except (OSError, http.client.HTTPException):
                connection.close()
                status, retry = None, ""
            answers.append((started, path, status, retry, time.monotonic() - started))
            time.sleep(max(0.0, PACE - (time.monotonic() - started)))

    threads = [threading.Thread(target=client, args=(key,), daemon=True) for key in keys]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, down - time.monotonic()))
    service.database.stop()
    stopped = time.monotonic()  # the server has shut down: every session is gone
    time.sleep(max(0.0, up - time.monotonic()))
    restarting = time.monotonic()
    service.database.start()
    for thread in threads:
        thread.join()
    # A request that began less than a connect timeout before the restart may rightly be served.
    during = [a for a in answers if stopped <= a[0] < restarting - 2.0 and a[1] == "/v1/items"]
    last = [a for a in answers if a[0] >= end - 1.5 and a[1] == "/v1/items"]
    others = [a for a in answers if a[1] != "/v1/items"]
    print(f"\ndatabase outage: {len(answers)} requests; items while down: {Counter(a[2] for a in during)}")
    return [
        (
            "database down: item routes answer 503 with Retry-After in time",
            bool(during) and all(a[2] == 503 and a[3] and a[4] < timeout for a in during),
            f"{len(during)} answers, slowest {max((a[4] for a in during), default=0):.2f} s "
            f"(limit {timeout:.0f} s)",
        ),
        (
            # As usual: 200, or the 429 of the keys' own limits (the load's earlier phases drew on
            # them too); never a 5xx, a hang or a refusal the outage caused.
            "database down: routes without it answer as usual",
            bool(others) and all(a[2] in (200, 429) for a in others),
            f"{len(others)} answers: {dict(Counter(a[2] for a in others))}",
        ),
        (
            "database back: items served again by themselves",
            bool(last) and all(a[2] == 200 for a in last),
            f"the last {len(last)} item requests: {Counter(a[2] for a in last)}",
        ),
    ]


@dataclass
class Bake:
    """The bake's own code that this script drives."""

    local: ModuleType  # scripts/local_service.py
    hostile: ModuleType  # tests/hostile_clients.py
    keys: ModuleType  # <package>.keys


def load_bake(project: Path) -> Bake:
    scripts = str(project / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)  # local_service imports its siblings
    spec = importlib.util.spec_from_file_location("hostile_clients", project / "tests" / "hostile_clients.py")
    assert spec is not None and spec.loader is not None
    hostile = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = hostile  # its dataclasses look their module up there
    spec.loader.exec_module(hostile)
    return Bake(importlib.import_module("local_service"), hostile, baked.module(project, "keys"))


bake: Bake


def main() -> int:
    global bake
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    baked.add_project_option(parser)
    parser.add_argument("--duration", type=float, default=40, help="seconds of load (at least 16)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client connections")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        bake = load_bake(baked.project_or_bake(args.project, Path(work)))
        return run(args, bake.keys.KEY_PREFIX, bake.keys.mint)


def run(args: argparse.Namespace, key_prefix: str, mint: Any) -> int:
    duration = max(args.duration, 16)
    scopes = ["items:read", "items:write"]
    valid = [mint(key_prefix, key_id=f"client-{i}", scopes=scopes) for i in range(3)]
    hot = mint(key_prefix, key_id="hot", scopes=scopes)
    unknown = mint(key_prefix, key_id="unknown", scopes=scopes)
    probe = mint(key_prefix, key_id="probe", scopes=scopes)  # its own budget, well under the limit
    keys = {"valid": [m.secret for m in valid], "hot": [hot.secret], "unknown": [unknown.secret]}
    with tempfile.TemporaryDirectory() as directory:
        store = RedisServer(Path(directory))
        service = bake.local.LocalService(
            Path(directory),
            ",".join(m.entry for m in [*valid, hot, probe]),
            WEB_CONCURRENCY=str(args.workers),
            RATELIMIT_STORAGE_URI=store.uri,
            RATELIMIT_DEFAULT=f"{HOT_LIMIT} per {WINDOW_SECONDS} seconds",
            RATELIMIT_AUTH_FAILURES="100000 per minute",
        )
        try:
            store.start()
            service.start()
            context = ssl.create_default_context(cafile=str(service.cafile))
            load = Load(service.port, context, keys, args.clients)
            began = time.monotonic()
            kill, down, up, stall = (began + fraction * duration for fraction in (0.2, 0.35, 0.5, 0.65))
            timeline = Timeline(kill, down, up, stall, duration)
            threads = load.run(duration)
            time.sleep(max(0.0, timeline.kill - time.monotonic()))
            os.kill(service.workers()[0], signal.SIGKILL)
            time.sleep(max(0.0, timeline.redis_down - time.monotonic()))
            store.stop()
            time.sleep(max(0.0, timeline.redis_up - time.monotonic()))
            store.start()
            time.sleep(max(0.0, timeline.stalled - time.monotonic()))
            target = bake.hostile.Target("localhost", service.port, context)
            remaining = began + duration - time.monotonic()
            stalled = bake.hostile.run(
                target, probe.secret, STALLED, remaining, interval=0.5, source=ATTACKER, client_source=PROBE
            )
            for thread in threads:
                thread.join()
            keys_after = store.limiter_keys()
            outage = (
                database_outage(service, context, keys["valid"], duration / 2)
                if service.database.stoppable
                else []
            )
        finally:
            service.stop()
            store.stop()
    rules = check_rules(load.outcomes, timeline, args.clients, keys_after, stalled) + outage
    print_report(load.outcomes, timeline, rules, stalled)
    return 0 if all(passed for _, passed, _ in rules) else 1


if __name__ == "__main__":
    sys.exit(main())
