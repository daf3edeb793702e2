"""Where items live: PostgreSQL, shared by every worker and host. A password never reaches a
log line, an error or ``make settings``; a schema older than the code, or a role that row-level
security would not bind, stops the start.

The seam between the service and its database (whose settings are ``database_settings.py``'s):
the stores that ``create_app`` opens, the check that the gunicorn master runs once at start, and what
``alembic`` runs (``migrations/env.py``). This module imports no database driver: psycopg
chooses how to wait for the network when it is first imported, and gunicorn's gevent workers,
forked from the master, must import it after gevent has patched the standard library.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .database_settings import MIGRATION_URL, DatabaseSettings
from .settings import ConfigError, Settings, load_database_settings

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Connection

    from .stores import Stores

LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
# Open connections per gevent worker, as gunicorn.conf.py sets worker_connections.
DEFAULT_CONCURRENCY = 1000
# Any fixed 64-bit number, the same for every host: `alembic upgrade head` runs one at a time.
MIGRATION_LOCK = 0x6974656D735F6462
BEHIND = "the database schema is older than this code: run `alembic upgrade head`"
NO_SCHEMA = "the database has no schema yet: run `alembic upgrade head`"
# How long a caller of Alembic's API that passes its own URL waits for the server.
API_CONNECT_TIMEOUT = 10
ROLES = "docs/operations.md, 'Roles'"
# Roles that the service's role is, or can become with SET ROLE, and that row-level security
# does not bind: a superuser, BYPASSRLS, or CREATEROLE (which can grant itself the tables'
# owner on PostgreSQL 15 and older).
ABOVE_THE_POLICY = (
    "SELECT coalesce(bool_or(rolsuper OR rolbypassrls OR rolcreaterole), false) FROM pg_roles"
    " WHERE pg_has_role(current_user, oid, 'MEMBER')"
)
# Tables the service's role owns, or can become the owner of: an owner can switch row-level
# security off (ALTER TABLE ... NO FORCE ROW LEVEL SECURITY), or drop the policy.
OWNED_TABLE = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'"
    " AND n.nspname NOT LIKE 'pg\\_%' AND pg_has_role(current_user, c.relowner, 'MEMBER')"
    " ORDER BY c.relrowsecurity DESC, c.relname LIMIT 1"
)
OWNED_DATABASE = (
    "SELECT pg_has_role(current_user, datdba, 'MEMBER') FROM pg_database WHERE datname = current_database()"
)
# Tables every request with a valid key needs (stores/key_records.py): a role without these
# privileges would pass every other check, then answer 503 to every key. The owner's default
# privileges grant them (docs/operations.md, "Roles"); a role set up by hand may lack them.
KEY_RECORD_TABLES = ("key_revocations", "key_uses")
SERVICE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
LACKING_PRIVILEGE = (
    "SELECT t FROM unnest(%s::text[]) AS t, unnest(%s::text[]) AS p"
    " WHERE NOT has_table_privilege(t, p) ORDER BY t LIMIT 1"
)
# Only the migration role writes the version table; the service's role reads it (the start
# check). The owner's default privileges give every role they name write access to every new
# table, this one included: taken back after each migration.
VERSION_TABLE_READ_ONLY = """
DO $$
DECLARE grantee text;
BEGIN
  FOR grantee IN
    SELECT DISTINCT a.grantee::regrole::text
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = to_regclass('alembic_version') AND a.grantee NOT IN (0, c.relowner)
      AND a.privilege_type <> 'SELECT'
  LOOP
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM %s', grantee);
  END LOOP;
END $$
"""


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
    database this code cannot serve (unreachable, a role that row-level security would not
    bind, a schema that is missing, unreadable, older or newer), with one line naming the problem."""
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
    if settings.app_env == "production" and database.migration_url is not None:
        print(
            f"warning: {MIGRATION_URL}: the service never uses it; keep the password of the tables' "
            "owner out of the service's environment",
            file=sys.stderr,
        )
    # In a child process, so that this one (the workers' parent) never imports psycopg.
    with multiprocessing.get_context("fork").Pool(1, initializer=default_signals) as child:
        problem = child.apply(schema_problem, (database,))
    if problem is not None:
        raise ConfigError("DATABASE_URL", problem)


def default_signals() -> None:
    """In the check's child: every signal back to its default action. On a reload the gunicorn
    master's handlers are in place, and a child that inherited them would queue, for a loop it
    never runs, the SIGTERM with which the pool ends it: the reload would wait forever."""
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)


def schema_problem(database: DatabaseSettings) -> str | None:
    """Why the service must not start on this database, in words that hold no value."""
    # The check's only output is its answer: the master prints it as one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import psycopg

    try:
        with psycopg.connect(database.url, connect_timeout=database.connect_timeout, autocommit=True) as db:
            problem = _role_problem(db)
            if problem is not None:
                return problem
            found = db.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            if found != (True,):
                return NO_SCHEMA
            if db.execute("SELECT has_table_privilege('alembic_version', 'SELECT')").fetchone() != (True,):
                return f"its role cannot read alembic_version: grant it SELECT ({ROLES})"
            current = {row[0] for row in db.execute("SELECT version_num FROM alembic_version")}
            problem = _revision_problem(current)
            if problem is not None:
                return problem
            lacking = db.execute(LACKING_PRIVILEGE, (list(KEY_RECORD_TABLES), list(SERVICE_PRIVILEGES)))
            table = lacking.fetchone()
    except psycopg.OperationalError:
        return _connection_problem(database.connect_timeout)
    except psycopg.Error as error:
        # Anything else the server refused: named by its SQLSTATE, never by its text.
        return f"the start check failed (SQLSTATE {error.sqlstate})"
    if table is not None:
        privileges = ", ".join(SERVICE_PRIVILEGES)
        return f"its role cannot read and write {table[0]}: grant it {privileges} ({ROLES})"
    return None


def _role_problem(db: psycopg.Connection[Any]) -> str | None:
    """Why row-level security would not bind the service's role (``db`` is connected as it)."""
    if db.execute(ABOVE_THE_POLICY).fetchone() != (False,):
        return (
            "its role is, or can become, a superuser or a role with BYPASSRLS or CREATEROLE, "
            f"which row-level security does not bind: give the service a role of its own ({ROLES})"
        )
    owned = db.execute(OWNED_TABLE).fetchone()
    if owned is not None:
        return (
            f"its role owns table {owned[0]}, or can become its owner, and so can turn row-level "
            f"security off: migrate as the owner ({MIGRATION_URL}), serve as another role ({ROLES})"
        )
    if db.execute(OWNED_DATABASE).fetchone() != (False,):
        return (
            "its role owns the database, or can become its owner, and so can drop its tables: "
            f"serve as a role that owns nothing ({ROLES})"
        )
    return None


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
        return NO_SCHEMA
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
    """The body of ``migrations/env.py``: the database of DATABASE_MIGRATION_URL (the tables'
    owner; DATABASE_URL when unset, or the ``url`` attribute, for callers of Alembic's API), in
    one transaction, one host at a time."""
    from sqlalchemy import text

    url = context.config.attributes.get("url")
    variable, url, timeout = _migration_target() if url is None else (MIGRATION_URL, url, API_CONNECT_TIMEOUT)
    with _owners_connection(variable, url, timeout) as connection:
        # Hosts that migrate at once queue here; each later one finds nothing left to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        # A table lock that the service holds makes the migration fail, rather than queue every
        # request behind it.
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            context.run_migrations()
        connection.execute(text(VERSION_TABLE_READ_ONLY))
        connection.commit()


@contextmanager
def _owners_connection(variable: str, url: str, timeout: int) -> Iterator[Connection]:
    """A connection as a role that may create tables, or a ConfigError naming ``variable``: a
    server it cannot reach, or a role that cannot create (the service's, most often, when
    DATABASE_MIGRATION_URL is unset), is one line, not a traceback from the first CREATE TABLE."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        "postgresql+psycopg://" + url.partition("://")[2],
        poolclass=NullPool,
        connect_args={"connect_timeout": timeout},
    )
    try:
        connection = engine.connect()
    except OperationalError:
        raise ConfigError(variable, _connection_problem(timeout)) from None
    with connection:
        if not connection.execute(text("SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar():
            raise ConfigError(
                variable, f"its role cannot create tables: migrate as the tables' owner ({MIGRATION_URL})"
            )
        yield connection


def _migration_target() -> tuple[str, str, int]:
    """The variable alembic connects by, its URL, and the connect timeout, from the environment."""
    database = load_database_settings()
    if database.migration_url is not None:
        return MIGRATION_URL, database.migration_url, database.connect_timeout
    print(
        f"note: {MIGRATION_URL} is not set: migrating as DATABASE_URL's role, which then owns the "
        "tables; the service refuses to start as their owner",
        file=sys.stderr,
    )
    return "DATABASE_URL", database.url, database.connect_timeout
