"""A baked service served for real: gunicorn over TLS, as production would run it, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import python, run_in

CERT_DAYS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_certificate(project: Path, directory: Path) -> tuple[Path, Path]:
    """The project's own development certificate (self-signed, localhost), valid CERT_DAYS days."""
    cert, key = directory / "localhost.pem", directory / "localhost-key.pem"
    code = (
        "import runpy, sys; from pathlib import Path; "
        "write = runpy.run_path('scripts/dev_cert.py')['write_dev_certificate']; "
        "write(Path(sys.argv[1]), Path(sys.argv[2]), days=int(sys.argv[3]))"
    )
    run_in(project, *python("-c", code, str(cert), str(key), str(CERT_DAYS)), timeout=60)
    return cert, key


def mint_key(project: Path) -> tuple[str, str]:
    """A freshly minted key and its entry, from the bake's own ``keys new``."""
    package = next(p.parent.parent.name for p in (project / "src").glob("*/keys/__init__.py"))
    scopes = ("--scope", "items:read", "--scope", "items:write", "--scope", "metrics:read")
    result = subprocess.run(
        python("-m", f"{package}.keys", "new", "--id", "client", *scopes, "--json"),
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"keys new failed:\n{result.stderr[-4000:]}"
    minted = json.loads(result.stdout)
    return str(minted["key"]), str(minted["entry"])


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(project: Path, workdir: Path, entry: str, **overrides: str) -> Iterator[int]:
    """Run the bake's gunicorn with TLS as production would, on a free port; yield the port."""
    cert, key = write_certificate(project, workdir)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS", "GUNICORN_"))}
    environ.update(
        PYTHONPATH=str(project / "src"),
        APP_ENV="production",
        API_KEYS=entry,
        ITEMS_DB=str(workdir / "items.sqlite3"),
        BIND=f"127.0.0.1:{port}",
        TLS_CERT_FILE=str(cert),
        TLS_KEY_FILE=str(key),
    )
    environ.update(overrides)
    log_path = workdir / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn"], cwd=project, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not listen on {port}:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.1)
        yield port
    finally:
        stop(process)
