"""The gunicorn life cycle: settings validated once by the master and inherited by its workers, a
reload that cannot break a running service, and connections that cannot hold a worker forever.

The worker model is gevent: each connection is a greenlet, so a client that stalls in the TLS
handshake or trickles its request headers holds a few kilobytes, not a thread. What bounds
such a client (the worker class is worker.py's):

* the TLS handshake: ``keepalive`` seconds (the worker runs it, after the per-address cap);
* the request line and headers: ``keepalive`` seconds again (gunicorn's own deadline);
* the body: :mod:`.body` reads it under a deadline of its own;
* an answer the client does not take: ``WRITE_TIMEOUT`` seconds, then the connection is reset;
* a kept-alive connection: ``CONNECTION_MAX_REQUESTS`` requests or ``CONNECTION_MAX_AGE`` seconds;
* the number of connections: ``CONNECTIONS_PER_ADDRESS`` per client address (an IPv6 /64) and
  ``worker_connections`` in all, per worker; past the cap a new connection is reset at once,
  from 90 % of ``worker_connections`` every answer closes its connection, and past it a new
  connection waits in the listen backlog until a slot frees.

Metrics: each worker writes its series to one directory (prometheus_client's multiprocess
mode), which the master prepares before the first fork and tidies as workers exit; a scrape
answered by any worker sums them all.
"""

from __future__ import annotations

import dataclasses
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from .settings import METRICS_DIR, ConfigError, Settings, export_metrics_dir, load_settings

# File descriptors a worker needs beyond its client connections (listeners, logs, Redis, SQLite).
SPARE_DESCRIPTORS = 64

# The settings this process serves with. The gunicorn master sets them when it reads its
# configuration; workers are forked from it and inherit them, so every worker serves exactly
# what the master validated, and a reload that fails validation changes nothing.
_serving: Settings | None = None
# The metrics directory when this master made it (removed at exit). One the operator named is
# kept, and emptied at the next start instead.
_made_metrics_dir: Path | None = None


def serving_settings() -> Settings:
    """The settings in force: those the gunicorn master validated, else the environment's."""
    global _serving
    if _serving is None:
        _serving = load_settings()
    return _serving


def reload_settings() -> tuple[Settings, ConfigError | None]:
    """Read the environment again (gunicorn start and SIGHUP).

    At start a bad configuration raises. On a reload it returns the settings already in
    force with the error, so the service keeps serving the last configuration that worked.
    """
    global _serving
    try:
        fresh = load_settings()
        check_workers(fresh, fresh.workers)
    except ConfigError as error:
        if _serving is None:
            raise
        return _serving, error
    _serving = fresh
    return fresh, None


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse (in production) or warn about limits that each worker would count alone."""
    if workers > 1 and not settings.shared_limits:
        problem = (
            f"memory:// with {workers} workers multiplies every rate limit by {workers}; "
            "use redis:// or one worker"
        )
        if settings.app_env == "production":
            raise ConfigError("RATELIMIT_STORAGE_URI", problem)
        print(f"warning: RATELIMIT_STORAGE_URI: {problem}", file=sys.stderr)


def check_deadlines(keepalive: int) -> None:
    """Refuse a ``keepalive`` of 0: gunicorn would then read a request's headers without any
    deadline, and the worker's TLS handshake would have none either."""
    if keepalive < 1:
        raise ConfigError(
            "keepalive", "must be at least 1 s: the deadline of the TLS handshake and of a request's headers"
        )


def reserve_descriptors(worker_connections: int) -> None:
    """Raise this process's open-file limit to what the connections need, up to the hard limit.

    Past the limit, accepting a connection fails: the worker would turn clients away long
    before ``worker_connections`` holds them.
    """
    needed = worker_connections + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(
                f"warning: open-file limit {target} is below worker_connections + {SPARE_DESCRIPTORS}; "
                "raise it (ulimit -n, LimitNOFILE) or lower worker_connections",
                file=sys.stderr,
            )


def stop_while_booting() -> None:
    """In a worker just forked, until gunicorn installs the worker's own handlers: end at once
    on TERM, INT or QUIT.

    A forked worker starts with the master's handlers, which queue the signal for the master's
    loop, a loop this process never runs: a stop that reached a worker while it booted (right
    after a start, or Ctrl-C) was lost, and that worker, and the whole stop, waited
    ``graceful_timeout`` for the master's SIGKILL. Such a worker has no connection yet to finish.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, _exit_at_once)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def start_metrics() -> None:
    """The master, once, before the first fork: an empty directory for the workers' series.

    Files left by an earlier run would add its counts to this one's. Without
    PROMETHEUS_MULTIPROC_DIR the directory is a private temporary one (mode 0700).
    """
    global _serving, _made_metrics_dir
    settings = serving_settings()
    try:
        if settings.metrics_dir is None:
            directory = _made_metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-"))
        else:
            directory = settings.metrics_dir
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for stale in directory.glob("*.db"):
                stale.unlink()
    except OSError as error:
        raise ConfigError(METRICS_DIR, f"cannot prepare the directory ({type(error).__name__})") from None
    export_metrics_dir(directory)
    # Workers are forked with these settings: they serve the scrape from this directory.
    _serving = dataclasses.replace(settings, metrics_dir=directory)


def worker_exited(pid: int) -> None:
    """A worker is gone (crashed, killed or replaced): its live gauges leave the sums, while its
    counters stay in them, so that no total ever goes backwards."""
    directory = serving_settings().metrics_dir
    if directory is None:
        return
    # Imported here, after start_metrics: prometheus_client picks its mode from the environment
    # when it is first imported, and every later worker is forked from this process.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))


def stop_metrics() -> None:
    """The master, at exit: remove the directory it made (and nothing the operator named)."""
    if _made_metrics_dir is not None:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
