"""A throwaway PostgreSQL server for the tests and the operations scripts: ``initdb`` and
``postgres`` in a directory of its own, on a free port of 127.0.0.1, stopped and removed after.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (through
``runuser``), and its directory belongs to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SERVICE_ROLE = "items_service"
SERVER_USER = "postgres"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


class Unavailable(RuntimeError):
    """PostgreSQL's server programs cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_directory() -> Path:
    """Where initdb, pg_ctl and postgres are: on PATH, where pg_config says, or Debian's place."""
    candidates = [shutil.which("pg_ctl")]
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)  # noqa: S603
        candidates.append(found.stdout.strip() + "/pg_ctl")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    for candidate in filter(None, candidates):
        directory = Path(candidate).resolve().parent
        if all((directory / program).is_file() for program in SERVER_PROGRAMS):
            return directory
    raise Unavailable("PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed")


class PostgresCluster:
    """One server; ``superuser_url`` for setting up, ``url`` for the service's own role."""

    def __init__(self) -> None:
        self.bindir = server_directory()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"running as root, and no {SERVER_USER!r} user to run it as") from None
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        # Outside any per-user temporary directory, which the server's user could not enter.
        self.directory = Path(tempfile.mkdtemp(prefix="postgres-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.service_password = secrets.token_urlsafe(18)

    def _run(self, program: str, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")

    def initialize(self) -> PostgresCluster:
        password_file = self.directory / "pwfile"
        password_file.write_text(self.password + "\n")
        if self.as_user:
            for path in (self.directory, password_file):
                shutil.chown(path, SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
                  f"--pwfile={password_file}", "--no-sync")  # fmt: skip
        password_file.unlink()
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            # A test server: durability is not the point, and many pools connect at once.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.directory / "server.log"),
                  "-o", options)  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown, as an operator's restart does: sessions end, clients see errors."""
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", "fast")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def superuser_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql://{SERVICE_ROLE}:{self.service_password}@127.0.0.1:{self.port}/{database}"

    def create_service_role(self) -> None:
        """The service's role: no superuser, no BYPASSRLS, so row-level security binds it."""
        self.admin("CREATE ROLE {} LOGIN PASSWORD {}", SERVICE_ROLE, self.service_password)

    def create_database(self, name: str, template: str = "template1") -> str:
        """An empty database owned by the service's role; returns its URL for that role."""
        self.admin("CREATE DATABASE {} OWNER {} TEMPLATE {}", name, SERVICE_ROLE, template)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def admin(self, statement: str, *names: str) -> None:
        """One statement as the superuser, outside a transaction (CREATE DATABASE needs that).
        Each ``{}`` takes the next of ``names``, quoted as a name, or as a string after PASSWORD."""
        import psycopg
        from psycopg import sql

        pieces = statement.split("{}")
        parts = [
            sql.Literal(name) if pieces[index].rstrip().endswith("PASSWORD") else sql.Identifier(name)
            for index, name in enumerate(names)
        ]
        with psycopg.connect(self.superuser_url(), autocommit=True) as connection:
            connection.execute(sql.SQL(statement).format(*parts))


def migrate(url: str, project: Path) -> None:
    """``alembic upgrade head`` on ``url``, from the project's root, as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_URL_FILE", None)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed: {result.stderr[-2000:]}")
