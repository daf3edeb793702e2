"""What the log masking filter costs per record, next to what a whole request costs.

    python bench/bench_log_filter.py [--project BAKED_PROJECT]

Prints CPU microseconds per record (best of several runs) for the records a bake really
writes: its request line (taken from a real request through the bake's app) for a path the
filter has not seen and for one it has, the same with a key in its path, a record with a
traceback, and gunicorn's access line with its dict of atoms.
Then the cost of one authenticated request through the whole application in-process (Flask's
test client), for scale.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import baked  # the bench directory is not a package: run as a script, it is on sys.path

NUMBER = 5_000
REPEAT = 5
NO_LIMIT = "1000000000 per hour"


class Keep(logging.Handler):
    """Keeps the attributes of each record it sees, before any masking filter rewrites them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(dict(vars(record)))


def service(project: Path, entry: str, database: Path) -> Any:
    """The bake's app, with limits high enough that the benchmark never meets them."""
    env = {"APP_ENV": "test", "API_KEYS": entry, "ITEMS_DB": str(database), "RATELIMIT_DEFAULT": NO_LIMIT}
    return baked.module(project, "app").create_app(baked.module(project, "settings").settings_from(env))


def request_record(app: Any, logger: logging.Logger, secret: str, path: str) -> dict[str, Any]:
    """The attributes of the request line the app writes (to ``logger``) for ``GET path``."""
    keep = Keep()
    logger.addHandler(keep)
    logger.propagate = False  # kept here, unmasked, and not written anywhere
    try:
        app.test_client().get(path, headers={"Authorization": f"Bearer {secret}"})
    finally:
        logger.removeHandler(keep)
        logger.propagate = True
    (record,) = keep.records
    return record


def new_path(attributes: dict[str, Any], path: str) -> logging.LogRecord:
    """The same request line for another path."""
    method, _path, status = attributes["args"]
    return logging.makeLogRecord({**attributes, "args": (method, path, status), "path": path})


def traceback_record() -> logging.LogRecord:
    try:
        raise RuntimeError("database is locked")
    except RuntimeError:
        info = sys.exc_info()
    return logging.LogRecord("app", logging.ERROR, __file__, 1, "Exception on /v1/items [GET]", None, info)


def access_record(secret: str) -> logging.LogRecord:
    atoms = {"h": "127.0.0.1", "m": "GET", "U": "/v1/items", "s": "200", "M": "1", "{x-request-id}o": "abc"}
    atoms["{authorization}i"] = f"Bearer {secret}"
    return logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(m)s %(U)s" %(s)s', (atoms,), None
    )


def filtering(masker: logging.Filter, make: Callable[[], logging.LogRecord]) -> Callable[[], None]:
    records = [make() for _ in range(NUMBER)]  # a fresh record each time: the filter rewrites it
    iterator = iter(records)

    def run() -> None:
        masker.filter(next(iterator))

    return run


def best_microseconds(name: str, build: Callable[[], Callable[[], None]]) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        best = min(best, timeit.timeit(build(), timer=time.process_time, number=NUMBER) / NUMBER * 1e6)
    print(f"{name:<44} {best:8.2f} us")
    return best


def whole_request(app: Any, logger: logging.Logger, secret: str) -> float:
    logger.disabled = True  # the request alone, no log output
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {secret}"}
        name = "one GET /v1/whoami (test client, no log)"
        return best_microseconds(name, lambda: lambda: client.get("/v1/whoami", headers=headers))
    finally:
        logger.disabled = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    baked.add_project_option(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        project = baked.project_or_bake(args.project, Path(work))
        keys, logs = baked.module(project, "keys"), baked.module(project, "logging")
        minted = keys.mint(keys.KEY_PREFIX, key_id="ci-deploy", scopes=["items:read"])
        app = service(project, minted.entry, Path(work) / "items.sqlite3")
        logger = logging.getLogger(baked.module(project, "requestlog").__name__)
        line = request_record(app, logger, minted.secret, "/v1/whoami")
        leaky = request_record(app, logger, minted.secret, f"/v1/items/{minted.secret}")
        masker = logs.MaskSecrets(keys.KEY_PREFIX)
        # The filter adds the request's id to every record, and masks it like the rest.
        logs.request_id.set(uuid.uuid4().hex)
        paths = (f"/v1/items/{number:08d}-item" for number in itertools.count())
        cases = {
            # The filter remembers text it found clean: a path it has not seen is the worst case.
            "request line, a path never seen before": lambda: new_path(line, next(paths)),
            "request line, a path seen before": lambda: logging.makeLogRecord(line),
            "request line, a key in the path": lambda: logging.makeLogRecord(leaky),
            "exception with traceback": traceback_record,
            "gunicorn access line (dict args, a key)": lambda: access_record(minted.secret),
        }
        costs = [
            best_microseconds(name, lambda make=make: filtering(masker, make)) for name, make in cases.items()
        ]
        logs.request_id.set(None)
        request = whole_request(app, logger, minted.secret)
    print(f"\nrequest line masking / request: {costs[0] / request:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
