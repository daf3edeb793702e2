"""Where items live: one SQLite file on this host, migrated by the service itself at start, so
a new release never serves from an older schema.

The seam between the service and its database: the database's settings, the store that
``create_app`` opens, the check that the gunicorn master runs once at start, and what
``alembic`` runs (``migrations/env.py``). A project generated for PostgreSQL has its own
version of this module with the same names.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .settings import ConfigError, read

if TYPE_CHECKING:
    from .settings import Settings
    from .store import ItemStore


@dataclass(frozen=True)
class DatabaseSettings:
    """The database's rows of the settings table."""

    items_db: str = field(metadata=read("ITEMS_DB", str, "items.sqlite3"))


def open_store(settings: Settings) -> ItemStore:
    """The items store of one worker; applies pending migrations first."""
    from .store import SqliteItems

    return SqliteItems(settings.database.items_db)


def prepare_database(settings: Settings, workers: int, worker_connections: int) -> None:
    """In the gunicorn master, before any worker starts: migrate once, so that a file the
    service cannot write stops the start with one line instead of failing every worker."""
    # Before Alembic's first import, which logs lines of its own: failure is one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic.util import CommandError

    from .store import apply_migrations

    try:
        apply_migrations(settings.database.items_db)
    except (OSError, sqlite3.Error, CommandError) as error:
        raise ConfigError("ITEMS_DB", f"cannot be migrated ({type(error).__name__})") from None


def run_migrations(context: Any) -> None:
    """The body of ``migrations/env.py``: the file that ITEMS_DB names (or that
    ``apply_migrations`` passed), one process at a time, with SQLite's batch mode for the
    table changes that SQLite's ALTER TABLE cannot make. A file it cannot open is one
    ConfigError; an error in a migration itself stays the migration's own."""
    from contextlib import ExitStack

    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from .settings import load_database_settings
    from .store import exclusive

    path = context.config.attributes.get("path") or load_database_settings().items_db
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    with ExitStack() as opened:
        try:
            opened.enter_context(exclusive(path))
            connection = opened.enter_context(engine.connect())
        except (OSError, DBAPIError) as error:
            raise ConfigError("ITEMS_DB", f"cannot be migrated ({type(error).__name__})") from None
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
