"""Key guessing does not grow memory: 100,000 requests, each with a different wrong key, from one
address, against a real gunicorn worker; prints the worker's resident memory as they go.

    python scripts/guess_memory.py [--requests 100000] [--limit-mib 8]

Nothing is kept per guessed key (rate limits count per address, the key ring is fixed), so after
a warm-up the worker's memory must stay flat. Runs on 127.0.0.1 and stops by itself; exits 1
when memory grew by more than --limit-mib after the warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))
sys.path.insert(0, str(PROJECT / "scripts"))

from dev_cert import write_dev_certificate  # noqa: E402

from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, mint  # noqa: E402

CLIENTS = 4
WARM_UP = 0.25  # the first quarter of the requests fills caches and pools


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    write_dev_certificate(workdir / "cert.pem", workdir / "key.pem")
    env = {
        **os.environ,
        "APP_ENV": "production",
        "API_KEYS": mint(KEY_PREFIX, key_id="only", scopes=["items:read"]).entry,
        "TLS_CERT_FILE": str(workdir / "cert.pem"),
        "TLS_KEY_FILE": str(workdir / "key.pem"),
        "ITEMS_DB": str(workdir / "items.sqlite3"),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(PROJECT / "src"),
    }
    log = (workdir / "gunicorn.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn"], cwd=PROJECT, env=env, stdout=log, stderr=log
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("error: gunicorn did not start")


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def guess(
    port: int, context: ssl.SSLContext, count: int, statuses: Counter[int], lock: threading.Lock
) -> None:
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    for _ in range(count):
        wrong = f"{KEY_PREFIX}_{secrets.token_urlsafe(37)[:49]}"
        connection.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {wrong}"})
        response = connection.getresponse()
        response.read()
        with lock:
            statuses[response.status] += 1
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--limit-mib", type=float, default=8.0)
    args = parser.parse_args()
    port = free_port()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as directory:
        master = start(Path(directory), port)
        try:
            context = ssl.create_default_context(cafile=str(Path(directory) / "cert.pem"))
            worker = worker_pid(master.pid)
            samples = [(0, resident_kib(worker))]
            rounds = 8
            per_round = args.requests // rounds // CLIENTS
            began = time.monotonic()
            for _ in range(rounds):
                threads = [
                    threading.Thread(target=guess, args=(port, context, per_round, statuses, lock))
                    for _ in range(CLIENTS)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                samples.append((sum(statuses.values()), resident_kib(worker)))
            elapsed = time.monotonic() - began
        finally:
            master.terminate()
            master.wait(timeout=30)
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
