"""Items, always filtered by tenant, so one tenant can never read another's data.

The interface is :class:`ItemStore`; :class:`SqliteItems` is the embedded implementation
that every gunicorn worker shares through one file. Replace it with your own database by
implementing the same three methods.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_tenant ON items (tenant, created_at);
"""


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


class SqliteItems:
    """One connection per call: sqlite3 connections must not cross threads, and WAL mode
    lets several worker processes read while one writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # The timeout makes concurrent writers from other workers wait instead of failing.
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:
                yield db
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
