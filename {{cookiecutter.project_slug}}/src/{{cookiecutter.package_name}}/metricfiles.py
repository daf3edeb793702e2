"""The files of the metrics directory, kept few and read whole: every worker that ever ran would
otherwise leave its files behind, and every scrape would read them all (CWE-400).

When a worker exits, the gunicorn master folds its counters and histograms into one file per
kind for all the dead workers (``counter_dead.db``, ``histogram_dead.db``), so a scrape reads
the live workers' files and those few, however many workers came and went. A lock keeps a scrape
from reading a fold half done, which would count a worker twice or not at all.

prometheus_client documents the merge (``MultiProcessCollector.merge``, whose ``accumulate=False``
is there "if writing the merged data back to mmap files"), not the writing: the fold writes with
its ``mmap_dict`` module, as its own workers do. ``tests/test_metrics.py`` checks, in the fast
tier, that what the fold writes reads back as the same totals: a release that changes the format
fails there, not in a running master.

prometheus_client is imported inside the functions: it picks its multiprocess mode from the
environment when first imported, and the master imports this module before it exports the
directory that its workers, forked from it, must write to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Made by the master in the directory it made; a directory without it has no master folding.
LOCK = "fold.lock"
# The kinds whose values add up across processes. Gauges are all "livesum" here: a dead worker's
# leave the sums (prometheus_client's mark_process_dead), and there is nothing of them to keep.
KINDS = ("counter", "histogram", "summary")
# Stands in the file name where a worker's process id does; prometheus_client reads only the kind
# from a counter's or histogram's file name.
DEAD = "dead"
# Seconds the master waits for scrapes to finish reading before it folds. Past it (a worker
# stopped in the middle of a scrape), the files stay as they are, counted, and are folded at a
# later exit: the master's loop must not wait on a worker.
FOLD_WAIT = 1.0

# Workers whose files are not folded yet, in the master.
_unfolded: set[int] = set()


def make_lock(directory: Path) -> None:
    """In a directory the master just made: the lock that scrapes and folds share."""
    os.close(os.open(directory / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@contextlib.contextmanager
def reading(directory: Path) -> Iterator[None]:
    """For a scrape: the files as a whole, between two folds (scrapes share the lock)."""
    try:
        descriptor = os.open(directory / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        # No master folds in this directory (no gunicorn, or one named for another tool).
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)  # and with it the lock


def retire(directory: Path, pid: int) -> None:
    """In the master, for a worker that exited: its live gauges leave the sums, and its files,
    with those of any earlier worker left unfolded, are folded into the files of the dead."""
    from prometheus_client import multiprocess

    _unfolded.add(pid)
    try:
        multiprocess.mark_process_dead(pid, str(directory))
        with _exclusive(directory) as held:
            if held:
                _fold_every_dead(directory, pid)
    except Exception as error:  # noqa: BLE001 - the master must outlive any file it cannot read
        # The files stay where they are, counted by every scrape; gunicorn's master stops on an
        # exception raised from its child_exit hook.
        print(f"warning: metrics: could not fold a worker's files ({type(error).__name__})", file=sys.stderr)


def _fold_every_dead(directory: Path, exited: int) -> None:
    for pid in sorted(_unfolded):
        # An earlier one's id may belong to a new worker by now, which writes on in the same
        # files (from the counts they hold): those are folded when that worker exits.
        if pid == exited or not _running(pid):
            fold(directory, pid)
            _unfolded.discard(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process has that id now
    return True


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """The lock alone, once no scrape reads; False when scrapes held it past FOLD_WAIT."""
    descriptor = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + FOLD_WAIT
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(descriptor)


def fold(directory: Path, pid: int) -> None:
    """Add a dead process's counters, histograms and summaries to the files of the dead, then
    remove its files. Call it holding the lock alone."""
    from prometheus_client.multiprocess import MultiProcessCollector

    for kind in KINDS:
        source = directory / f"{kind}_{pid}.db"
        if not source.exists():
            continue
        dead = directory / f"{kind}_{DEAD}.db"
        files = [str(path) for path in (dead, source) if path.exists()]
        # Not accumulated: each histogram bucket keeps its own count, as the workers write them.
        merged = MultiProcessCollector.merge(files, accumulate=False)
        # Written aside and renamed: a master stopped half-way leaves the dead's file whole.
        partial = directory / f"{kind}_{DEAD}.partial"
        write(partial, merged)
        partial.replace(dead)
        source.unlink()


def write(path: Path, metrics: Iterable[Metric]) -> None:
    """A file of the multiprocess format holding these samples."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    path.unlink(missing_ok=True)  # what an interrupted fold left
    values = MmapedDict(str(path))
    try:
        for metric in metrics:
            name, help_text = metric.name, metric.documentation
            for sample in metric.samples:
                labels = sample.labels
                key = mmap_key(name, sample.name, list(labels), list(labels.values()), help_text)
                values.write_value(key, sample.value, 0.0)
    finally:
        values.close()
