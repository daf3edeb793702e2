"""Where items live: one SQLite file on this host, migrated at start (by the gunicorn master,
once, before any worker exists), so a new release never serves from an older schema.

The seam between the service and its database: the stores that ``create_app`` opens, the
check that the gunicorn master runs once at start, and what ``alembic`` runs
(``migrations/env.py``); the database's settings are ``database_settings.py``'s. A project
generated for PostgreSQL has its own version of this module with the same names.
"""

from __future__ import annotations

import atexit
import sqlite3
import sys
from typing import Any

from .settings import ConfigError, Settings, load_database_settings
from .stores import Stores
from .stores.connections import Database, apply_migrations, exclusive, prepare_file

# Permission bits that let any user of the host read or change the file.
OTHERS = 0o006


# The file the gunicorn master migrated before it forked: its workers inherit this, and do not
# migrate again.
_migrated: str | None = None


def migrates_itself(path: str) -> bool:
    """True unless the gunicorn master migrated ``path`` before this process was forked from it;
    without a master (tests, ``flask run``, another WSGI server), the app migrates the file."""
    return _migrated != path


def open_stores(settings: Settings) -> Stores:
    """The stores of one worker (their connections open on first use), on a file that the
    gunicorn master migrated, or that this process migrates first."""
    database = settings.database
    if migrates_itself(database.items_db):
        apply_migrations(database.items_db)
    stores = Stores(Database(database.items_db, busy_timeout=database.busy_timeout))
    # At the worker's exit: the last connection to close checkpoints the write-ahead log.
    atexit.register(stores.close)
    return stores


def prepare_database(settings: Settings, workers: int, worker_connections: int) -> None:
    """In the gunicorn master, before any worker starts: migrate once, so that a file the
    service cannot write stops the start with one line instead of failing every worker."""
    global _migrated
    # Alembic logs at WARNING only (stores/connections.py says so on import): failure is one line.
    from alembic.util import CommandError

    path = settings.database.items_db
    try:
        apply_migrations(path)
    except (OSError, sqlite3.Error, CommandError) as error:
        raise ConfigError("ITEMS_DB", f"cannot be migrated ({type(error).__name__})") from None
    _migrated = path


def run_migrations(context: Any) -> None:
    """The body of ``migrations/env.py``: the file that ITEMS_DB names (or that
    ``apply_migrations`` passed), created private, one process at a time, with SQLite's batch
    mode for the table changes that SQLite's ALTER TABLE cannot make. A file it cannot open or
    create is one ConfigError; an error in a migration itself stays the migration's own."""
    from contextlib import ExitStack

    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    path = context.config.attributes.get("path") or load_database_settings().items_db
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    with ExitStack() as opened:
        try:
            mode = prepare_file(path)
            opened.enter_context(exclusive(path))
            connection = opened.enter_context(engine.connect())
        except (OSError, sqlite3.Error, DBAPIError) as error:
            raise ConfigError("ITEMS_DB", f"cannot be migrated ({type(error).__name__})") from None
        if mode & OTHERS:
            # The operator's choice, left as it is; but every tenant's items are in it.
            print(
                f"warning: ITEMS_DB: other users of this host may read or change the file (mode {mode:04o}); "
                "chmod 600 it, and its -wal and -shm files",
                file=sys.stderr,
            )
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
