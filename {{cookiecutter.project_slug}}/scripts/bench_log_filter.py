"""What the log masking filter costs per record, next to what a whole request costs.

Prints microseconds per record (best of several interleaved runs) for the records the service
really writes: the request line, the same with a key in its path, a record with a traceback,
and gunicorn's access line with its dict of atoms. Then the cost of one authenticated request
through the whole application in-process, for scale.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from local_database import LocalDatabase

from {{ cookiecutter.package_name }} import create_app, requestlog
from {{ cookiecutter.package_name }}.keys import KEY_PREFIX, MintedKey, mint
from {{ cookiecutter.package_name }}.logging import MaskSecrets
from {{ cookiecutter.package_name }}.settings import settings_from

NUMBER = 5_000
REPEAT = 5


def request_record(path: str) -> logging.LogRecord:
    extra = {"method": "GET", "path": path, "status": 200, "duration_ms": 0.42, "key_id": "ci-deploy"}
    record = logging.LogRecord(
        requestlog.__name__, logging.INFO, __file__, 1, "%s %s %s", ("GET", path, 200), None
    )
    record.__dict__.update(extra)
    return record


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


def filtering(masker: MaskSecrets, make: Callable[[], logging.LogRecord]) -> Callable[[], None]:
    records = [make() for _ in range(NUMBER)]  # a fresh record each time: the filter rewrites it
    iterator = iter(records)

    def run() -> None:
        masker.filter(next(iterator))

    return run


def best_microseconds(name: str, build: Callable[[], Callable[[], None]]) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        best = min(best, timeit.timeit(build(), number=NUMBER) / NUMBER * 1e6)
    print(f"{name:<44} {best:8.2f} us")
    return best


def request_microseconds(minted: MintedKey, database: LocalDatabase) -> float:
    database.start()
    try:
        environ = {"APP_ENV": "test", "API_KEYS": minted.entry, **database.env}
        app = create_app(settings_from({**environ, "RATELIMIT_DEFAULT": "1000000 per minute"}))
        logging.getLogger(requestlog.__name__).disabled = True  # the request alone, no log output
        client = app.test_client()
        headers = {"Authorization": f"Bearer {minted.secret}"}
        return best_microseconds(
            "one GET /v1/whoami (test client, no log)",
            lambda: lambda: client.get("/v1/whoami", headers=headers),
        )
    finally:
        database.close()


def main() -> None:
    minted = mint(KEY_PREFIX, key_id="ci-deploy", scopes=["items:read"])
    masker = MaskSecrets(KEY_PREFIX)
    cases = {
        "request line": lambda: request_record("/v1/items"),
        "request line, a key in the path": lambda: request_record(f"/v1/items/{minted.secret}"),
        "exception with traceback": traceback_record,
        "gunicorn access line (dict args, a key)": lambda: access_record(minted.secret),
    }
    costs = [
        best_microseconds(name, lambda make=make: filtering(masker, make)) for name, make in cases.items()
    ]

    with tempfile.TemporaryDirectory() as directory:
        request = request_microseconds(minted, LocalDatabase(Path(directory)))
    print(f"\nrequest line masking / request: {costs[0] / request:.1%}")


if __name__ == "__main__":
    main()
