"""One worker's pool of connections to PostgreSQL, which every worker and host shares, and the
transactions that row-level security limits to one tenant: every query names its tenant, and
the database hides every other tenant's rows from a query that forgets to.

Every resource's store (``stores/<resource>.py``) takes the same :class:`Database`. A store
raises :class:`StoreUnavailable` when the database cannot answer in time (503 with
``Retry-After``); any other error is a bug, and stays a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

# It logs every checkout at INFO: one line per request.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


class StoreUnavailable(Exception):
    """The database cannot answer now (down, unreachable, too slow): the client may retry."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the database is unavailable; retry after {retry_after} s")
        self.retry_after = retry_after


def _session(statement_timeout: int, connection: psycopg.Connection[Any]) -> None:
    """Set once per new connection: the server cancels a statement that runs longer than
    DATABASE_STATEMENT_TIMEOUT (503); times in UTC, as the SQLite store writes them."""
    connection.execute("SELECT set_config('statement_timeout', %s, false)", (f"{statement_timeout}s",))
    connection.execute("SELECT set_config('TimeZone', 'UTC', false)")
    connection.commit()


class Database:
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
            name="service",
        )
        self.pool.open(wait=False)

    @contextmanager
    def as_tenant(self, tenant: str) -> Iterator[psycopg.Cursor[Any]]:
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

    def close(self) -> None:
        self.pool.close()

    def pool_usage(self) -> tuple[int, int, int]:
        # "In use" counts a connection the pool is still opening: psycopg_pool's size does.
        stats = self.pool.get_stats()
        idle = stats.get("pool_available", 0)
        return stats.get("pool_size", 0) - idle, idle, stats.get("requests_waiting", 0)
