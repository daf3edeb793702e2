"""Items, filtered by tenant twice, so one tenant can never read another's data: every query
names the tenant, and row-level security hides every other tenant's rows from a query that
forgets to (``Database.as_tenant``).

:class:`ItemStore` keeps them in PostgreSQL, which every worker and host shares. It is the
store to copy (``make resource`` does): every query names the tenant, ids are random, and a
list is read one page at a time, after a position that the previous page ended on.
"""

from __future__ import annotations

import datetime as dt
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
        with self.database.as_tenant(tenant) as cursor:
            if after is None:
                rows = cursor.execute(
                    "SELECT id, name, created_at FROM items WHERE tenant = %s"
                    " ORDER BY created_at, id LIMIT %s",
                    (tenant, limit),
                ).fetchall()
            else:
                rows = cursor.execute(
                    "SELECT id, name, created_at FROM items"
                    " WHERE tenant = %s AND (created_at, id) > (%s, %s)"
                    " ORDER BY created_at, id LIMIT %s",
                    (tenant, dt.datetime.fromisoformat(after[0]), after[1], limit),
                ).fetchall()
        return [_item(*row) for row in rows]

    def add(self, tenant: str, name: str) -> Item:
        # Random ids: sequential ones would tell a tenant how many items others have.
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        item_id = uuid.uuid4().hex
        with self.database.as_tenant(tenant) as cursor:
            cursor.execute(
                "INSERT INTO items (id, tenant, name, created_at) VALUES (%s, %s, %s, %s)",
                (item_id, tenant, name, created),
            )
        return _item(item_id, name, created)

    def get(self, tenant: str, item_id: str) -> Item | None:
        with self.database.as_tenant(tenant) as cursor:
            row = cursor.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = %s AND id = %s",
                (tenant, item_id),
            ).fetchone()
        return _item(*row) if row else None


def _item(item_id: str, name: str, created_at: dt.datetime) -> Item:
    return Item(item_id, name, created_at.isoformat(timespec="seconds"))
