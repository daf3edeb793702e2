"""Revocations and last uses as each worker keeps them, off the request path, so a revoked key is
refused by every worker within 2 s, and no request waits on the database for either (nor fails
because a last use could not be written).

Two loops per worker, each in a thread of its own (a greenlet under gunicorn's gevent worker,
which patches ``threading``; the stores' calls then leave the event loop as every store's do):

* the poller reads the revoked key ids every second and swaps the set that requests look in;
* the writer records what holders reported (``POST /v1/keys/revoke``) as soon as it is woken,
  and each key id's last use, to the minute, once a second: at most one row write per key and
  minute in each worker.

Until a worker's first read succeeds, a request with a valid key waits for one (503 when it
fails): no key is let in on a list never read. After that, a read that fails leaves the last set
in force, logged once, and ``api_revocations_read_timestamp_seconds`` shows how old it is:
refusing every key while the database is out would make its outage the whole API's, and a
revocation made meanwhile has to reach that same database first.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .keys import InvalidKey, KeyRing
from .metrics import revocations_read, revoked_by_holder

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# After a holder's report wakes the writer, it waits this long before it writes: the request that
# woke it has answered by then, so the write, done for a configured key only, never competes with
# that answer for the worker (a thread for the GIL, or a greenlet for the event loop).
SETTLE_SECONDS = 0.05
HOLDER = "holder"


class Records(Protocol):
    """The store of key records (``stores/key_records.py``), as a worker uses it."""

    def revoked_ids(self) -> frozenset[str]: ...

    def revoke(self, key_id: str, *, reason: str | None, revoked_by: str, at: dt.datetime) -> object:
        """None when this call recorded the revocation; else the one already in force."""

    def record_uses(self, uses: dict[str, dt.datetime]) -> None: ...


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a holder's report came from, for its log line: never the key."""

    request_id: str
    remote_addr: str | None


class Loop:
    """``task`` every ``seconds``, or ``settle`` seconds after ``wake``, in a daemon thread until
    ``close``. A task that fails is logged when it starts failing and when it works again, no
    more often: a database that is down for an hour writes two lines per worker, not 3,600."""

    def __init__(self, name: str, seconds: float, task: Callable[[], None], settle: float = 0.0) -> None:
        self.name, self.seconds, self.task, self.settle = name, seconds, task, settle
        self._woken = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def close(self, timeout: float = 2.0) -> None:
        self._closed = True
        self._woken.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        while not self._closed:
            # Cleared before the task: a wake that arrives while it runs starts the next one at once.
            self._woken.clear()
            try:
                self.task()
            except Exception as error:  # noqa: BLE001 - the loop outlives any failure; the type is logged
                if not failing:
                    logger.warning(
                        "%s failed (%s); retrying every %s s", self.name, type(error).__name__, self.seconds
                    )
                failing = True
            else:
                if failing:
                    logger.info("%s works again", self.name)
                failing = False
            if self._woken.wait(self.seconds) and not self._closed:
                time.sleep(self.settle)


class KeyWatch:
    """One worker's view of the key records: which ids are revoked, and what to write back."""

    def __init__(self, records: Records, ring: KeyRing, poll_seconds: float = POLL_SECONDS) -> None:
        self.records = records
        self.ring = ring
        self.configured = frozenset(key.key_id for key in ring)
        self._lock = threading.Lock()
        self._revoked: frozenset[str] | None = None  # None until the first read
        self._read_at = float("-inf")  # when the read that set _revoked started
        # Reported by holders here: refused at once, before and after the writer records them,
        # until a read that started after the write includes them (or not: keys unrevoke).
        self._reports: dict[str | None, Origin] = {}
        self._recorded: dict[str, float] = {}
        self._marked: dict[str, int] = {}  # the minute of each key id's last use, as marked here
        self._uses: dict[str, int] = {}  # minutes not written yet
        self._poller = Loop("reading key revocations", poll_seconds, self._poll)
        self._writer = Loop("writing key records", poll_seconds, self._write, settle=SETTLE_SECONDS)

    def start(self) -> None:
        """Run the loops from now until the process exits (or ``close``)."""
        self._poller.start()
        self._writer.start()
        # Registered after the stores' own (open_stores): atexit runs it first, while the
        # database is still open.
        atexit.register(self.close)

    def close(self) -> None:
        self._poller.close()
        self._writer.close()

    # --- the request path: memory only, once the first read is done --------------------------

    def revoked(self, key_id: str) -> bool:
        """True when ``key_id`` is revoked. Raises StoreUnavailable before a first read succeeds."""
        revoked = self._revoked
        if revoked is None:
            revoked = self._read()
        return key_id in revoked or key_id in self._reports or key_id in self._recorded

    def used(self, key_id: str) -> None:
        """Mark a use of ``key_id`` (an accepted request): written by the writer, once a minute."""
        minute = int(time.time() // 60)
        if self._marked.get(key_id) == minute:
            return
        with self._lock:
            self._marked[key_id] = self._uses[key_id] = minute

    def report(self, presented: str, origin: Origin) -> None:
        """A holder's report of a key: a configured key is refused here at once, and everywhere once
        the writer has recorded it. The same calls whatever ``presented`` is (an unconfigured one is
        filed under None, which the writer drops), so nothing in the answer's timing tells whether
        it named a key."""
        try:
            key_id: str | None = self.ring.verify(presented).key_id
        except InvalidKey:
            key_id = None
        with self._lock:
            self._reports.setdefault(key_id, origin)
        self._writer.wake()

    # --- the loops ---------------------------------------------------------------------------

    def _read(self) -> frozenset[str]:
        started = time.monotonic()
        read = self.records.revoked_ids()
        with self._lock:
            # The first request and the poller may read at once: a slow read that started before
            # a revocation must not replace a later read that includes it.
            if started < self._read_at and self._revoked is not None:
                return self._revoked
            self._revoked, self._read_at = read, started
            for key_id, recorded in list(self._recorded.items()):
                if recorded < started:
                    del self._recorded[key_id]
        revocations_read(len(read & self.configured), time.time())
        return read

    def _poll(self) -> None:
        self._read()

    def _write(self) -> None:
        with self._lock:
            reports = dict(self._reports)
        for key_id, origin in reports.items():
            # None: what was sent is no configured key; there is nothing to write.
            if key_id is not None:
                self._record_report(key_id, origin)
            with self._lock:
                del self._reports[key_id]
        self._write_uses()

    def _record_report(self, key_id: str, origin: Origin) -> None:
        earlier = self.records.revoke(key_id, reason=None, revoked_by=HOLDER, at=dt.datetime.now(dt.UTC))
        with self._lock:
            self._recorded[key_id] = time.monotonic()
        if earlier is None:
            revoked_by_holder()
            logger.warning(
                "key revoked by its holder",
                extra={
                    "key_id": key_id,
                    "reason": None,
                    "revoked_by": HOLDER,
                    "remote_addr": origin.remote_addr,
                    "request_id": origin.request_id,
                },
            )

    def _write_uses(self) -> None:
        with self._lock:
            uses, self._uses = self._uses, {}
        if not uses:
            return
        try:
            self.records.record_uses(
                {key_id: dt.datetime.fromtimestamp(minute * 60, dt.UTC) for key_id, minute in uses.items()}
            )
        except Exception:
            with self._lock:
                # Written on the next turn, unless a later minute has been marked meanwhile.
                for key_id, minute in uses.items():
                    self._uses[key_id] = max(minute, self._uses.get(key_id, minute))
            raise
