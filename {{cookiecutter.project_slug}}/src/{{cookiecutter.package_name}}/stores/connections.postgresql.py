"""One worker's pool of connections to PostgreSQL, which every worker and host shares, and the
transactions that row-level security limits to one tenant: every query names its tenant, and
the database hides every other tenant's rows from a query that forgets to.

Every resource's store (``stores/<resource>.py``) takes the same :class:`Database`. A store
raises :class:`StoreUnavailable` when the database cannot answer in time (503 with
``Retry-After``); any other error is a bug, and stays a 500. No wait for the database is
unbounded, a server that stopped without closing its connections included: that last bound is
gevent's (``_answered_by``), since the service runs in gevent's worker and no socket option can
give it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from gevent import Timeout
from gevent.monkey import is_module_patched
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

# It logs every checkout at INFO: one line per request.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)
# How long past DATABASE_STATEMENT_TIMEOUT the client waits for the server to report that it
# cancelled a statement, before it gives up on a server that can no longer say so.
ANSWER_SLACK = 1


class StoreUnavailable(Exception):
    """The database cannot answer now (down, unreachable, too slow): the client may retry."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the database is unavailable; retry after {retry_after} s")
        self.retry_after = retry_after


class NoAnswer(Exception):
    """The server did not answer a statement in time: stopped, or too slow to say so itself."""


def _session(statement_timeout: int, connection: psycopg.Connection[Any]) -> None:
    """Set once per new connection: the server cancels a statement that runs longer than
    DATABASE_STATEMENT_TIMEOUT (503); times in UTC, as the SQLite store writes them."""
    connection.execute("SELECT set_config('statement_timeout', %s, false)", (f"{statement_timeout}s",))
    connection.execute("SELECT set_config('TimeZone', 'UTC', false)")
    connection.commit()


@contextmanager
def _answered_by(deadline: float, enforced: bool) -> Iterator[None]:
    """Raise :class:`NoAnswer` when the server has not answered by ``deadline``.

    No socket option bounds this wait. A server that stops without closing its sockets (a
    SIGSTOP, a frozen virtual machine, storage that hangs) leaves its host's kernel
    acknowledging every packet and every keepalive probe, so neither ``tcp_user_timeout`` nor
    keepalives fire, and the server cannot enforce its own statement timeout. Under gevent's
    worker the wait is a greenlet's, which ``gevent.Timeout`` interrupts; without gevent
    (``enforced`` false: the Flask test client, a script) nothing could interrupt it.
    """
    if not enforced:
        yield
        return
    timeout = Timeout(max(0.0, deadline - time.monotonic()))
    timeout.start()
    try:
        yield
    except Timeout as raised:
        if raised is not timeout:
            raise
        raise NoAnswer from None
    finally:
        timeout.cancel()


class Database:
    """A pool per worker, whose connections open on demand: a database that is down when the
    worker starts costs 503s until it is back, not the worker."""

    def __init__(self, url: str, *, max_size: int, connect_timeout: int, statement_timeout: int) -> None:
        self.timeout = connect_timeout
        self.answer_timeout = statement_timeout + ANSWER_SLACK
        # gevent's worker patches the standard library before this module is imported.
        self.interruptible = is_module_patched("select")
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,
            kwargs={
                "connect_timeout": connect_timeout,
                # A server whose host vanished (no reset, no acknowledgement) fails the request
                # after this, instead of holding it until TCP gives up minutes later.
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
        with the transaction, so a connection back in the pool sees no tenant's rows.

        Bounded twice, then 503: DATABASE_CONNECT_TIMEOUT to get a connection that answers (to
        open one, or wait for one to come free, and its first statement), then
        DATABASE_STATEMENT_TIMEOUT (and a second for the server to say so) for the rest."""
        try:
            connection = self._connection_as(tenant, time.monotonic() + self.timeout)
        except (psycopg.OperationalError, NoAnswer) as error:
            # Down, unreachable, stopped, or no connection free in time.
            raise StoreUnavailable(self.timeout) from error
        try:
            with _answered_by(time.monotonic() + self.answer_timeout, self.interruptible):
                with connection.cursor() as cursor:
                    yield cursor
                connection.commit()
        except (psycopg.OperationalError, NoAnswer) as error:
            # Lost mid-transaction, too slow (statement timeout), or no answer at all.
            raise StoreUnavailable(self.timeout) from error
        finally:
            self._give_back(connection)

    def _connection_as(self, tenant: str, deadline: float) -> psycopg.Connection[Any]:
        """A live connection, its transaction set to ``tenant``. A connection that the server
        closed while it sat in the pool (a restart) fails this first statement at once, with
        nothing of the request done: it is dropped, and the next one tried, until ``deadline``."""
        while True:
            connection = self.pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            try:
                with _answered_by(deadline, self.interruptible):
                    connection.execute("SELECT set_config('app.tenant', %s, true)", (tenant,))
            except (psycopg.OperationalError, NoAnswer):
                self._give_back(connection)
                if not connection.broken:
                    raise
            else:
                return connection

    def _give_back(self, connection: psycopg.Connection[Any]) -> None:
        """Return a connection to the pool, which rolls back what was left open and drops a
        broken one. One still waiting for its answer (given up on) is closed first: its next
        user would wait for that answer too."""
        if connection.info.transaction_status == TransactionStatus.ACTIVE:
            connection.close()
        self.pool.putconn(connection)

    def close(self) -> None:
        self.pool.close()

    def pool_usage(self) -> tuple[int, int, int]:
        # "In use" counts a connection the pool is still opening: psycopg_pool's size does.
        stats = self.pool.get_stats()
        idle = stats.get("pool_available", 0)
        return stats.get("pool_size", 0) - idle, idle, stats.get("requests_waiting", 0)
