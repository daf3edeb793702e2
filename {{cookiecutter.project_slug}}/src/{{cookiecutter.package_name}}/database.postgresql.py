"""Where items live: PostgreSQL, shared by every worker and host. A password never reaches a
log line, an error or ``make settings``; a schema older than the code stops the start.

The seam between the service and its database: the database's settings, the stores that
``create_app`` opens, the check that the gunicorn master runs once at start, and what
``alembic`` runs (``migrations/env.py``). This module imports no database driver: psycopg
chooses how to wait for the network when it is first imported, and gunicorn's gevent workers,
forked from the master, must import it after gevent has patched the standard library.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .settings import UNPARSABLE_URI, ConfigError, Invalid, read, redacted_uri, whole

if TYPE_CHECKING:
    from .settings import Settings
    from .stores import Stores

SCHEMES = ("postgresql", "postgres")
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
SECRET_PARAMETERS = re.compile(r"((?:^|[?&])(?:ssl)?password=)[^&]*", re.IGNORECASE)
# Open connections per gevent worker, as gunicorn.conf.py sets worker_connections.
DEFAULT_CONCURRENCY = 1000
# Any fixed 64-bit number, the same for every host: `alembic upgrade head` runs one at a time.
MIGRATION_LOCK = 0x6974656D735F6462
BEHIND = "the database schema is older than this code: run `alembic upgrade head`"


def database_url(text: str) -> str:
    """A ``postgresql://`` URL that libpq reads as written. A password holding ``#``, ``/``, ``?``
    or ``@`` unencoded would be read as another part of the URL, and quoted in a later error."""
    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise Invalid("must start with postgresql://")
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number: often the rest of a password
        port_ok = False
    if not port_ok or parts.fragment or parts.netloc.count("@") > 1 or "@" in parts.path + parts.query:
        raise Invalid(UNPARSABLE_URI)
    if not parts.path.strip("/"):
        raise Invalid("names no database: add /<database> after the host")
    return text


def show_url(text: str) -> str:
    """The URL without its password, wherever it is (user information or query)."""
    location, question, query = redacted_uri(text).partition("?")
    return location + question + SECRET_PARAMETERS.sub(r"\1***", query)


@dataclass(frozen=True)
class DatabaseSettings:
    """The database's rows of the settings table."""

    url: str = field(
        metadata=read(
            "DATABASE_URL",
            database_url,
            missing="not set: postgresql://<role>:<password>@<host>/<database>?sslmode=verify-full",
            from_file=True,
            show=show_url,
        )
    )
    # The longest a request waits for a connection: to open one, or for one to come free.
    connect_timeout: int = field(metadata=read("DATABASE_CONNECT_TIMEOUT", whole(2, 60), "2"))
    # The longest one statement runs on the server before it is cancelled.
    statement_timeout: int = field(metadata=read("DATABASE_STATEMENT_TIMEOUT", whole(1, 300), "5"))
    # Connections this host may open in all: each worker gets its share.
    max_connections: int = field(metadata=read("DATABASE_MAX_CONNECTIONS", whole(1, 10_000), "10"))


def pool_size(max_connections: int, workers: int, worker_connections: int) -> int:
    """Each worker's share of the host's connections, never more than the requests that one
    gevent worker serves at once (``worker_connections``): past it, a connection is never used."""
    return max(1, min(worker_connections, max_connections // workers))


# The pool size the gunicorn master worked out at start; the workers forked from it inherit it.
_pool_max: int | None = None


def open_stores(settings: Settings) -> Stores:
    """The stores of one worker, on a pool that connects on demand, so a database that is down
    when a worker starts costs 503s until it is back, not the worker."""
    from .stores import Stores
    from .stores.connections import Database

    database = settings.database
    size = _pool_max or pool_size(database.max_connections, settings.workers, DEFAULT_CONCURRENCY)
    stores = Stores(
        Database(
            database.url,
            max_size=size,
            connect_timeout=database.connect_timeout,
            statement_timeout=database.statement_timeout,
        )
    )
    # Closed while the worker can still run its threads: left to the garbage collector, the
    # pool would stop them while the interpreter shuts down, and print an error doing it.
    atexit.register(stores.close)
    return stores


def prepare_database(settings: Settings, workers: int, worker_connections: int) -> None:
    """In the gunicorn master, before any worker starts: size the pools, and refuse a
    database this code cannot serve (unreachable, a role that bypasses row-level security,
    a schema that is missing, older or newer), with one line naming the problem."""
    global _pool_max
    database = settings.database
    if database.max_connections < workers:
        below = f"is below the {workers} workers: each needs at least one connection"
        raise ConfigError("DATABASE_MAX_CONNECTIONS", below)
    _pool_max = pool_size(database.max_connections, workers, worker_connections)
    parts = urlsplit(database.url)
    ssl_mode = dict(parse_qsl(parts.query)).get("sslmode")
    if settings.app_env == "production" and parts.hostname not in LOCAL_HOSTS and ssl_mode != "verify-full":
        print(
            "warning: DATABASE_URL: without sslmode=verify-full, the connection to a server on "
            "another host can be read or taken over on the way",
            file=sys.stderr,
        )
    # In a child process, so that this one (the workers' parent) never imports psycopg.
    with multiprocessing.get_context("fork").Pool(1) as child:
        problem = child.apply(schema_problem, (database,))
    if problem is not None:
        raise ConfigError("DATABASE_URL", problem)


def schema_problem(database: DatabaseSettings) -> str | None:
    """Why the service must not start on this database, in words that hold no value."""
    # The check's only output is its answer: the master prints it as one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import psycopg

    try:
        with psycopg.connect(database.url, connect_timeout=database.connect_timeout, autocommit=True) as db:
            bypass = "SELECT bool_or(rolsuper OR rolbypassrls) FROM pg_roles WHERE rolname = current_user"
            if db.execute(bypass).fetchone() != (False,):
                return (
                    "its role bypasses row-level security (a superuser, or BYPASSRLS): "
                    "give the service a role of its own"
                )
            found = db.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            versions = "SELECT version_num FROM alembic_version"
            current = {row[0] for row in db.execute(versions)} if found == (True,) else set()
    except psycopg.OperationalError:
        return _connection_problem(database.connect_timeout)
    return _revision_problem(current)


def _connection_problem(timeout: int) -> str:
    # libpq's messages quote the host, the role and the database, and a failed connection
    # carries no SQLSTATE to tell the causes apart: name them all, quote none.
    return (
        f"cannot connect: no answer within DATABASE_CONNECT_TIMEOUT ({timeout} s), "
        "or the server refused the role, its password or the database"
    )


def _revision_problem(current: set[str]) -> str | None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(_alembic_config())
    if not current:
        return "the database has no schema yet: run `alembic upgrade head`"
    if current == set(scripts.get_heads()):
        return None
    known = {script.revision for script in scripts.walk_revisions()}
    if not current <= known:
        return "the database schema is newer than this code: deploy the release that migrated it"
    return BEHIND


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", f"{__package__}:migrations")
    return config


def run_migrations(context: Any) -> None:
    """The body of ``migrations/env.py``: the database of DATABASE_URL (or of the ``url``
    attribute, for callers of Alembic's API), in one transaction, one host at a time."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from .settings import load_database_settings

    url = context.config.attributes.get("url") or load_database_settings().url
    engine = create_engine("postgresql+psycopg://" + url.partition("://")[2], poolclass=NullPool)
    with engine.connect() as connection:
        # Hosts that migrate at once queue here; each later one finds nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        # A table lock that the service holds makes the migration fail, rather than queue every
        # request behind it.
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
