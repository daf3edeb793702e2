"""Items, always filtered by tenant, so one tenant can never read another's data.

:class:`ItemStore` keeps them in the SQLite file every worker of the host shares. It is the
store to copy (``make resource`` does): every query names the tenant, ids are random, and a
list is read one page at a time, after a position that the previous page ended on.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from dataclasses import asdict, dataclass

from .connections import Database

# The position a page ends on: an item's creation time and id, the order of every list.
Position = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    name: str
    created_at: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @property
    def position(self) -> Position:
        return self.created_at, self.id


class ItemStore:
    """The items of every tenant; each method takes the caller's tenant, and sees nothing else."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def list(self, tenant: str, limit: int, after: Position | None = None) -> list[Item]:
        """The tenant's items after ``after`` (where a previous page ended), oldest first: at
        most ``limit`` of them."""
        created_at, item_id = after if after is not None else ("", "")
        rows = self.database.read(
            lambda db: db.execute(
                "SELECT id, name, created_at FROM items"
                " WHERE tenant = ? AND (created_at, id) > (?, ?)"
                " ORDER BY created_at, id LIMIT ?",
                (tenant, created_at, item_id, limit),
            ).fetchall()
        )
        return [Item(*row) for row in rows]

    def add(self, tenant: str, name: str) -> Item:
        # Random ids: sequential ones would tell a tenant how many items others have.
        item = Item(uuid.uuid4().hex, name, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO items (id, tenant, name, created_at) VALUES (?, ?, ?, ?)",
                (item.id, tenant, item.name, item.created_at),
            )

        self.database.write(insert)
        return item

    def get(self, tenant: str, item_id: str) -> Item | None:
        row = self.database.read(
            lambda db: db.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = ? AND id = ?",
                (tenant, item_id),
            ).fetchone()
        )
        return Item(*row) if row else None
