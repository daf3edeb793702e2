"""What the log masking filter costs per record, next to what a whole request costs, and what
text crafted against its patterns costs next to plain text of the same length.

    python bench/bench_log_filter.py [--project BAKED_PROJECT]

Prints CPU microseconds per record (best of several runs) for the records a bake really
writes: its request line (taken from a real request through the bake's app) for a path the
filter has not seen and for one it has, the same with a key in its path, a record with a
traceback, and gunicorn's access line with its dict of atoms.
Then the cost of one authenticated request through the whole application in-process (Flask's
test client), for scale.
Then, for each crafted input (the 4 KB path "/%3F" + "key" * 1328 measured against a bake, an
8 KB header name gunicorn quotes, and shapes aimed at each alternative of the pattern), the
median cost of masking it against plain text of the same length, and of the request line that
carries it through the whole filter (which, in a bake that cuts client text, masks 1 KiB of it).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
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
    """The same request line for another path (also in its message, where a bake puts it there)."""
    args = attributes["args"]
    if isinstance(args, tuple) and len(args) == 3:
        args = (args[0], path, args[2])
    return logging.makeLogRecord({**attributes, "args": args, "path": path})


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


def repeat(prefix: str, unit: str, length: int) -> str:
    """``prefix``, then ``unit`` over and over, ``length`` characters in all."""
    return prefix + (unit * (length // len(unit) + 1))[: length - len(prefix)]


def crafted_inputs(prefix: str) -> dict[str, str]:
    """Text that almost matches one alternative of the masking pattern over and over."""
    return {
        '"/%3F" + "key" * 1328, as the request line has it': "/?" + "key" * 1328,
        "the same, raw, as gunicorn's debug line has it": "GET /%3F" + "key" * 1328,
        "invalid 8 KB header name, gunicorn's error line": repeat(
            "Invalid request from ip=127.0.0.2: Invalid HTTP header name: '?", "key", 8192
        ),
        "parameter names of key words, no '='": repeat("/x;", "apikey", 4000),
        "parameters without a value": repeat("/x", "&token", 4000),
        "almost-keys: prefix, 11 encoded characters": repeat("/", f"{prefix}_" + "%41" * 11 + "!", 4000),
        "a run of the key alphabet": repeat("/", "aB3", 4000),
        "almost key pieces (11 characters)": repeat("/", "Ab1Cd2Ef3Gh-", 4000),
        "a base64 run": repeat("X-Upstream-Auth: ", "QUJD", 4000),
        "credential header names": repeat("", "Authorization ", 4000),
    }


def plain_like(text: str) -> str:
    return repeat("GET /", "v1/items/blue-widget-0042/", len(text))


def median_microseconds(mask: Callable[[str], str], text: str, samples: int = 15) -> float:
    """The median over samples of the CPU time of this thread per call; each sample repeats the
    call until it lasts 2 ms."""
    times = []
    for _ in range(samples):
        calls = 1
        while (elapsed := timeit.timeit(lambda: mask(text), number=calls, timer=time.thread_time)) < 0.002:
            calls *= 2
        times.append(elapsed / calls)
    return statistics.median(times) * 1e6


def crafted_costs(masker: Any, line: dict[str, Any]) -> None:
    print(f"\n{'crafted input (median of 15)':<52} {'us':>9} {'plain':>9} {'ratio':>6}")
    for name, text in crafted_inputs(masker.encoded_prefix.decode()[:-1]).items():
        masker.clean.clear()
        crafted = median_microseconds(masker.mask, text)
        plain = median_microseconds(masker.mask, plain_like(text))
        print(f"{name:<52} {crafted:9.0f} {plain:9.0f} {crafted / plain:6.2f}")
    path = "/?" + "key" * 1328
    record_cost = median_microseconds(lambda _: masker.filter(new_path(line, path)), path)
    print(f"{'request line carrying it, whole filter':<52} {record_cost:9.0f}")


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
        crafted_costs(masker, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
