"""Helpers for the tests: key sets, and real gunicorn and redis-server processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from {{ cookiecutter.package_name }}.keys import MintedKey

PROJECT = Path(__file__).resolve().parents[1]


def script(name: str) -> ModuleType:
    """One of the operations scripts, imported: tests use the tools operators run."""
    spec = importlib.util.spec_from_file_location(name, PROJECT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class KeySet:
    """One key per role the tests need; ``entries`` configures all but ``unconfigured``."""

    reader: MintedKey
    writer: MintedKey
    other_tenant: MintedKey
    no_scopes: MintedKey
    expired: MintedKey
    unconfigured: MintedKey

    @property
    def entries(self) -> str:
        configured = (self.reader, self.writer, self.other_tenant, self.no_scopes, self.expired)
        return ",".join(key.entry for key in configured)


def bearer(key: MintedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def eventually(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for what another thread or process does (a log line, a worker's poll), up to
    ``timeout`` seconds, which only a failure ever waits out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A gunicorn started from the project directory, as ``gunicorn`` alone would be."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    scheme: str = "https"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.logs()


# Two loopback addresses of their own: the service counts connections per client address, so an
# attacker and the client it must not delay are told apart only by where they connect from.
ATTACKER = "127.0.0.2"
CLIENT = "127.0.0.3"


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the local address ``source``."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def raw_exchange(port: int, context: ssl.SSLContext, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send bytes no HTTP client library would send, over TLS, and read until the server
    closes; the timeout turns a server that never answers into a failure, not a hang."""
    raw = connect_from(source, port)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(data)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def keys_command(
    *args: str, env: Mapping[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m <package>.keys ...`` from the project root, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}.keys", *args],
        cwd=PROJECT,
        env=server_env(env or {}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refused_start(settings: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m gunicorn`` from the project root with ``settings``, for a start that must stop
    by itself; its output (the timeout turns a start that serves instead into a failure)."""
    return subprocess.run(
        [sys.executable, "-m", "gunicorn"],
        cwd=PROJECT,
        env=server_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def server_env(overrides: Mapping[str, str]) -> dict[str, str]:
    # The caller's own metrics directory would be shared, and emptied, by every server a test starts.
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS", "GUNICORN_", "PROMETHEUS_"))
    }
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT / "src"), environ.get("PYTHONPATH")]))
    environ.update(overrides)
    return environ


def run_gunicorn(
    overrides: Mapping[str, str], log_path: Path, *args: str, command: tuple[str, ...] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m gunicorn`` with ``args``, or ``command`` (gunicorn's own script, say)."""
    # gunicorn gets its own copy of the file descriptor; ours closes at once.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*(command or (sys.executable, "-m", "gunicorn")), *args],
            cwd=PROJECT,
            env=server_env(overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def children(pid: int) -> set[int]:
    """The processes ``pid`` started that still run: a gunicorn master's workers (Linux)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:  # the process is gone
        return set()
    return {int(child) for child in listed.split()}


def wait_until_serving(server: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited {server.process.returncode}:\n{server.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"gunicorn did not start:\n{server.logs()}")


class RedisServer:
    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary, self.port, self.directory = binary, port, directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(command + b"\r\n")
            return sock.recv(65536)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command(b"PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
