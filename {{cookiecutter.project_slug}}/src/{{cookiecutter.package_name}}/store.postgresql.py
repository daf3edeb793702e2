"""Items, filtered by tenant twice, so one tenant can never read another's data: every query
names the tenant, and PostgreSQL's row-level security hides every other tenant's rows from a
query that forgets to.

The interface is :class:`ItemStore`; :class:`PostgresItems` keeps it in PostgreSQL, which
every worker and host shares, through a pool of psycopg connections. Replace it with your own
database by implementing the same methods, raising :class:`StoreUnavailable` when the
database cannot answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psycopg
from psycopg_pool import ConnectionPool

# It logs every checkout at INFO: one line per request.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


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


def _session(statement_timeout: int, connection: psycopg.Connection[Any]) -> None:
    """Set once per new connection: the server cancels a statement that runs longer than
    DATABASE_STATEMENT_TIMEOUT (503); times in UTC, as the SQLite store writes them."""
    connection.execute("SELECT set_config('statement_timeout', %s, false)", (f"{statement_timeout}s",))
    connection.execute("SELECT set_config('TimeZone', 'UTC', false)")
    connection.commit()


class PostgresItems:
    """A pool per worker, whose connections open on demand: a database that is down when the
    worker starts costs 503s until it is back, not the worker."""

    def __init__(self, url: str, *, max_size: int, connect_timeout: int, statement_timeout: int) -> None:
        self.timeout = connect_timeout
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,
            kwargs={
                "connect_timeout": connect_timeout,
                # A server that vanished mid-query (no reset, no answer) fails the request after
                # this, instead of holding it until TCP gives up minutes later.
                "tcp_user_timeout": (connect_timeout + statement_timeout) * 1000,
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
            },
            configure=lambda connection: _session(statement_timeout, connection),
            name="items",
        )
        self.pool.open(wait=False)

    @contextmanager
    def _as_tenant(self, tenant: str) -> Iterator[psycopg.Cursor[Any]]:
        """A transaction whose rows row-level security limits to ``tenant``: the setting ends
        with the transaction, so a connection back in the pool sees no tenant's rows. Waits
        for a connection DATABASE_CONNECT_TIMEOUT seconds at most, then 503."""
        try:
            connection = self._connection_as(tenant, time.monotonic() + self.timeout)
        except psycopg.OperationalError as error:
            # Down, unreachable, or no connection free in time.
            raise StoreUnavailable(self.timeout) from error
        try:
            with connection.cursor() as cursor:
                yield cursor
            connection.commit()
        except psycopg.OperationalError as error:
            # Lost mid-transaction, or too slow (statement timeout).
            raise StoreUnavailable(self.timeout) from error
        finally:
            # The pool rolls back whatever was left open, and drops a broken connection.
            self.pool.putconn(connection)

    def _connection_as(self, tenant: str, deadline: float) -> psycopg.Connection[Any]:
        """A live connection, its transaction set to ``tenant``. A connection that the server
        closed while it sat in the pool (a restart) fails this first statement at once, with
        nothing of the request done: it is dropped, and the next one tried."""
        while True:
            connection = self.pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            try:
                connection.execute("SELECT set_config('app.tenant', %s, true)", (tenant,))
            except psycopg.OperationalError:
                self.pool.putconn(connection)
                if not connection.broken:
                    raise
            else:
                return connection

    def list(self, tenant: str, limit: int = 100) -> list[Item]:
        with self._as_tenant(tenant) as cursor:
            rows = cursor.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = %s ORDER BY created_at, id LIMIT %s",
                (tenant, limit),
            ).fetchall()
        return [_item(*row) for row in rows]

    def add(self, tenant: str, name: str) -> Item:
        # Random ids: sequential ones would tell a tenant how many items others have.
        created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        item_id = uuid.uuid4().hex
        with self._as_tenant(tenant) as cursor:
            cursor.execute(
                "INSERT INTO items (id, tenant, name, created_at) VALUES (%s, %s, %s, %s)",
                (item_id, tenant, name, created),
            )
        return _item(item_id, name, created)

    def get(self, tenant: str, item_id: str) -> Item | None:
        with self._as_tenant(tenant) as cursor:
            row = cursor.execute(
                "SELECT id, name, created_at FROM items WHERE tenant = %s AND id = %s", (tenant, item_id)
            ).fetchone()
        return _item(*row) if row else None

    def close(self) -> None:
        self.pool.close()

    def pool_usage(self) -> tuple[int, int, int]:
        # "In use" counts a connection the pool is still opening: psycopg_pool's size does.
        stats = self.pool.get_stats()
        idle = stats.get("pool_available", 0)
        return stats.get("pool_size", 0) - idle, idle, stats.get("requests_waiting", 0)


def _item(item_id: str, name: str, created_at: dt.datetime) -> Item:
    return Item(item_id, name, created_at.isoformat(timespec="seconds"))
