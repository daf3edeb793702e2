"""One worker's connections to the SQLite file, kept off gevent's event loop, so that a write
waiting for the file's lock holds its own request, never the other connections of its worker.

Every resource's store (``stores/<resource>.py``) takes the same :class:`Database`, so that the
worker keeps a single writer. A store raises :class:`StoreUnavailable` when the database cannot
answer in time (503 with ``Retry-After``); any other error is a bug, and stays a 500.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

# Alembic's INFO lines (plugins, the DDL mode) on every start tell an operator nothing; a
# failure still reaches the log, and at start stops gunicorn with one line.
logging.getLogger("alembic").setLevel(logging.WARNING)

T = TypeVar("T")
# Seconds a call may wait, from when it was asked for, for a connection and for SQLite's lock.
BUSY_SECONDS = 10
# Connections for reads in each worker: WAL lets them read while another connection writes.
READERS = 4
# Seconds a client refused for the lock waits before it retries.
RETRY_AFTER = 1
# SQLite's "busy" and "locked" (any extended code of them): another connection holds the lock.
# Any other error is a bug (a missing table, a bad query) and stays a 500.
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
PRIVATE = 0o600  # the database holds every tenant's items: its owner alone reads it


class StoreUnavailable(Exception):
    """The database cannot answer now (down, unreachable, too slow): the client may retry."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the database is unavailable; retry after {retry_after} s")
        self.retry_after = retry_after


class _Semaphore(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float | None = ...) -> bool: ...

    def release(self) -> None: ...


class _CallerThreads:
    """No event loop to keep free (tests, ``flask run``, command-line tools): a call runs in
    the thread that makes it, which holds only its own request while it waits."""

    semaphore = staticmethod(threading.BoundedSemaphore)

    def run(self, task: Callable[[], T], then: Callable[[], None]) -> T:
        try:
            return task()
        finally:
            then()

    def close(self) -> None:
        """No thread of its own to stop."""


class _GeventThreads:
    """Under gevent (gunicorn's worker): each call runs in a native thread of a pool of its
    own, one thread per connection, while the greenlet that made it yields to the event loop.
    sqlite3 releases the GIL while SQLite works or sleeps on a lock."""

    def __init__(self, size: int) -> None:
        from gevent.lock import BoundedSemaphore
        from gevent.threadpool import ThreadPool

        self.semaphore = BoundedSemaphore
        # Not the hub's shared pool: DNS lookups there cannot delay a call, nor calls them.
        self.pool = ThreadPool(size)

    def run(self, task: Callable[[], T], then: Callable[[], None]) -> T:
        returned: list[T] = []

        def returning() -> Exception | None:
            # An exception raised in a pool thread is printed by gevent's hub, outside the
            # service's masked logs: hand it over instead, and raise it in the caller.
            try:
                returned.append(task())
            except Exception as error:  # noqa: BLE001 - raised again below, in the caller
                return error
            return None

        result = None
        try:
            result = self.pool.spawn(returning)
            error = result.get()
            if error is not None:
                raise error
            return returned[0]
        finally:
            if result is None or result.ready():
                then()
            else:
                # The greenlet was killed while the thread still works (a stop past its grace
                # period): the connection goes back only once the thread is done with it.
                result.rawlink(lambda _result: then())

    def close(self) -> None:
        self.pool.kill()


def _threads(size: int) -> _CallerThreads | _GeventThreads:
    from gevent import monkey

    # gunicorn's gevent worker patches the standard library before it loads the app.
    if monkey.is_module_patched("threading"):
        return _GeventThreads(size)
    return _CallerThreads()


class _Lane:
    """``size`` connections of one kind, each lent to one caller at a time, opened on first
    use (in the thread that uses it: opening reads the file)."""

    def __init__(self, size: int, semaphore: Callable[[int], _Semaphore], read_only: bool) -> None:
        self.free = semaphore(size)
        self.idle: list[sqlite3.Connection | None] = [None] * size
        self.read_only = read_only


class Database:
    """One worker's kept connections to one SQLite file: one writer, so that at most one of
    the worker's writes waits for SQLite's lock at a time, and a few readers, which WAL lets
    read meanwhile. Each call waits at most ``busy_timeout`` seconds, counted from when it was
    asked for, for a connection and for the lock together, then gets StoreUnavailable.

    Build it in the process that uses it: a connection must not cross a fork, and the choice
    of threads follows gevent's patching. gunicorn builds the app in each worker after the
    patch (``preload_app`` stays off); one built before it would run its calls on the loop.
    """

    def __init__(self, path: str, busy_timeout: float = BUSY_SECONDS, readers: int = READERS) -> None:
        self.path, self.busy_timeout = path, busy_timeout
        self._threads = _threads(readers + 1)
        self._writer = _Lane(1, self._threads.semaphore, read_only=False)
        self._readers = _Lane(readers, self._threads.semaphore, read_only=True)

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """``query(connection)`` in one read transaction (a consistent snapshot). It returns
        values, rows fetched: a cursor used after the call would run on the event loop, on a
        connection lent to another call by then."""
        return self._call(self._readers, "BEGIN", query)

    def write(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """``change(connection)`` in one write transaction, committed when it returns (rolled
        back when it raises); like ``read``, it returns values, never a cursor."""
        # IMMEDIATE takes the lock first: a transaction that read before it wrote could not wait
        # for the lock (SQLite refuses it at once, its snapshot being stale).
        return self._call(self._writer, "BEGIN IMMEDIATE", change)

    def pool_usage(self) -> None:
        """A handful of kept connections per worker: nothing pooled to report."""

    def close(self) -> None:
        """Close every connection that no call holds; the database is unusable afterwards. One
        still in a thread's hands at exit is left to the process's end, which SQLite recovers
        from as from a crash, without loss."""
        for lane in (self._writer, self._readers):
            while lane.free.acquire(blocking=False):
                connection = lane.idle.pop()
                if connection is not None:
                    connection.close()
        self._threads.close()

    def _call(self, lane: _Lane, begin: str, work: Callable[[sqlite3.Connection], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout
        if not lane.free.acquire(timeout=self.busy_timeout):
            raise StoreUnavailable(RETRY_AFTER)
        lent = lane.idle.pop()

        def task() -> T:
            nonlocal lent
            if lent is None:
                lent = self._connect(lane.read_only)
            return _transaction(lent, begin, work, deadline)

        def give_back() -> None:
            lane.idle.append(lent)
            lane.free.release()

        return self._threads.run(task, give_back)

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        # mode=rw: a file that went missing is an error, never a new empty database made with
        # the umask's mode. check_same_thread=False: a connection moves between the pool's
        # threads, but its lane lends it to one call at a time, and takes it back only once
        # the thread that ran the call is done with it.
        uri = f"{Path(self.path).absolute().as_uri()}?mode=rw"
        connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if read_only:
            # A read that writes would bypass the writer, and the one-writer-per-worker bound.
            connection.execute("PRAGMA query_only = ON")
        return connection


def _transaction(
    connection: sqlite3.Connection, begin: str, work: Callable[[sqlite3.Connection], T], deadline: float
) -> T:
    """``work`` in one transaction; waiting for the lock past ``deadline`` is StoreUnavailable."""
    try:
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise StoreUnavailable(RETRY_AFTER)
        connection.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        connection.execute(begin)
        try:
            result = work(connection)
            connection.execute("COMMIT")
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF in BUSY_CODES:
            raise StoreUnavailable(RETRY_AFTER) from error
        raise
    return result


def prepare_file(path: str) -> int:
    """Create the database file, readable by this user only (its directory too, when new), in
    WAL mode; return the file's permission bits.

    SQLite alone would create it with the umask's mode, often 0644: every local user would read
    every tenant's items. It creates the ``-wal`` and ``-shm`` files with the database file's
    mode. A file that exists keeps the mode its operator gave it.
    """
    file = Path(path)
    if not file.parent.exists():
        file.parent.mkdir(mode=0o700, parents=True)
    try:
        descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE)
    except FileExistsError:
        pass
    else:
        os.fchmod(descriptor, PRIVATE)  # a umask such as 0277 would have left it read-only
        os.close(descriptor)
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")  # kept in the file: readers never wait for a writer
    return stat.S_IMODE(file.stat().st_mode)


def apply_migrations(path: str) -> None:
    """Bring the file to the newest schema: Alembic's ``upgrade head``, as ``alembic`` runs it."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    # The service's package holds the migrations (its top level, not this subpackage).
    config.set_main_option("script_location", f"{__name__.split('.')[0]}:migrations")
    config.attributes["path"] = path
    command.upgrade(config, "head")


@contextmanager
def exclusive(path: str) -> Iterator[None]:
    """A lock across the processes of this host, beside the database file: a starting service
    and ``alembic`` from a shell may migrate at the same moment."""
    descriptor = os.open(f"{path}.migrate-lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    with open(descriptor, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
