"""The service as production starts it (`gunicorn` in this directory), on 127.0.0.1, for the
operations scripts: load and faults, key guessing, the Redis smoke test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dev_cert import write_dev_certificate
from local_database import LocalDatabase

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"error: the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"error: nothing listens on port {port}")


class LocalService:
    """gunicorn with APP_ENV=production and the given keys; over TLS with a fresh self-signed
    certificate, or over plain HTTP as behind a TLS-terminating proxy (``tls=False``)."""

    def __init__(self, workdir: Path, api_keys: str, *, tls: bool = True, **env: str) -> None:
        self.workdir, self.port, self.tls = workdir, free_port(), tls
        self.database = LocalDatabase(workdir)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(PROJECT / "src"),
            "APP_ENV": "production",
            "API_KEYS": api_keys,
            "BIND": f"127.0.0.1:{self.port}",
            **self.database.env,
            **env,
        }
        if tls:
            write_dev_certificate(self.cafile, workdir / "key.pem")
            self.env.update(TLS_CERT_FILE=str(self.cafile), TLS_KEY_FILE=str(workdir / "key.pem"))
        else:
            self.env["FORWARDED_ALLOW_IPS"] = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def cafile(self) -> Path:
        """The self-signed certificate, which clients trust as their only CA."""
        return self.workdir / "cert.pem"

    def start(self) -> LocalService:
        self.database.start()
        with (self.workdir / "gunicorn.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn"], cwd=PROJECT, env=self.env, stdout=log, stderr=log
            )
        wait_for_port(self.port, self.process)
        time.sleep(1)  # let every worker boot
        return self

    def workers(self) -> list[int]:
        assert self.process is not None
        pid = self.process.pid
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.database.close()
