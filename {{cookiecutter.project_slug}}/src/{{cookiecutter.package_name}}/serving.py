"""The gunicorn life cycle: settings validated once by the master and inherited by its workers, a
reload that cannot break a running service, and connections that cannot hold a worker forever.

The worker model is gevent: each connection is a greenlet, so a client that stalls in the TLS
handshake or trickles its request headers holds a few kilobytes, not a thread. What bounds
such a client:

* the TLS handshake, the request line and the headers, together: gunicorn's gevent worker
  reads a request under a deadline of ``keepalive`` seconds, and :func:`lazy_handshakes`
  moves the handshake into that first read;
* the body: :mod:`.body` reads it under a deadline of its own;
* the number of connections: ``worker_connections`` per worker; past it, new connections
  wait in the listen backlog until a slot frees.
"""

from __future__ import annotations

import resource
import ssl
import sys
from typing import Any

from .settings import ConfigError, Settings, load_settings

# File descriptors a worker needs beyond its client connections (listeners, logs, Redis, SQLite).
SPARE_DESCRIPTORS = 64

# The settings this process serves with. The gunicorn master sets them when it reads its
# configuration; workers are forked from it and inherit them, so every worker serves exactly
# what the master validated, and a reload that fails validation changes nothing.
_serving: Settings | None = None


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


def lazy_handshakes(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``context`` wrap sockets without their TLS handshake, which then happens on the
    first read: the read of the request, under gunicorn's ``keepalive`` deadline.

    gevent's server would otherwise run the handshake as it wraps an accepted socket, before
    gunicorn sees the connection: with no deadline (a client that sends half a ClientHello
    holds its greenlet until it leaves), and racing a graceful stop, which drops connections
    still in their handshake when a worker is replaced (gevent issue 2071). The context is
    ours, made by gunicorn's ``ssl_context`` hook; only the default of one argument changes.
    """
    wrap = context.wrap_socket

    def wrap_socket(sock: Any, *args: Any, **options: Any) -> ssl.SSLSocket:
        options.setdefault("do_handshake_on_connect", False)
        return wrap(sock, *args, **options)

    context.wrap_socket = wrap_socket  # type: ignore[method-assign]
    return context
