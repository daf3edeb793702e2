"""gunicorn settings: TLS 1.2+ with forward-secret AEAD ciphers, workers that idle or stalled
connections cannot exhaust, masked logs, fail fast.

Every value here can be overridden with GUNICORN_CMD_ARGS or the command line, as gunicorn
documents; `gunicorn --print-config` shows what was resolved.
"""

import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.glogging import Logger

from {{ cookiecutter.package_name }}.database import prepare_database
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX
from {{ cookiecutter.package_name }}.logging import logging_config
from {{ cookiecutter.package_name }}.serving import (
    check_deadlines,
    check_workers,
    log_reload,
    reload_settings,
    reserve_descriptors,
    restore_previous,
    start_metrics,
    stop_metrics,
    stop_while_booting,
    warn_test_environment,
    with_bind_hint,
    worker_exited,
)
from {{ cookiecutter.package_name }}.settings import ConfigError, Settings
from {{ cookiecutter.package_name }}.worker import check_worker_class, deferred_tls

# Mozilla "intermediate": TLS 1.2 only with ECDHE and AEAD; TLS 1.3 suites are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

try:
    # On SIGHUP, a broken configuration keeps the one that worked; on_reload logs which it was.
    settings, _refused = reload_settings()
except ConfigError as error:
    # One line naming the variable; SystemExit passes through gunicorn's config loader.
    sys.exit(f"error: {error}")

wsgi_app = "{{ cookiecutter.package_name }}:create_app()"
bind = [settings.bind]
workers = settings.workers  # 1 with memory:// limits; one per CPU (at most 8) with Redis.
# gunicorn's gevent worker, a greenlet per connection (a client that stalls its TLS handshake or
# trickles its headers holds a few kilobytes, where a gthread thread would be held until it
# leaves), with connections counted per client address and bounded in time (worker.py).
worker_class = "{{ cookiecutter.package_name }}.worker.FairGeventWorker"
worker_connections = 1000  # open connections per worker; more wait in the listen backlog.
# Seconds for the TLS handshake, then for the request line and headers, and to wait for the next
# request on a kept-alive connection: a stalled or silent client is closed after this.
keepalive = 5
timeout = 30  # a worker whose event loop stops reporting for this long is killed and replaced.
graceful_timeout = 30  # in-flight requests get this long to finish on SIGTERM or SIGHUP.
limit_request_line = 4094  # longest request line; keys never belong in it anyway.
limit_request_fields = 50  # most headers per request.
limit_request_field_size = 8190  # longest header, key headers included.
forwarded_allow_ips = ",".join(str(network) for network in settings.forwarded_allow_ips)
# From a trusted proxy, the scheme only: no SCRIPT_NAME or PATH_INFO header may reroute a request.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
forwarder_headers = ""
proxy_allow_ips = ""  # no PROXY protocol.
control_socket_disable = True  # no admin socket: signals (HUP, TERM) are the interface.
accesslog = None  # the app writes one line per request itself (requestlog.py).
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(M)sms rid=%({x-request-id}o)s key=%({app.key_id}e)s'
# In each worker, lines are written by a native thread from a bounded queue: a stalled log reader
# cannot freeze the event loop; when the queue is full, lines are dropped and counted
# (api_log_lines_dropped). The master writes its own few lines itself (logwriter.py says why).
logconfig_dict = with_bind_hint(
    logging_config(
        key_prefix=KEY_PREFIX,
        json_lines=not settings.development,
        level=settings.log_level,
        line_limit=settings.log_line_limit,
        background=True,
    )
)

if settings.tls:
    certfile = str(settings.tls_cert_file)
    keyfile = str(settings.tls_key_file)


def ssl_context(conf: object, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """TLS 1.2 minimum, no compression, no renegotiation, AEAD-only suites for TLS 1.2, and the
    handshake left to the worker, which runs it under a deadline."""
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return deferred_tls(context)


def check_resolved(server: Any, settings: Settings) -> None:
    """The checks on the values gunicorn resolved (-w or GUNICORN_CMD_ARGS may change them, and a
    reload reads this file again): the worker count against the limits' storage, the deadlines,
    the worker class."""
    check_workers(settings, server.cfg.workers)
    check_deadlines(server.cfg.keepalive)
    check_worker_class(server.cfg.worker_class, settings.tls)


def on_starting(server: Any) -> None:
    """Before the first worker is forked: the checks above, the metrics directory, the database."""
    try:
        check_resolved(server, settings)
        start_metrics()
        prepare_database(settings, server.cfg.workers, server.cfg.worker_connections)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    warn_test_environment(settings)
    reserve_descriptors(server.cfg.worker_connections)


def on_reload(server: Any) -> None:
    """On SIGHUP, once gunicorn has read its configuration again and before it forks the new
    workers: every check a start applies, on what gunicorn resolved now (the settings alone were
    checked as this file was read)."""
    try:
        check_resolved(server, settings)
        prepare_database(settings, server.cfg.workers, server.cfg.worker_connections)
    except ConfigError as error:
        keep_previous(server, error)
    try:
        start_metrics()
    except ConfigError as error:
        stop(error)
    reserve_descriptors(server.cfg.worker_connections)
    # Last, once gunicorn has configured logging anew: one line saying what the reload changed
    # (key ids added, removed, changed) or why it was refused.
    log_reload()


def keep_previous(server: Any, refused: ConfigError) -> None:
    """A reload refused: the new workers serve the settings in force before it, whose database
    was prepared when they were read (one that fails now, an outage, gets 503s until it is back).
    gunicorn applies its own values (this file, its command line) on a reload whatever the
    service decides, so when those fail a start's check even with the previous settings, the
    service stops."""
    previous = restore_previous(refused)
    try:
        check_resolved(server, previous)
    except ConfigError as error:
        stop(error)


def stop(error: ConfigError) -> None:
    """What a start would refuse, on a reload: one line, then a graceful stop (SIGTERM)."""
    print(f"error: {error}; a start would refuse it: stopping", file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker, before it boots: a stop sent meanwhile is not lost."""
    stop_while_booting()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, for every worker that exits: its live gauges leave the metrics' sums, and
    its counts join those of the dead workers, in files that do not grow in number."""
    worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    stop_metrics()


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing access lines only when --access-logfile asks for them.

    With any logging configuration (``logconfig_dict`` included), gunicorn builds every access
    line, a dict of the whole environ and of every header, even when ``accesslog`` is unset,
    then hands it to its access logger: the app's own request line already says all of it, once.
    gunicorn documents ``logger_class`` as a class that quacks like its Logger, not the signature
    of ``access``: tests/test_serving.py fails when a release changes that signature, or stops
    building those lines (and this class is no longer needed).
    """

    def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
        if self.cfg.accesslog is not None:
            super().access(resp, req, environ, request_time)


logger_class = AccessLogger
