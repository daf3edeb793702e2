"""A log reader that stalls (a full pipe, a stopped collector) cannot stall the service: in each
gunicorn worker, a line goes to a bounded queue and a thread of the operating system writes it;
when the queue is full the line is dropped and counted, never waited for.

Under gunicorn's gevent worker, ``monkey.patch_all()`` makes ``threading.Thread`` a greenlet and
``queue.SimpleQueue`` gevent's own, so a writer built from them would still write from the
event loop. The writer is built from the originals, through gevent's documented
``gevent.monkey.get_original`` when gevent is loaded: a native thread started by
``_thread.start_new_thread`` and the C ``SimpleQueue``, whose ``put`` never blocks and whose
``get`` waits in C without holding the interpreter. This module imports only the standard
library; it uses gevent only when the process already did.
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import sys
import weakref
from collections.abc import Callable
from typing import IO, Any

# Lines waiting to be written, at most: about 10 MiB of request lines, then lines are dropped.
CAPACITY = 10_000
# Lines the writer takes from the queue at once.
BATCH = 256
# One write() hands the kernel whole lines and at most PIPE_BUF bytes, which POSIX writes to a
# pipe in one piece: the lines of the workers that share one pipe never interleave.
CHUNK = getattr(select, "PIPE_BUF", 512)
# Seconds a closing handler (at exit, or a reconfiguration) waits for its lines to be written.
CLOSE_WAIT = 5.0


def native(module: str, name: str) -> Any:
    """The standard library's own ``module.name``, even where gevent's monkey-patching replaced
    it (``get_original`` returns the unpatched object, or the current one if nothing patched it)."""
    # Relies on gevent's documented get_original returning the unpatched objects after
    # patch_all(); test_log_writer.py's fast (patched subprocess)
    # test_under_gevent_a_stalled_reader_does_not_freeze_the_event_loop fails on a release where
    # the writer would run on the loop.
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class DroppedLines:
    """Lines this process dropped because its queue was full, and who else wants to know."""

    def __init__(self) -> None:
        self.count = 0
        self.listener: Callable[[], object] | None = None

    def add(self) -> None:
        self.count += 1
        if self.listener is not None:
            self.listener()


DROPPED = DroppedLines()


def report_dropped_lines(listener: Callable[[], object] | None) -> None:
    """Call ``listener`` once for each line dropped from now on (the metrics count them), in the
    thread that logged it; ``None`` stops it."""
    DROPPED.listener = listener


def dropped_lines() -> int:
    """Lines this process dropped so far."""
    return DROPPED.count


class BackgroundHandler(logging.Handler):
    """Formats each record in the caller (after the masking filter) and queues the line; a native
    thread writes it. A full queue drops the line, counts it, and says so in the next line that
    fits. ``close`` (at exit: ``logging.shutdown``) writes what is queued, waiting at most
    ``CLOSE_WAIT``. In a child process (gunicorn forks its workers after logging is set up) a
    writer is started anew, with an empty queue: the parent writes what it had queued.

    ``only_in_children``: the process that sets logging up writes its own lines before the call
    returns, and only the processes forked from it write in the background. gunicorn's master
    has no event loop to protect and writes a few lines, and what it prints directly (the one
    line of a refused start, after "Starting gunicorn") must not be cut in two by a writer
    thread that is still busy with the line before.
    """

    def __init__(
        self, stream: IO[str] | None = None, capacity: int = CAPACITY, *, only_in_children: bool = False
    ) -> None:
        super().__init__()
        self.stream = sys.stderr if stream is None else stream
        self.capacity = capacity
        self.dropped = 0
        self.closed = False
        self.queue: Any = None  # no writer thread: each line is written before emit returns
        if not only_in_children:
            self.start()
        RUNNING.add(self)

    def start(self) -> None:
        """A new queue and a new writer thread (at creation, and in a child after a fork)."""
        self.reported = self.dropped
        self.queue = native("queue", "SimpleQueue")()
        self.finished = native("_thread", "allocate_lock")()
        self.finished.acquire()
        native("_thread", "start_new_thread")(self._write_until_closed, (self.queue, self.finished))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - as logging's own handlers: report, never raise
            self.handleError(record)
            return
        if self.queue is None or self.closed:
            # Written here: no writer in this process, or it is exiting and nothing runs beside.
            self._write([line])
        elif self.queue.qsize() >= self.capacity:
            self.dropped += 1
            DROPPED.add()
        else:
            if self.dropped > self.reported:
                self.queue.put(self._drop_notice(self.dropped - self.reported))
                self.reported = self.dropped
            self.queue.put(line)

    def _drop_notice(self, count: int) -> str:
        notice = logging.makeLogRecord(
            {
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": logging.getLevelName(logging.WARNING),
                "msg": "log lines dropped: the log reader did not keep up",
                "dropped_lines": count,
            }
        )
        return self.format(notice)

    def _write_until_closed(self, queue: Any, finished: Any) -> None:
        try:
            while True:
                lines = [queue.get()]
                lines += [queue.get() for _ in range(min(queue.qsize(), BATCH))]
                closing = None in lines
                self._write(lines[: lines.index(None)] if closing else lines)
                if closing:
                    return
        finally:
            finished.release()

    def _write(self, lines: list[str]) -> None:
        try:
            descriptor = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream without a file (tests' StringIO)
            descriptor = None
        try:
            if descriptor is None:
                self.stream.write("".join(f"{line}\n" for line in lines))
                self.stream.flush()
            else:
                _write_lines(descriptor, lines, getattr(self.stream, "encoding", None) or "utf-8")
        except (OSError, ValueError, LookupError):
            return  # the reader is gone (EPIPE) or the stream closed: these lines are lost

    def flush(self) -> None:
        """Nothing to do here: the writer flushes after each batch, and waiting for it in the
        caller is what this handler exists to avoid."""

    def close(self) -> None:
        self.acquire()  # no line is being queued meanwhile: the end marker is the last one
        try:
            if not self.closed and self.queue is not None:
                self.queue.put(None)
                self.finished.acquire(timeout=CLOSE_WAIT)
            self.closed = True
        finally:
            self.release()
        super().close()


def _write_lines(descriptor: int, lines: list[str], encoding: str) -> None:
    """Straight to the file descriptor: no lock of the stream object is held while the kernel
    waits, so a fork meanwhile cannot leave the child's stream locked."""
    chunk = b""
    for line in lines:
        data = f"{line}\n".encode(encoding, "backslashreplace")
        if chunk and len(chunk) + len(data) > CHUNK:
            _write_all(descriptor, chunk)
            chunk = b""
        chunk += data
    _write_all(descriptor, chunk)


def _write_all(descriptor: int, data: bytes) -> None:
    while data:
        data = data[os.write(descriptor, data) :]


RUNNING: weakref.WeakSet[BackgroundHandler] = weakref.WeakSet()


def _restart_in_child() -> None:
    DROPPED.count = 0
    for handler in list(RUNNING):
        if not handler.closed:
            handler.start()


os.register_at_fork(after_in_child=_restart_in_child)
