"""The database's rows of the settings table, for SQLite: a file every worker shares, never an
in-memory database that each worker would have alone.

``settings.py`` builds this table with the service's; ``database.py`` uses it. A project
generated for PostgreSQL has its own version of this module with the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .variables import Invalid, read, whole


def database_file(text: str) -> str:
    """A file path: every worker, and ``alembic`` from a shell, must open the same database."""
    if not text or text == ":memory:":
        raise Invalid("must be the path of a file, which every worker shares")
    return text


@dataclass(frozen=True)
class DatabaseSettings:
    """The database's rows of the settings table."""

    items_db: str = field(metadata=read("ITEMS_DB", database_file, "items.sqlite3"))
    # The longest a request waits, from when it asks, for SQLite's lock (another worker's
    # write, a backup, a migration, VACUUM): then 503. Other routes never wait for it.
    busy_timeout: int = field(metadata=read("ITEMS_DB_BUSY_TIMEOUT", whole(1, 60), "10"))
