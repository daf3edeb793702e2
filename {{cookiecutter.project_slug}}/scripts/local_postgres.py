"""A PostgreSQL server of this host, without containers: throwaway ones for the tests and the
operations scripts (a directory of their own, a free port of 127.0.0.1, removed after), and
the development database that ``make db`` keeps (``python scripts/local_postgres.py up``).

Every database it makes has two roles, as production should: the tables' owner, which runs
the migrations, and the service's role, which may only read and write rows. PostgreSQL refuses
to run as root: as root, the server runs as the ``postgres`` user (through ``runuser``), and its
directory belongs to that user.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# The migration role owns the tables; the service's role owns nothing and bypasses nothing.
OWNER_ROLE = "items_owner"
SERVICE_ROLE = "items_service"
DATABASE = "items"
SERVER_USER = "postgres"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
PROJECT = Path(__file__).resolve().parents[1]
# make db's secrets, shared with compose.yaml (the same .env reaches either server).
PASSWORD_FILES = {
    "postgres": "postgres-password",
    OWNER_ROLE: "items-owner-password",
    SERVICE_ROLE: "items-password",
}
DEFAULT_PORT = 5432
# A test server: durability is not the point, and many pools connect at once.
THROWAWAY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
# What a database needs for the two roles, as its superuser, in the database: only the
# owner creates; the service's role uses the schema, and may read and write the rows of every
# table the owner creates, now or in a later migration, and nothing else (no TRUNCATE, which
# row-level security does not filter). PostgreSQL 14 and older let every role create in public.
PRIVILEGES = (
    ("ALTER SCHEMA public OWNER TO {}", (OWNER_ROLE,)),
    ("REVOKE CREATE ON SCHEMA public FROM PUBLIC", ()),
    ("GRANT USAGE ON SCHEMA public TO {}", (SERVICE_ROLE,)),
    (
        "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public"
        " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}",
        (OWNER_ROLE, SERVICE_ROLE),
    ),
)


class Unavailable(RuntimeError):
    """PostgreSQL's server programs cannot run here; the message says why."""


def free_port() -> int:
    """A free port of 127.0.0.1 below the kernel's range for outgoing connections. Inside it,
    while the server is stopped, the connection attempts of its clients' pools may take its
    port (one to that very port can even connect to itself), and it could not listen again."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_outgoing = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    while True:
        port = 10_000 + secrets.randbelow(first_outgoing - 10_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


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


def runs_as_root() -> bool:
    return os.geteuid() == 0


class PostgresCluster:
    """One server. ``superuser_url`` sets up, ``owner_url`` migrates, ``url`` is the service's.

    Without arguments: a throwaway server in a new temporary directory, on a free port, with
    fresh passwords. ``directory``, ``port`` and ``passwords`` name a server that lasts."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        port: int | None = None,
        passwords: dict[str, str] | None = None,
    ) -> None:
        self.bindir = server_directory()
        self.as_user: list[str] = []
        if runs_as_root():
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"running as root, and no {SERVER_USER!r} user to run it as") from None
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]
        self.throwaway = directory is None
        # Outside any per-user temporary directory, which the server's user could not enter.
        self.directory = Path(tempfile.mkdtemp(prefix="postgres-")) if directory is None else directory
        self.data = self.directory / "data"
        self.port = free_port() if port is None else port
        self.passwords = passwords or {role: secrets.token_urlsafe(18) for role in PASSWORD_FILES}

    @property
    def password(self) -> str:
        """The superuser's."""
        return self.passwords["postgres"]

    @property
    def service_password(self) -> str:
        return self.passwords[SERVICE_ROLE]

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        command = [*self.as_user, str(self.bindir / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")
        return result.returncode

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def running(self) -> bool:
        """``pg_ctl status``: 0 when a server runs on this directory, 3 when none does."""
        return self.initialized() and self._run("pg_ctl", "status", "-D", str(self.data), check=False) == 0

    def initialize(self) -> PostgresCluster:
        password_file = self.directory / "pwfile"
        password_file.write_text(self.password + "\n")
        if self.as_user:
            for path in (self.directory, password_file):
                shutil.chown(path, SERVER_USER)
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "scram-sha-256",
                      f"--pwfile={password_file}", *(["--no-sync"] if self.throwaway else []))  # fmt: skip
        finally:
            password_file.unlink()
        return self

    def start(self) -> None:
        # TCP on 127.0.0.1 only; no Unix socket, whose path a deep project directory could
        # make too long for the kernel.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k ''"
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.directory / "server.log"),
                  "-o", f"{options} {THROWAWAY}" if self.throwaway else options)  # fmt: skip

    def listening_port(self) -> int:
        """The port of the running server, from its lock file (line 4, as PostgreSQL documents)."""
        return int((self.data / "postmaster.pid").read_text().splitlines()[3])

    def stop(self) -> None:
        """A fast shutdown, as an operator's restart does: sessions end, clients see errors."""
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", "fast")

    def processes(self) -> list[int]:
        """The postmaster (line 1 of its lock file) and its children, the backends among them."""
        postmaster = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def freeze(self) -> None:
        """Stop every process of the server (SIGSTOP) without closing a socket, as a hung host
        or storage does: the kernel still acknowledges every packet, and nothing answers. Each
        backend is a session of its own, so each is stopped by its pid; the postmaster first,
        so that it forks no more."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self.processes()):
            os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _url(self, role: str, database: str) -> str:
        return f"postgresql://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/{database}"

    def superuser_url(self, database: str = "postgres") -> str:
        return self._url("postgres", database)

    def owner_url(self, database: str) -> str:
        """The tables' owner's: what ``alembic upgrade head`` connects as."""
        return self._url(OWNER_ROLE, database)

    def url(self, database: str) -> str:
        """The service's role's."""
        return self._url(SERVICE_ROLE, database)

    def urls(self, database: str) -> dict[str, str]:
        """The environment of a service (and of its migrations) on ``database``."""
        return {"DATABASE_URL": self.url(database), "DATABASE_MIGRATION_URL": self.owner_url(database)}

    def create_roles(self) -> None:
        """The owner, and the service's role: no superuser, no BYPASSRLS, no CREATEROLE, and a
        member of no other role, so row-level security binds it. Existing ones get the
        passwords of ``passwords`` again."""
        import psycopg

        for role in (OWNER_ROLE, SERVICE_ROLE):
            with psycopg.connect(self.superuser_url(), autocommit=True) as admin:
                exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            self.admin(verb + " ROLE {} LOGIN PASSWORD {}", role, self.passwords[role])

    def create_database(self, name: str, template: str = "template1") -> str:
        """A database owned by the owner role, which the service's role may connect to and
        use as ``PRIVILEGES`` says; returns the service's URL of it."""
        self.admin("CREATE DATABASE {} OWNER {} TEMPLATE {}", name, OWNER_ROLE, template)
        self.grant(name)
        return self.url(name)

    def grant(self, name: str) -> None:
        """The two roles' privileges on database ``name``; running it again changes nothing."""
        self.admin("REVOKE ALL ON DATABASE {} FROM PUBLIC", name)
        self.admin("GRANT CONNECT ON DATABASE {} TO {}", name, SERVICE_ROLE)
        for statement, roles in PRIVILEGES:
            self.admin(statement, *roles, database=name)

    def drop_database(self, name: str) -> None:
        self.admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def admin(self, statement: str, *names: str, database: str = "postgres") -> None:
        """One statement as the superuser, outside a transaction (CREATE DATABASE needs that).
        Each ``{}`` takes the next of ``names``, quoted as a name, or as a string after PASSWORD."""
        import psycopg
        from psycopg import sql

        pieces = statement.split("{}")
        parts = [
            sql.Literal(name) if pieces[index].rstrip().endswith("PASSWORD") else sql.Identifier(name)
            for index, name in enumerate(names)
        ]
        with psycopg.connect(self.superuser_url(database), autocommit=True) as connection:
            connection.execute(sql.SQL(statement).format(*parts))


def migrate(urls: dict[str, str], project: Path) -> None:
    """``alembic upgrade head`` with the environment ``urls`` (``PostgresCluster.urls``), from
    the project's root, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        env={**env, **urls},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed: {result.stderr[-2000:]}")


# --- make db -----------------------------------------------------------------------------------


def cluster_directory(project: Path) -> Path:
    """Where ``make db`` keeps its server: ``.dev/postgres``. As root, the server's user could
    not enter ``.dev/`` (yours alone), so a directory of that user's in /var/tmp, named after
    this project's path."""
    if not runs_as_root():
        return project / ".dev" / "postgres"
    digest = hashlib.sha256(str(project).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"{project.name}-postgres-{digest}"  # noqa: S108


def _own_directory(path: Path) -> None:
    """Make ``path`` for the server's user, or check that an existing one is such: in a
    directory every user may write to, another user could have made it first."""
    owner = pwd.getpwnam(SERVER_USER).pw_uid if runs_as_root() else os.geteuid()
    try:
        path.mkdir(mode=0o700)
        os.chown(path, owner, -1)
    except FileExistsError:
        found = path.lstat()
        if path.is_symlink() or not path.is_dir() or found.st_uid != owner or found.st_mode & 0o077:
            raise SystemExit(f"error: {path} exists and is not this project's server directory") from None


def _passwords(dev: Path) -> dict[str, str]:
    """The passwords of ``.dev/``: the ones written when the project was generated (which
    compose.yaml's server uses too), or new ones for a clone that has none."""
    passwords = {}
    for role, name in PASSWORD_FILES.items():
        path = dev / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
        passwords[role] = path.read_text(encoding="utf-8").strip()
    return passwords


def write_env(env_file: Path, urls: dict[str, str]) -> None:
    """Point ``.env``'s database lines at ``urls``, in place, keeping every other line."""
    if not env_file.exists():
        env_file.touch(mode=0o600)
        env_file.write_text("APP_ENV=development\n", encoding="utf-8")
    lines = env_file.read_text(encoding="utf-8").splitlines()
    missing = dict(urls)
    for index, line in enumerate(lines):
        name = line.partition("=")[0]
        if name in missing:
            lines[index] = f"{name}={missing.pop(name)}"
    lines += [f"{name}={url}" for name, url in missing.items()]
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def up(project: Path, port: int) -> int:
    """``make db``: start (or reuse) the development server, with its database and both roles,
    and point ``.env`` at them."""
    dev = project / ".dev"
    dev.mkdir(mode=0o700, exist_ok=True)
    directory = cluster_directory(project)
    _own_directory(directory)
    cluster = PostgresCluster(directory, port=port, passwords=_passwords(dev))
    made = not cluster.initialized()
    if made:
        cluster.initialize()
    if cluster.running():
        state = "already running"
        cluster.port = cluster.listening_port()
    elif _taken(port):
        return _refuse(
            f"port {port} of 127.0.0.1 is taken (compose.yaml's server, or another): "
            "stop it, or choose another with `make db DB_PORT=5433`"
        )
    else:
        cluster.start()
        state = "made and started" if made else "started (its data kept)"
    cluster.create_roles()
    import psycopg

    with psycopg.connect(cluster.superuser_url(), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
    if exists:
        cluster.grant(DATABASE)
    else:
        cluster.create_database(DATABASE)
    write_env(project / ".env", cluster.urls(DATABASE))
    print(
        f"PostgreSQL {state}: 127.0.0.1:{cluster.port} "
        f"(data in {cluster.data}, log in {directory / 'server.log'}).\n"
        f"Database {DATABASE}: {OWNER_ROLE} owns the tables (DATABASE_MIGRATION_URL), {SERVICE_ROLE} "
        "serves (DATABASE_URL); passwords in .dev/, URLs in .env.\n"
        "Next: make migrate, then make run. Stop it: make db-stop (make db starts it again, data kept)."
    )
    return 0


def down(project: Path) -> int:
    """``make db-stop``: stop the development server; its data stays for the next ``make db``."""
    cluster = PostgresCluster(cluster_directory(project))
    if not cluster.running():
        print("PostgreSQL of make db is not running.")
        return 0
    cluster.stop()
    print(f"PostgreSQL stopped; its data stays in {cluster.data}.")
    return 0


def _taken(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _refuse(problem: str) -> int:
    print(f"error: {problem}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description="The development PostgreSQL of make db, without containers.")
    parser.add_argument("command", choices=("up", "down"), help="up: start it (make db); down: stop it")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="its port on 127.0.0.1, when it starts"
    )
    args = parser.parse_args()
    try:
        return up(PROJECT, args.port) if args.command == "up" else down(PROJECT)
    except Unavailable as reason:
        return _refuse(f"{reason}: `apt-get install postgresql` (or your system's package) brings them")


if __name__ == "__main__":
    sys.exit(main())
