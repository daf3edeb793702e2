"""Key guessing does not grow memory: 100,000 requests, each with a different wrong key, from one
address, against a real gunicorn worker of a bake; prints the worker's resident memory as they go.

    python bench/guess_memory.py [--requests 100000] [--limit-mib 8] [--project BAKED_PROJECT]

The bake serves as production starts it, through its own scripts/local_service.py (gunicorn in
the project's directory, TLS with a fresh self-signed certificate).

Nothing is kept per guessed key (rate limits count per address, the key ring is fixed), so after
a warm-up the worker's memory must stay flat. Runs on 127.0.0.1 and stops by itself; exits 1
when memory grew by more than --limit-mib after the warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import importlib
import secrets
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import baked  # the bench directory is not a package: run as a script, it is on sys.path

CLIENTS = 4
WARM_UP = 0.25  # the first quarter of the requests fills caches and pools


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def guess(
    port: int, context: ssl.SSLContext, prefix: str, count: int, statuses: Counter[int], lock: threading.Lock
) -> None:
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    for _ in range(count):
        wrong = f"{prefix}_{secrets.token_urlsafe(37)[:49]}"
        connection.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {wrong}"})
        response = connection.getresponse()
        response.read()
        with lock:
            statuses[response.status] += 1
    connection.close()


def local_service(project: Path) -> ModuleType:
    """The bake's own scripts/local_service.py (it imports dev_cert.py beside it)."""
    scripts = str(project / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module("local_service")


def probe(project: Path, requests: int, statuses: Counter[int]) -> tuple[list[tuple[int, int]], float]:
    """(requests sent, worker RSS in KiB) after each round, and the seconds the guessing took."""
    keys = baked.module(project, "keys")
    entry = keys.mint(keys.KEY_PREFIX, key_id="only", scopes=["items:read"]).entry
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        service = local_service(project).LocalService(
            Path(directory), entry, WEB_CONCURRENCY="1", LOG_LEVEL="WARNING"
        )
        service.start()
        try:
            context = ssl.create_default_context(cafile=str(service.cafile))
            (worker,) = service.workers()
            samples = [(0, resident_kib(worker))]
            rounds = 8
            work = (service.port, context, keys.KEY_PREFIX, requests // rounds // CLIENTS, statuses, lock)
            began = time.monotonic()
            for _ in range(rounds):
                threads = [threading.Thread(target=guess, args=work) for _ in range(CLIENTS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                samples.append((sum(statuses.values()), resident_kib(worker)))
            return samples, time.monotonic() - began
        finally:
            service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--limit-mib", type=float, default=8.0)
    baked.add_project_option(parser)
    args = parser.parse_args(argv)
    statuses: Counter[int] = Counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        samples, elapsed = probe(baked.project_or_bake(args.project, Path(work)), args.requests, statuses)
    print("| requests sent | worker RSS (MiB) |\n|---|---|")
    for sent, kib in samples:
        print(f"| {sent:,} | {kib / 1024:.1f} |")
    settled = next(kib for sent, kib in samples if sent >= WARM_UP * args.requests)
    growth = (samples[-1][1] - settled) / 1024
    print(f"\nanswers: {dict(sorted(statuses.items()))}; {sum(statuses.values()) / elapsed:.0f} requests/s")
    verdict = "PASS" if growth <= args.limit_mib else "FAIL"
    print(f"[{verdict}] growth after the warm-up: {growth:.2f} MiB (limit {args.limit_mib} MiB)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
