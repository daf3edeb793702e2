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
mode), which the master makes before the first fork, owns and removes at exit, and into which
it folds the files of each worker that exits (metricfiles.py); a scrape answered by any worker
sums them all.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from .keys import KeyRing
from .metricfiles import LOCK, make_lock, retire
from .settings import METRICS_DIR, ConfigError, Settings, export_metrics_dir, load_settings

logger = logging.getLogger(__name__)

# gunicorn's lines when another process holds the address, each retry, then its last word
# (gunicorn/sock.py, create_sockets); a fast test fails on a release that rewords them.
ADDRESS_IN_USE = "Connection in use: %s"
GIVING_UP = "Can't connect to %s"
BIND_HINT = "another process listens there: stop it, or set BIND to another address (BIND=127.0.0.1:8444)"

# File descriptors a worker needs beyond its client connections (listeners, logs, Redis, SQLite).
SPARE_DESCRIPTORS = 64

# The settings this process serves with. The gunicorn master sets them when it reads its
# configuration; workers are forked from it and inherit them, so every worker serves exactly
# what the master validated, and a reload that fails validation changes nothing.
_serving: Settings | None = None
# The settings in force before the last reload, for a reload refused once gunicorn resolved it.
_previous: Settings | None = None
# The metrics directory this master made, and removes at exit: always its own, never the
# operator's, nor one that another master made.
_made_metrics_dir: Path | None = None
# What the last reload did, for log_reload: logging is configured anew only after gunicorn has
# read its configuration, which is when reload_settings runs.
_reloaded: tuple[str, dict[str, object]] | None = None
# The name of such a directory. A successor started by USR2 inherits the environment of its
# parent master, where this path stands in PROMETHEUS_MULTIPROC_DIR after any reload (gunicorn
# reads the environment afresh on SIGHUP); the name and the fold lock inside tell it apart from a
# directory the operator named, so that the successor makes its own beside it instead of sharing
# one that its parent removes on retiring.
MADE_BY_A_MASTER = re.compile(r"metrics-\d+-.+")


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
    global _serving, _previous, _reloaded
    _previous = _serving
    try:
        fresh = load_settings()
        check_workers(fresh, fresh.workers)
    except ConfigError as error:
        if _serving is None:
            raise
        # ConfigError names the variable and the problem, never a value.
        _reloaded = ("reload refused, still serving the previous configuration", {"reason": str(error)})
        return _serving, error
    if _serving is not None:
        _reloaded = ("reload applied", key_changes(_serving.keys, fresh.keys))
    _serving = fresh
    return fresh, None


def key_changes(before: KeyRing, after: KeyRing) -> dict[str, object]:
    """The key ids a reload added, removed and changed (the same id, another entry: scopes,
    tenant, expiry, limit, networks or digest), each list sorted; never a digest."""
    old = {key.key_id: key for key in before}
    new = {key.key_id: key for key in after}
    return {
        "keys_added": sorted(new.keys() - old.keys()),
        "keys_removed": sorted(old.keys() - new.keys()),
        "keys_changed": sorted(key_id for key_id in old.keys() & new.keys() if old[key_id] != new[key_id]),
    }


def log_reload() -> None:
    """One log line for the reload that just happened (gunicorn's ``on_reload`` hook): through the
    service's logging, masked, and JSON in production."""
    global _reloaded
    if _reloaded is None:
        return
    message, fields = _reloaded
    _reloaded = None
    level = logging.INFO if "reason" not in fields else logging.ERROR
    logger.log(level, message, extra=fields)


def restore_previous(refused: ConfigError) -> Settings:
    """A reload refused on the values gunicorn resolved (``on_reload``): the settings in force
    before it stay in force, for the workers forked next, and the reload's line says why."""
    global _serving, _reloaded
    if _previous is not None:
        _serving = _previous
    _reloaded = ("reload refused, still serving the previous configuration", {"reason": str(refused)})
    return serving_settings()


def warn_test_environment(settings: Settings) -> None:
    """One line at every start under gunicorn with APP_ENV=test, which the test suite's servers
    use: it serves plain HTTP without a proxy and accepts keys over it, where production refuses."""
    if settings.app_env == "test":
        print(
            "warning: APP_ENV: test serves plain HTTP and accepts keys over it; "
            "for the test suite only, never a deployment",
            file=sys.stderr,
        )


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
    """The master, before the first fork and on every reload: the directory its workers write
    their series to, which it makes (mode 0700) and alone removes.

    It is made inside PROMETHEUS_MULTIPROC_DIR when the operator names one (never emptied, never
    removed: two masters may use it at once during a binary upgrade), else in the system's
    temporary directory. A fresh directory per master also means that no earlier run's counts
    are added to this one's. On a reload the same directory serves on, or a new one if it has
    vanished (a cleaner of temporary files), so that no worker meets a missing directory.
    """
    global _serving, _made_metrics_dir
    settings = serving_settings()
    if _made_metrics_dir is None or not _made_metrics_dir.is_dir():
        try:
            _made_metrics_dir = make_metrics_dir(metrics_home(settings.metrics_dir))
        except OSError as error:
            raise ConfigError(METRICS_DIR, f"cannot prepare the directory ({type(error).__name__})") from None
    export_metrics_dir(_made_metrics_dir)
    # Workers are forked with these settings: they serve the scrape from this directory.
    _serving = dataclasses.replace(settings, metrics_dir=_made_metrics_dir)


def metrics_home(named: Path | None) -> Path | None:
    """Where this master makes its directory: in the one the operator named, in the system's
    temporary directory (None), or beside a directory another master made (inherited by USR2)."""
    if named is not None and MADE_BY_A_MASTER.fullmatch(named.name) and (named / LOCK).is_file():
        return named.parent
    return named


def make_metrics_dir(home: Path | None) -> Path:
    """A new private directory (``tempfile.mkdtemp``: an unpredictable name, mode 0700) in
    ``home``, created first (mode 0700) when it does not exist yet."""
    if home is not None:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"metrics-{os.getpid()}-", dir=home))
    make_lock(directory)
    return directory


def worker_exited(pid: int) -> None:
    """A worker is gone (crashed, killed, replaced, or past ``max_requests``): its live gauges
    leave the sums, and its counts are folded into the files of the dead, so that they stay in
    the totals (no total ever goes backwards) while the files a scrape reads stay few."""
    directory = serving_settings().metrics_dir
    if directory is not None:
        retire(directory, pid)


def stop_metrics() -> None:
    """The master, at exit: remove the directory it made, and nothing else."""
    if _made_metrics_dir is not None:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


class BindHint(logging.Filter):
    """Names the variable that sets the address on gunicorn's last line when the address is held
    by another process: its bind loop otherwise retries for five seconds and exits saying only
    that it cannot connect."""

    def __init__(self) -> None:
        super().__init__()
        self.in_use = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == ADDRESS_IN_USE:
            self.in_use = True
        elif record.msg == GIVING_UP and self.in_use:
            record.msg = f"{GIVING_UP}: {BIND_HINT}"
        return True


def with_bind_hint(config: dict[str, Any]) -> dict[str, Any]:
    """A logging configuration whose gunicorn.error logger adds :class:`BindHint`."""
    filters = {**config.get("filters", {}), "bind_hint": {"()": BindHint}}
    loggers = dict(config.get("loggers", {}))
    error = loggers.get("gunicorn.error", {})
    loggers["gunicorn.error"] = {**error, "filters": [*error.get("filters", []), "bind_hint"]}
    return {**config, "filters": filters, "loggers": loggers}
