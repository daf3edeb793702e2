"""Items, always filtered by tenant, so one tenant can never read another's data.

The interface is :class:`ItemStore`; :class:`SqliteItems` is the embedded implementation
that every gunicorn worker shares through one file. Replace it with your own database by
implementing the same three methods, raising :class:`StoreUnavailable` when the database
cannot answer.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

# Alembic's INFO lines (plugins, the DDL mode) on every worker's start tell an operator nothing;
# a failure still reaches the log, and at start stops gunicorn with one line.
logging.getLogger("alembic").setLevel(logging.WARNING)

# A writer that waits longer than this for another worker's write gets StoreUnavailable (503).
BUSY_SECONDS = 10
# SQLite's "busy" and "locked": another connection holds the write lock. Any other error is a
# bug (a missing table, a bad query) and stays a 500.
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    name: str
    created_at: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


class ItemStore(Protocol):
    def list(self, tenant: str, limit: int = 100) -> list[Item]: ...

    def add(self, tenant: str, name: str) -> Item: ...

    def get(self, tenant: str, item_id: str) -> Item | None: ...

    def close(self) -> None: ...

    def pool_usage(self) -> tuple[int, int, int] | None:
        """Connections in use and idle, and requests waiting for one; None without a pool."""
        ...


class StoreUnavailable(Exception):
    """The database cannot answer now (down, unreachable, too slow): the client may retry."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the items database is unavailable; retry after {retry_after} s")
        self.retry_after = retry_after


def apply_migrations(path: str) -> None:
    """Bring the file to the newest schema: Alembic's ``upgrade head``, as ``alembic`` runs it."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", f"{__package__}:migrations")
    config.attributes["path"] = path
    command.upgrade(config, "head")


@contextmanager
def exclusive(path: str) -> Iterator[None]:
    """A lock across the processes of this host, beside the database file: every worker of a
    starting service migrates, and so may ``alembic`` from a shell, at the same moment."""
    if path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class SqliteItems:
    """One connection per call: sqlite3 connections must not cross threads, and WAL mode
    lets several worker processes read while one writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        apply_migrations(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # The timeout makes concurrent writers from other workers wait instead of failing.
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
        try:
            with db:
                yield db
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode in BUSY_CODES:
                raise StoreUnavailable(retry_after=1) from error
            raise
        finally:
            db.close()

    def list(self, tenant: str, limit: int = 100) -> list[Item]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = ? ORDER BY created_at, id LIMIT ?",
                (tenant, limit),
            ).fetchall()
        return [Item(*row) for row in rows]

    def add(self, tenant: str, name: str) -> Item:
        # Random ids: sequential ones would tell a tenant how many items others have.
        item = Item(uuid.uuid4().hex, name, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        with self._connect() as db:
            db.execute(
                "INSERT INTO items (id, tenant, name, created_at) VALUES (?, ?, ?, ?)",
                (item.id, tenant, item.name, item.created_at),
            )
        return item

    def get(self, tenant: str, item_id: str) -> Item | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = ? AND id = ?",
                (tenant, item_id),
            ).fetchone()
        return Item(*row) if row else None

    def close(self) -> None:
        """Nothing to release: each call opened and closed its own connection."""

    def pool_usage(self) -> None:
        return None  # one connection per call: nothing pooled to report
