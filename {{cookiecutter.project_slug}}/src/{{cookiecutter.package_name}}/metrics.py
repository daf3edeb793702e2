"""Prometheus series that tell operators how the service is doing without telling them any key:
labels come only from route templates and fixed lists, so no key and no text a client chose
becomes a label (CWE-532, CWE-770), and ``GET /metrics`` needs the ``metrics:read`` scope
(CWE-200).

Under gunicorn, every worker writes its series to the directory the master prepared
(prometheus_client's multiprocess mode, see serving.py) and a scrape, answered by any one
worker, sums them all, reading the files in a native thread: a read on gevent's event loop
would hold every connection of the worker until it is done. Elsewhere (the test client,
``flask run``) the series are the process's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol, TypeVar

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .access import requires
from .auth import caller, failure
from .limits import limit
from .logwriter import report_dropped_lines
from .metricfiles import reading
from .shapes import answers

T = TypeVar("T")


class Pooled(Protocol):
    """The database connections, as the metrics see them."""

    def pool_usage(self) -> tuple[int, int, int] | None:
        """Connections in use and idle, and requests waiting for one; None without a pool."""


SCOPE = "metrics:read"
# The scrape's own limit, per key: RATELIMIT_DEFAULT is tuned for clients and must not break a
# scrape every 15 s, and a leaked scraping key still cannot make a worker read the files in a loop.
SCRAPE_LIMIT = "120 per minute"
# Every request that matched no route (404, 405) shares one label, whatever its path: a path is
# the client's text, and one series per path would grow without bound.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
# Seconds: a request spends about a millisecond in the application; the worker timeout is 30 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Creation timestamps exist only outside multiprocess mode: without them, a scrape answers the
# same series under gunicorn, the test client and ``flask run``.
disable_created_metrics()

# Never prometheus_client's global registry: in multiprocess mode a scrape reads the workers'
# files, and series registered there would appear a second time, as this process's alone.
SERIES = CollectorRegistry()

REQUESTS = Counter(
    "api_requests",
    "Requests answered, by route template, method and status.",
    ("route", "method", "status"),
    registry=SERIES,
)
DURATION = Histogram(
    "api_request_duration_seconds",
    "Time from the first to the last request hook, by route template and method.",
    ("route", "method"),
    buckets=BUCKETS,
    registry=SERIES,
)
AUTH_FAILURES = Counter(
    "api_auth_failures",
    "Requests whose key was missing or refused, by reason (the request log's auth_failure).",
    ("reason",),
    registry=SERIES,
)
RATE_LIMITED = Counter(
    "api_rate_limited",
    "Requests answered 429, by route template and by what was counted: the key id or the address.",
    ("route", "counted_by"),
    registry=SERIES,
)
WORKERS = Gauge(
    "api_workers",
    "Worker processes serving.",
    multiprocess_mode="livesum",
    registry=SERIES,
)
FALLBACK = Gauge(
    "api_ratelimit_fallback_workers",
    "Workers counting rate limits in their own memory because the configured storage failed.",
    multiprocess_mode="livesum",
    registry=SERIES,
)


@cache
def _series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    # Resolved once per combination (they are few: templates, methods, statuses), not per request.
    return REQUESTS.labels(route, method, str(status)), DURATION.labels(route, method)


class Recorder:
    """What each answer adds to the series, called once per request by the request gate."""

    def __init__(self, database: Pooled) -> None:
        self.database = database
        self.on_fallback = False
        FALLBACK.set(0)
        WORKERS.set(1)

    def record(self, response: Response, duration: float, *, on_fallback: bool) -> None:
        rule = request.url_rule
        method = request.method
        route = UNMATCHED if rule is None else rule.rule
        status = response.status_code
        requests, histogram = _series(route, method if method in METHODS else OTHER_METHOD, status)
        requests.inc()
        histogram.observe(duration)
        reason = failure()
        if reason is not None:
            AUTH_FAILURES.labels(reason).inc()
        if status == 429:
            RATE_LIMITED.labels(route, "address" if caller() is None else "key").inc()
        elif status == 503:  # only a store answers 503: its database is out
            database_unavailable()
        usage = self.database.pool_usage()
        if usage is not None:
            database_pool(*usage)
        if on_fallback != self.on_fallback:
            # Flask-Limiter switched to (or back from) its in-memory fallback while it handled
            # this request.
            self.on_fallback = on_fallback
            FALLBACK.set(int(on_fallback))


@dataclass(frozen=True)
class Exposition:
    """The text a scrape answers: every worker's files, or this process's series."""

    directory: Path | None

    def text(self) -> bytes:
        if self.directory is None:
            return generate_latest(SERIES)
        return off_the_loop(summed, self.directory)


def summed(directory: Path) -> bytes:
    """Every worker's series, the dead's included, summed: what the files hold between two folds."""
    # A registry per scrape, as prometheus_client documents for multiprocess mode.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    with reading(directory):
        return generate_latest(registry)


def off_the_loop(task: Callable[[Path], T], directory: Path) -> T:
    """``task(directory)`` in a thread of gevent's pool under gunicorn's gevent worker, which
    patches ``threading`` before it loads the app; elsewhere in the calling thread."""
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return task(directory)
    import gevent

    returned: list[T] = []

    def caught() -> Exception | None:
        # An exception raised in a pool thread is printed by gevent's hub, outside the masked
        # logs: hand it over instead, and raise it in the request, whose handler answers 500.
        try:
            returned.append(task(directory))
        except Exception as error:  # noqa: BLE001 - raised again below, in the caller
            return error
        return None

    error = gevent.get_hub().threadpool.apply(caught)
    if error is not None:
        raise error
    return returned[0]


blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
@requires(SCOPE)
@limit(SCRAPE_LIMIT)
@answers(200, description="Prometheus text exposition, summed over every worker.")
def scrape() -> Response:
    """Prometheus series, summed over every worker."""
    exposition: Exposition = current_app.extensions["metrics"]
    return Response(exposition.text(), content_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Flask, directory: Path | None, database: Pooled) -> Recorder:
    """What ``GET /metrics`` reads, and the recorder that counts and times every request (the
    request gate calls it). ``directory`` is the multiprocess directory (serving.py), if any."""
    app.extensions["metrics"] = Exposition(directory)
    return Recorder(database)


@cache
def _database() -> tuple[Gauge, Counter]:
    # Made on a store's first report, so that a store without a pool (SQLite) shows none.
    pool = Gauge(
        "api_database_pool",
        "Connections of the database pools in use and idle, and requests waiting for one.",
        ("state",),
        multiprocess_mode="livesum",
        registry=SERIES,
    )
    unavailable = Counter(
        "api_database_unavailable",
        "Requests answered 503 because the database did not answer in time.",
        registry=SERIES,
    )
    return pool, unavailable


def database_pool(in_use: int, idle: int, waiting: int) -> None:
    """For a store with a connection pool: its state now (after each checkout and return)."""
    pool = _database()[0]
    pool.labels("in_use").set(in_use)
    pool.labels("idle").set(idle)
    pool.labels("waiting").set(waiting)


def database_unavailable() -> None:
    """For a store whose database did not answer: one more request answered 503."""
    _database()[1].inc()


# Revocations (keywatch.py). Keys refused as revoked are api_auth_failures{reason="revoked"}.
KEYS_REVOKED = Gauge(
    "api_keys_revoked",
    "Configured key ids that are revoked, as the workers last read the database (keys revoke, or a holder).",
    multiprocess_mode="livemax",
    registry=SERIES,
)
REVOCATIONS_READ = Gauge(
    "api_revocations_read_timestamp_seconds",
    "When the worker that read them longest ago last read the revocations (0 before its first read).",
    multiprocess_mode="livemin",
    registry=SERIES,
)
HOLDER_REVOCATIONS = Counter(
    "api_key_revocations_by_holders",
    "Configured keys revoked by their holders (POST /v1/keys/revoke), as recorded by the workers.",
    registry=SERIES,
)


def revocations_read(revoked: int, at: float) -> None:
    """A worker read the revocations at ``at`` (a Unix time): ``revoked`` configured ids among them."""
    KEYS_REVOKED.set(revoked)
    REVOCATIONS_READ.set(at)


def revoked_by_holder() -> None:
    """A holder's report revoked a configured key (recorded by this worker)."""
    HOLDER_REVOCATIONS.inc()


# --- Connections: reported by the gunicorn worker (worker.py), not by the request hooks --------

CONNECTIONS_OPEN = Gauge(
    "api_connections_open",
    "Client connections open, summed over the live workers (each holds at most worker_connections).",
    multiprocess_mode="livesum",
    registry=SERIES,
)
CONNECTIONS_REFUSED = Counter(
    "api_connections_refused",
    "Connections closed at once because their client address (or proxy) held its cap.",
    registry=SERIES,
)


def connections_open(count: int) -> None:
    """For the worker: the connections it holds now."""
    CONNECTIONS_OPEN.set(count)


def connection_refused() -> None:
    """For the worker: one more connection closed at once by a per-address cap."""
    CONNECTIONS_REFUSED.inc()


# --- Log lines dropped ------------------------------------------------------------------------
# The log writer (logwriter.py, standard library only) counts the lines it drops when the log
# reader does not keep up; this series reports them, summed over the workers like the rest.
LOG_LINES_DROPPED = Counter(
    "api_log_lines_dropped",
    "Log lines dropped because the log reader did not keep up (the writer's queue was full).",
    registry=SERIES,
)
report_dropped_lines(LOG_LINES_DROPPED.inc)
